"""Nearest neighbours in feature space: exact cosine search in chunks, and the picture of what an encoder finds similar.

The search keeps a running top-k while it walks the collection chunk by chunk on the device, so memory is
``O(Q x chunk)`` however large the collection: :func:`search` takes features already computed, :func:`search_images`
computes them a chunk at a time and never holds all of them.

``evaluate_encoder`` writes ``RUN/eval/neighbors/`` for every encoder it evaluates (``neighbors.png``,
``neighbors.json``): ten test queries, one per class where labels exist, with their eight nearest labeled training
images, framed green when the neighbour's class matches the query's and red when it does not. The queries depend
on the test set alone, so the SimCLR encoder and its baselines show the same ten images (the report puts their
pictures side by side).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import decode_files, load_split
from ..errors import ConfigError, DataError
from ..rundir import atomic_write_bytes
from .encoder import encoder_for_data
from .features import extract_features

N_QUERIES = 10
K = 8
CHUNK = 8192  # collection rows per similarity block: a [Q, CHUNK] float32 block on the device


@torch.no_grad()
def search(queries: Tensor, chunks: Iterable[Tensor], k: int = K, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Exact top-``k`` cosine neighbours of each query among the rows of ``chunks`` (in order, one collection).

    Args:
        queries: ``[Q, D]`` features.
        chunks: ``[n_i, D]`` feature blocks of the collection, concatenated in the order given; a single tensor
            is one block.
        k: neighbours per query (fewer when the collection is smaller).
        device: where the similarities are computed.

    Returns:
        ``(similarity [Q, k] float32, index [Q, k] int64)`` on the CPU, most similar first; indices count rows
        across all chunks. Ties keep the lower index first.
    """
    if isinstance(chunks, Tensor):
        chunks = [chunks]
    q = F.normalize(queries.to(device, torch.float32), dim=1)
    best_s = torch.empty(q.shape[0], 0, device=device)
    best_i = torch.empty(q.shape[0], 0, dtype=torch.long, device=device)
    offset = 0
    for c in chunks:
        if len(c) == 0:
            continue
        if c.shape[1] != q.shape[1]:
            raise ValueError(f"queries have {q.shape[1]} dimensions but the collection {c.shape[1]}")
        s = q @ F.normalize(c.to(device, torch.float32), dim=1).T  # [Q, n]
        kk = min(k, s.shape[1])
        top_s, top_i = s.topk(kk, dim=1)
        # merge with the running best; a stable sort on (-similarity) keeps the earlier (lower) index on ties
        cat_s, cat_i = torch.cat([best_s, top_s], 1), torch.cat([best_i, top_i + offset], 1)
        order = torch.sort(cat_i, dim=1, stable=True).indices
        cat_s, cat_i = cat_s.gather(1, order), cat_i.gather(1, order)
        order = torch.sort(-cat_s, dim=1, stable=True).indices[:, :k]
        best_s, best_i = cat_s.gather(1, order), cat_i.gather(1, order)
        offset += len(c)
    return best_s.cpu(), best_i.cpu()


def feature_chunks(featurize: Callable[[Tensor], Tensor], images: Tensor, chunk: int = CHUNK) -> Iterable[Tensor]:
    """Features of ``images`` ``[N, 3, S, S]`` uint8, ``chunk`` images at a time (a generator: memory bounded)."""
    for i in range(0, len(images), chunk):
        yield featurize(images[i : i + chunk])


def pick_queries(labels: Tensor, n: int = N_QUERIES) -> list[int]:
    """Indices of ``n`` query images: round-robin over the classes (the first image of each class, then the second,
    ...) where labels exist (>= 0), else the first ``n`` images. Depends on ``labels`` alone."""
    labels = labels.cpu()
    classes = sorted({int(c) for c in labels.tolist() if c >= 0})
    if not classes:
        return list(range(min(n, len(labels))))
    per_class = {c: (labels == c).nonzero().flatten().tolist() for c in classes}
    picked: list[int] = []
    rank = 0
    while len(picked) < n and any(rank < len(v) for v in per_class.values()):
        for c in classes:
            if rank < len(per_class[c]) and len(picked) < n:
                picked.append(per_class[c][rank])
        rank += 1
    return picked


def _names(classes: Sequence[str], labels: Sequence[int]) -> list[str]:
    return [classes[y] if 0 <= y < len(classes) else ("" if y < 0 else str(y)) for y in labels]


