"""``simclr embed``: one feature vector per image of a dataset with a run's frozen encoder, to .npz or .parquet."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..data import ImageData, load_split
from ..errors import ConfigError, DataError
from ..rundir import atomic_write
from ..runtime import Log
from .encoder import encoder_for_data
from .features import extract_features


def embed(run_dir: str | Path, data: str, out: str | Path, split: str = "all", overrides: dict | None = None,
          log: Log = print) -> Path:
    """Write one feature vector per image of ``data`` with the run's frozen encoder.

    Args:
        run_dir: a finished run directory.
        data: an image folder or a dataset name (cifar10, ...); overrides the run's ``data.name``.
        out: ``.npz`` (features [N, D] float32, labels [N], index [N], split [N], paths [N] when known, classes)
            or ``.parquet`` (needs pyarrow; one row per image: index, split, path, label, features).
        split: ``all`` (train and, when there is one, test), ``train`` or ``test``.
        overrides: dotted-key overrides (device, precision, batch size, limit, ...).

    Returns:
        The path written.
    """
    out = Path(out)
    if out.suffix not in (".npz", ".parquet"):
        raise ConfigError(f"--out {out}: the file name must end in .npz (NumPy) or .parquet")
    if split not in ("all", "train", "test"):
        raise ConfigError(f"--split {split!r}: allowed values: all, train, test")
    cfg, device, precision, encoder = encoder_for_data(run_dir, data, overrides)
    parts: list[tuple[str, ImageData]] = []
    for name in (("train", "test") if split == "all" else (split,)):
        try:
            parts.append((name, load_split(cfg.data, name, cfg.model.image_size, seed=cfg.train.seed, log=log)))
        except DataError:
            if split != "all" or name == "train":
                raise
            # a flat folder has no test split: "all" is then the train split alone
    feats, labels, index, row_parts, paths, classes = [], [], [], [], [], []
    for name, d in parts:
        t0 = time.perf_counter()
        feats.append(extract_features(encoder, d.images, encoder.image_size, encoder.mean, encoder.std, device,
                                      precision, cfg.eval.batch_size).numpy())
        log(f"embedded {len(d)} {name} images in {time.perf_counter() - t0:.1f} s")
        labels.append(d.labels.numpy())
        index.append(np.arange(len(d)))
        row_parts += [name] * len(d)
        paths += list(d.paths) if d.paths else [""] * len(d)
        classes = classes or list(d.classes)
    F_ = np.concatenate(feats).astype(np.float32)
    arrays = {"features": F_, "labels": np.concatenate(labels), "index": np.concatenate(index),
              "split": np.asarray(row_parts), "paths": np.asarray(paths), "classes": np.asarray(classes)}
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npz":
        atomic_write(out, lambda f: np.savez(f, **arrays))
    else:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(f"--out {out}: writing Parquet needs pyarrow (pip install pyarrow); or use a .npz "
                              "file name") from None
        table = pa.table({"index": arrays["index"], "split": arrays["split"], "path": arrays["paths"],
                          "label": arrays["labels"], "features": list(F_)})
        atomic_write(out, lambda f: pq.write_table(table, f))
    log(f"wrote {len(F_)} feature vectors of dimension {F_.shape[1]} to {out}")
    return out