def write_eval_neighbors(train_features: Tensor, test_features: Tensor, data, out_dir: str | Path, method: str,
                         device: torch.device | str = "cpu", k: int = K, n: int = N_QUERIES) -> Path | None:
    """``out_dir/neighbors.png`` and ``neighbors.json`` for one encoder (see the module docstring).

    Args:
        train_features: ``[N, D]`` features of ``data.train`` (the labeled pool searched).
        test_features: ``[M, D]`` features of ``data.test`` (the queries come from here).
        data: an :class:`~simclr.evaluate.EvalData`.
        method: the encoder's label (picture title).

    Returns:
        The PNG written, or None when there are no test or training images.
    """
    from .. import plots  # matplotlib: only when there is something to draw

    if len(test_features) == 0 or len(train_features) == 0:
        return None
    queries = pick_queries(data.test.labels, n)
    sims, idx = search(test_features[queries], train_features.split(CHUNK), k, device)
    q_labels = data.test.labels[queries]
    n_labels = data.train.labels[idx]
    labeled = bool((q_labels >= 0).all())
    match = (n_labels == q_labels[:, None]) if labeled else None
    out_dir = Path(out_dir)
    png = plots.plot_neighbors(
        data.test.images[queries], data.train.images[idx.flatten()].view(len(queries), idx.shape[1], *data.train.images.shape[1:]),
        out_dir / "neighbors.png", match=None if match is None else match.numpy(),
        query_names=_names(data.classes, q_labels.tolist()),
        title=f"{method}: {idx.shape[1]} nearest training images (cosine)",
    )
    record = {
        "method": method, "metric": "cosine", "k": int(idx.shape[1]),
        "queries": [int(i) for i in queries],
        "query_labels": q_labels.tolist(),
        "neighbors": idx.tolist(),
        "neighbor_labels": n_labels.tolist(),
        "similarity": [[round(float(v), 6) for v in row] for row in sims],
        "matches": None if match is None else int(match.sum()),
        "classes": list(data.classes),
    }
    atomic_write_bytes((json.dumps(record) + "\n").encode(), out_dir / "neighbors.json")
    return png


def neighbors_for_files(run_dir: str | Path, data: str, queries: Sequence[str], out: str | Path, k: int = K,
                        overrides: dict | None = None, backbone=None, log: Callable[..., None] = print) -> Path:
    """``simclr neighbors``: the ``k`` nearest images of ``data`` (a folder or dataset name) for each query file.

    The collection's features are computed and searched a chunk at a time on the run's device, so only one
    chunk of features is held at once.

    Args:
        run_dir: a finished run directory.
        data: an image folder or a dataset name; its training split is searched.
        queries: image files.
        out: the PNG to write (a ``.json`` with the neighbours' paths or indices and similarities is written
            beside it).
        overrides: dotted-key overrides (device, precision, batch size, limit, ...).
        backbone: your own module, for runs pretrained with one (see :func:`simclr.load_encoder`).

    Returns:
        The PNG written.
    """
    from .. import plots  # matplotlib: only when there is something to draw

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: the picture is a PNG; give a file name ending in .png")
    if k < 1:
        raise ConfigError(f"--k {k}: must be >= 1")
    missing = [q for q in queries if not Path(q).is_file()]
    if missing:
        raise DataError(f"--query: file(s) not found: {', '.join(missing[:5])}")
    cfg, device, precision, encoder = encoder_for_data(run_dir, data, overrides, backbone)
    bank = load_split(cfg.data, "train", cfg.model.image_size, seed=cfg.train.seed, log=log)
    size = bank.images.shape[-1]
    qdata = decode_files(list(queries), [-1] * len(queries), [], size, log=lambda *a, **kw: None, what="queries")
    if qdata.skipped:
        raise DataError(f"--query: cannot read {', '.join(qdata.skipped[:5])} as images")

    def featurize(images: Tensor) -> Tensor:
        return extract_features(encoder, images, encoder.image_size, encoder.mean, encoder.std, device, precision,
                                cfg.eval.batch_size)

    sims, idx = search(featurize(qdata.images), feature_chunks(featurize, bank.images), k, device)
    nb = bank.images[idx.flatten()].view(len(queries), idx.shape[1], *bank.images.shape[1:])
    names = [Path(q).name for q in queries]
    png = plots.plot_neighbors(qdata.images, nb, out, match=None, query_names=names,
                               neighbor_names=[_names(bank.classes, row) for row in bank.labels[idx].tolist()],
                               title=f"{idx.shape[1]} nearest images of {data} (cosine)")
    where = (lambda i: bank.paths[i]) if bank.paths else (lambda i: int(i))
    record = [{"query": q, "neighbors": [{"image": where(i), "label": _names(bank.classes, [int(bank.labels[i])])[0],
                                          "similarity": round(float(s), 6)} for i, s in zip(ids.tolist(), ss.tolist())]}
              for q, ids, ss in zip(queries, idx, sims)]
    atomic_write_bytes((json.dumps(record, indent=1) + "\n").encode(), out.with_suffix(".json"))
    log(f"wrote {png} and {out.with_suffix('.json')} ({len(queries)} queries x {idx.shape[1]} neighbours among "
        f"{len(bank)} images)")
    return png


__all__ = ["feature_chunks", "neighbors_for_files", "pick_queries", "search", "write_eval_neighbors"]

