"""SimCLR view augmentation, batched, with independent random parameters for every sample.

The pipeline of Chen et al. 2020 (appendix A), applied to a whole batch at once on any device:
random resized crop -> horizontal flip -> colour jitter (p) in a random order per sample ->
grayscale (p) -> Gaussian blur (p) -> normalisation. Each colour operation follows the
semantics of ``torchvision.transforms.functional`` on float images in [0, 1].

Random parameters are drawn on a CPU generator seeded from (seed, epoch, step) for the global
batch, so the views depend neither on the device nor on how many processes share the batch.
Drawing (:func:`sample_params`) and applying (:func:`apply_params`) are separate, and applying is
split again into :func:`apply_geometric` (uint8 -> float crops) and :func:`apply_photometric`
(colour, blur, normalisation) so a streaming loader can crop in its workers.

Parameter dictionary (every tensor on the CPU, leading dimension n):
    crop        int64 [n, 4]   (top, left, height, width) of the crop box in source pixels
    flip        bool  [n]      horizontal flip
    jitter      bool  [n]      colour jitter applied
    brightness  float32 [n]    factor in [max(0, 1 - 0.8 s), 1 + 0.8 s]
    contrast    float32 [n]    factor in [max(0, 1 - 0.8 s), 1 + 0.8 s]
    saturation  float32 [n]    factor in [max(0, 1 - 0.8 s), 1 + 0.8 s]
    hue         float32 [n]    shift in [-0.2 s, 0.2 s] (turns of the colour wheel)
    order       int64 [n, 4]   permutation of the jitter ops (0 brightness, 1 contrast,
                               2 saturation, 3 hue: torchvision's ColorJitter ids)
    gray        bool  [n]      convert to grayscale (3 equal channels)
    blur        bool  [n]      Gaussian blur
    sigma       float32 [n]    blur sigma in pixels of the output image
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import AugmentConfig

__all__ = [
    "apply_geometric",
    "apply_params",
    "apply_photometric",
    "batch_generator",
    "blur_kernel_size",
    "eval_transform",
    "sample_params",
    "save_preview",
    "simclr_views",
    "view_params",
]

# ITU-R 601 luma weights, as in torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = 0, 1, 2, 3
_CROP_TRIES = 10  # torchvision's RandomResizedCrop tries 10 boxes before falling back to a centre crop


def batch_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """CPU generator for the augmentation parameters of one global batch.

    Args:
        seed: run seed.
        epoch: epoch index.
        step: step index within the epoch (or global step; any int, as long as it is used consistently).

    Returns:
        A ``torch.Generator`` on the CPU, seeded with a 63-bit hash of (seed, epoch, step) that is the
        same in every process and Python session.
    """
    digest = hashlib.blake2b(f"simclr-augment:{seed}:{epoch}:{step}".encode(), digest_size=8).digest()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return g


def _sample_crops(u_scale: Tensor, u_ratio: Tensor, u_pos: Tensor, size: int, cfg: AugmentConfig) -> Tensor:
    """RandomResizedCrop boxes from uniforms (float64): [n, 10], [n, 10], [n, 2] -> int64 [n, 4]."""
    area = float(size * size)
    lo, hi = cfg.scale
    log_r0, log_r1 = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    target_area = area * (lo + (hi - lo) * u_scale)
    aspect = torch.exp(log_r0 + (log_r1 - log_r0) * u_ratio)
    # torch.round rounds half to even, like Python's round() in torchvision.
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    ok = (w > 0) & (w <= size) & (h > 0) & (h <= size)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # first successful try (argmax is first max)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    found = ok.any(dim=1)

    # Fallback for a square source: centre crop at the nearest allowed aspect ratio.
    if 1.0 < min(cfg.ratio):
        fw, fh = size, int(round(size / min(cfg.ratio)))
    elif 1.0 > max(cfg.ratio):
        fw, fh = int(round(size * max(cfg.ratio))), size
    else:
        fw, fh = size, size
    w = torch.where(found, w, float(fw))
    h = torch.where(found, h, float(fh))
    top = torch.floor(u_pos[:, 0] * (size - h + 1)).clamp(max=size - h)
    left = torch.floor(u_pos[:, 1] * (size - w + 1)).clamp(max=size - w)
    top = torch.where(found, top, torch.div(size - h, 2, rounding_mode="floor"))
    left = torch.where(found, left, torch.div(size - w, 2, rounding_mode="floor"))
    return torch.stack([top, left, h, w], dim=1).to(torch.int64)


def sample_params(
    n: int, src_size: int, out_size: int, cfg: AugmentConfig, generator: torch.Generator
) -> dict[str, Tensor]:
    """Draw independent augmentation parameters for ``n`` samples.

    All randomness comes from one draw of ``generator`` (a CPU generator), so the result depends only
    on its state, never on the device the views are computed on.

    Args:
        n: number of samples.
        src_size: side (px) of the square source images.
        out_size: side (px) of the views; the parameters do not depend on it (blur sigma is already in
            output pixels) but it is part of the interface so callers state what they will apply.
        cfg: augmentation settings.
        generator: CPU generator, e.g. from :func:`batch_generator`.

    Returns:
        The parameter dictionary described in the module docstring; every tensor has leading dim ``n``.
    """
    if src_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got src_size={src_size}, out_size={out_size}")
    t = _CROP_TRIES
    u = torch.rand(n, 2 * t + 15, generator=generator, dtype=torch.float64)
    crop = _sample_crops(u[:, :t], u[:, t : 2 * t], u[:, 2 * t : 2 * t + 2], src_size, cfg)
    c = 2 * t + 2
    s = cfg.jitter_strength
    f_lo, f_hi = max(0.0, 1.0 - 0.8 * s), 1.0 + 0.8 * s
    h_max = min(0.2 * s, 0.5)  # torchvision's adjust_hue accepts shifts in [-0.5, 0.5]
    factors = (f_lo + (f_hi - f_lo) * u[:, c + 2 : c + 5]).float()
    s_lo, s_hi = cfg.blur_sigma
    return {
        "crop": crop,
        "flip": u[:, c] < cfg.hflip,
        "jitter": u[:, c + 1] < cfg.jitter_p,
        "brightness": factors[:, 0].contiguous(),
        "contrast": factors[:, 1].contiguous(),
        "saturation": factors[:, 2].contiguous(),
        "hue": ((2.0 * u[:, c + 5] - 1.0) * h_max).float(),
        "order": u[:, c + 6 : c + 10].argsort(dim=1),  # a uniformly random permutation per row
        "gray": u[:, c + 10] < cfg.gray_p,
        "blur": u[:, c + 11] < cfg.blur_p,
        "sigma": (s_lo + (s_hi - s_lo) * u[:, c + 12]).float(),
    }


def _to_float01(images: Tensor) -> Tensor:
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def _axis_weights(start: Tensor, length: Tensor, src: int, out: int) -> Tensor:
    """RoIAlign (``aligned=True``, adaptive sampling) along one axis, as interpolation matrices.

    Output pixel ``p`` of a box ``[start, start + length)`` averages ``g = ceil(length / out)`` linear
    interpolations at ``start - 0.5 + (p + (k + 0.5) / g) * length / out``, ``k < g``, with RoIAlign's edge
    rules (samples beyond ``[-1, src]`` count as 0, others are clamped into the image). RoIAlign samples on
    a grid, so the 2-d resampling is the product of one such matrix per axis.

    Args:
        start, length: float32 [n] box start and length in source pixels, on the target device.
        src: source length (px); out: output length (px).

    Returns:
        float32 [n, out, src]; row ``p`` holds the weights of output pixel ``p``.
    """
    n = start.shape[0]
    grid = torch.ceil(length / out).clamp_(min=1.0)  # samples per output pixel
    g_max = max(1, math.ceil(max(src, 1) / out) + 1)  # no box is longer than the source (plus rounding)
    step = (length / out).view(n, 1, 1)
    p = torch.arange(out, device=start.device, dtype=start.dtype).view(1, out, 1)
    k = torch.arange(g_max, device=start.device, dtype=start.dtype).view(1, 1, g_max)
    pos = (start - 0.5).view(n, 1, 1) + p * step + (k + 0.5) * step / grid.view(n, 1, 1)
    weight = ((k < grid.view(n, 1, 1)) & (pos >= -1.0) & (pos <= src)).to(start.dtype) / grid.view(n, 1, 1)
    pos = pos.clamp_(min=0.0)
    low = pos.floor().clamp_(max=src - 1)
    frac = (pos - low).masked_fill_(low >= src - 1, 0.0)
    high = (low + 1).clamp_(max=src - 1)
    mat = torch.zeros(n, out, src, device=start.device, dtype=start.dtype)
    mat.scatter_add_(2, low.long().view(n, out, g_max), weight * (1.0 - frac))
    mat.scatter_add_(2, high.long().view(n, out, g_max), weight * frac)
    return mat


def apply_geometric(images: Tensor, params: dict[str, Tensor], out_size: int) -> Tensor:
    """Crop, resize and flip every image with its own box.

    The crop is resampled bilinearly as RoIAlign does it (pixel-centre aligned), one sample per output
    pixel when enlarging, which is torchvision's bilinear ``resized_crop``; when shrinking, ``ceil(box /
    out)`` samples are averaged per pixel, which stands in for torchvision's antialiasing. Samples near the
    crop border may read the neighbouring source pixels instead of repeating the edge pixel. RoIAlign's
    sampling is separable, so it runs as two batched matrix products (rows, then columns) with per-image
    interpolation matrices: the same numbers as ``torchvision.ops.roi_align``, several times faster on CPUs.

    Args:
        images: uint8 [n, 3, H, W] (or float in [0, 1]), any device.
        params: from :func:`sample_params` (rows matching ``images``).
        out_size: side (px) of the output.

    Returns:
        float32 [n, 3, out_size, out_size] in [0, 1], on the device of ``images``.
    """
    crop, flip = _send_all([params["crop"], params["flip"]], images.device)
    return _geometric(images, crop, flip, out_size)


def _geometric(images: Tensor, crop: Tensor, flip: Tensor, out_size: int) -> Tensor:
    """:func:`apply_geometric` with its parameters already on the device of ``images``."""
    n, c, src_h, src_w = images.shape
    top, left, h, w = crop.float().unbind(dim=1)
    rows = _axis_weights(top, h, src_h, out_size)  # [n, out, H]
    cols = _axis_weights(left, w, src_w, out_size)  # [n, out, W]
    # A flip reverses the output columns (bilinear sampling is symmetric about the box centre).
    cols = torch.where(flip.view(n, 1, 1), cols.flip(1), cols)
    x = images.float() if images.dtype != torch.float32 else images
    y = torch.matmul(rows.unsqueeze(1), x)  # [n, c, out, W]
    y = torch.bmm(y.view(n, c * out_size, src_w), cols.transpose(1, 2))  # [n, c * out, out]
    y = y.view(n, c, out_size, out_size)
    return y.div_(255.0) if images.dtype == torch.uint8 else y


def _gray(x: Tensor) -> Tensor:
    """[n, 3, H, W] -> [n, 1, H, W] luma, as torchvision's rgb_to_grayscale on floats."""
    r, g, b = x.unbind(dim=1)
    return torch.add(_LUMA[0] * r, g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(1)


def _adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue of each image by its own shift; x [m, 3, H, W] in [0, 1], shift [m] in turns.

    Same result as torchvision's adjust_hue (RGB -> HSV, h = (h + shift) mod 1, HSV -> RGB) with fewer
    passes: S and V do not change, so only the hue angle is computed and the RGB values are rebuilt from
    max, chroma and the angle.
    """
    r, g, b = x.unbind(dim=1)
    maxc = x.amax(dim=1)
    chroma = maxc - x.amin(dim=1)
    # Hue in sixths of a turn, in [-1, 5); grey pixels (chroma 0) give 0 and come back unchanged.
    num = torch.where(
        maxc == r, g - b, torch.where(maxc == g, (b - r) + 2.0 * chroma, (r - g) + 4.0 * chroma)
    )
    h6 = num / chroma.masked_fill(chroma == 0, 1.0)
    # channel = V - chroma * clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, n = 5, 3, 1 for R, G, B.
    # arange, not torch.tensor([5., 3., 1.]): a tensor from Python data is a blocking host-to-device copy.
    offsets = torch.arange(5.0, 0.0, -2.0, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(h6.unsqueeze(1) + (offsets + 6.0 * shift.view(-1, 1, 1, 1)), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return ramp.mul_(chroma.unsqueeze(1)).neg_().add_(maxc.unsqueeze(1))  # V - chroma * ramp


def blur_kernel_size(out_size: int) -> int:
    """Gaussian blur kernel side: about 10% of the image side, odd, at least 3 (23 for 224 px)."""
    k = int(0.1 * out_size)
    if k % 2 == 0:
        k += 1
    return max(3, k)


def _gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with a per-image sigma; x [m, 3, H, W], sigma [m]; reflect padding."""
    m, c, hgt, wid = x.shape
    k = blur_kernel_size(min(hgt, wid))
    half = (k - 1) * 0.5
    pos = torch.linspace(-half, half, k, device=x.device, dtype=x.dtype)
    pdf = torch.exp(-0.5 * (pos.view(1, k) / sigma.view(m, 1)) ** 2)
    kern = (pdf / pdf.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [m * c, k]
    y = F.pad(x.reshape(1, m * c, hgt, wid), (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    y = F.conv2d(y, kern.view(m * c, 1, k, 1), groups=m * c)
    y = F.conv2d(y, kern.view(m * c, 1, 1, k), groups=m * c)
    return y.view(m, c, hgt, wid)


_ALIGN = 16  # bytes; every packed tensor starts at a multiple, so that its bytes can be viewed as its dtype


def _send_all(tensors: Sequence[Tensor], dev: torch.device) -> list[Tensor]:
    """Small CPU tensors on ``dev`` with ONE host-to-device copy, without waiting for the device.

    The parameters of one view are some 30 small tensors; one copy each from pageable memory would be 30 driver
    calls, each staged through a bounce buffer. Here their bytes are packed into one buffer (pinned on CUDA, so the
    copy is truly asynchronous; the caching host allocator keeps it alive until the copy is done) and the device
    tensors are views of the one copy. On the CPU the tensors are returned as they are.
    """
    if dev.type == "cpu":
        return list(tensors)
    flat = [t.detach().contiguous().reshape(-1) for t in tensors]
    sizes = [t.numel() * t.element_size() for t in flat]
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += -(-size // _ALIGN) * _ALIGN
    buf = torch.empty(max(total, _ALIGN), dtype=torch.uint8, pin_memory=dev.type == "cuda")
    for t, off, size in zip(flat, offsets, sizes):
        if size:
            buf[off : off + size].copy_(t.view(torch.uint8))
    on_dev = buf.to(dev, non_blocking=True)
    return [on_dev[off : off + size].view(t.dtype).view(src.shape)
            for t, src, off, size in zip(flat, tensors, offsets, sizes)]


def _rows(mask: Tensor) -> Tensor:
    # The parameters live on the CPU, so finding the selected rows costs no device synchronisation.
    return mask.cpu().nonzero().flatten()


@functools.lru_cache(maxsize=8)
def _mean_std(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """mean and std as float32 [1, C, 1, 1] CPU tensors, made once per setting."""
    return (torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
            torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))


@functools.lru_cache(maxsize=8)
def _normalisation(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """(1 / std, -mean / std) as float32 [1, 3, 1, 1] CPU tensors, made once per setting (not per step)."""
    m, s = _mean_std(mean, std)
    return 1.0 / s, -m / s


def _plan_photometric(params: dict[str, Tensor], cfg: AugmentConfig) -> tuple[list[tuple], list[Tensor]]:
    """The CPU half of :func:`apply_photometric`: the operations to run, in order, and the small tensors they read.

    Each operation is ``(kind, i, ...)`` with indices into the tensor list, which :func:`_send_all` moves to the
    device in one copy. Nothing here touches the images, so no device work waits for it.
    """
    tensors: list[Tensor] = []

    def put(t: Tensor) -> int:
        tensors.append(t)
        return len(tensors) - 1

    steps: list[tuple] = []
    jitter = params["jitter"].cpu()
    order = params["order"].cpu()
    n = jitter.shape[0]
    ones = torch.ones(n)
    # Factor per op id; the hue slot is 1 so that the blend below is the identity for hue rows.
    factors = torch.stack(
        [params[k].cpu().float() for k in ("brightness", "contrast", "saturation")] + [ones], 1
    )
    hue = params["hue"].cpu().float()
    for pos in range(4):  # loop over the 4 positions of the per-sample op order, not over images
        op = order[:, pos]
        blend = jitter & (op != _HUE)
        if bool(blend.any()):
            a = torch.where(blend, factors.gather(1, op.view(-1, 1)).squeeze(1), ones)
            w_sat = torch.where(op == _SATURATION, 1.0 - a, 0.0)
            w_con = torch.where(op == _CONTRAST, 1.0 - a, 0.0)
            steps.append(("blend", put(a.view(-1, 1, 1, 1)), put(w_sat.view(-1, 1, 1, 1)), put(w_con.view(-1, 1, 1, 1))))
        idx = _rows(jitter & (op == _HUE) & (hue != 0))
        if idx.numel():
            steps.append(("hue", put(idx), put(hue[idx])))
    idx = _rows(params["gray"])
    if idx.numel():
        steps.append(("gray", put(idx)))
    idx = _rows(params["blur"])
    if idx.numel():
        steps.append(("blur", put(idx), put(params["sigma"].cpu()[idx])))
    scale, shift = _normalisation(tuple(cfg.mean), tuple(cfg.std))
    steps.append(("normalise", put(scale), put(shift)))
    return steps, tensors


def _photometric(x01: Tensor, steps: list[tuple], t: list[Tensor]) -> Tensor:
    """Run the operations of :func:`_plan_photometric` with its tensors ``t`` already on the device of ``x01``."""
    x = x01.float()
    owned = x is not x01  # copy before the first in-place update so the input stays untouched
    for kind, *i in steps:
        if kind == "blend":
            # brightness, contrast and saturation are all torchvision's blend: clamp(a x + (1 - a) ref)
            # with ref = 0, the mean luma of the image, or the per-pixel luma; rows with a = 1 are unchanged.
            a, w_sat, w_con = t[i[0]], t[i[1]], t[i[2]]
            luma = _gray(x)
            # mul + add instead of addcmul: a broadcasting addcmul is several times slower on CPUs
            ref = luma.mul(w_sat).add_(luma.mean(dim=(2, 3), keepdim=True) * w_con)
            x = x.mul(a).add_(ref).clamp_(0.0, 1.0)
            owned = True
        elif kind == "normalise":  # (x - mean) / std as one pass: x * (1 / std) - mean / std
            return x.mul(t[i[0]]).add_(t[i[1]])
        else:
            if not owned:
                x, owned = x.clone(), True
            idx = t[i[0]]
            rows = x.index_select(0, idx)
            if kind == "hue":
                rows = _adjust_hue(rows, t[i[1]])
            elif kind == "gray":
                rows = _gray(rows).expand(-1, 3, -1, -1)
            else:
                rows = _gaussian_blur(rows, t[i[1]])
            x.index_copy_(0, idx, rows)
    raise AssertionError("the plan ends with the normalisation")


def apply_photometric(x01: Tensor, params: dict[str, Tensor], cfg: AugmentConfig) -> Tensor:
    """Colour jitter (random order per sample), grayscale, Gaussian blur and normalisation.

    Args:
        x01: float [n, 3, H, W] in [0, 1] (e.g. from :func:`apply_geometric`), any device; not modified.
        params: from :func:`sample_params` (rows matching ``x01``).
        cfg: augmentation settings (``mean`` and ``std`` for the normalisation).

    Returns:
        float32 [n, 3, H, W], normalised with ``cfg.mean`` / ``cfg.std``.
    """
    steps, tensors = _plan_photometric(params, cfg)
    return _photometric(x01, steps, _send_all(tensors, x01.device))


def apply_params(images: Tensor, params: dict[str, Tensor], out_size: int, cfg: AugmentConfig) -> Tensor:
    """Apply drawn parameters: ``apply_photometric(apply_geometric(images, params, out_size), params, cfg)``.

    Args:
        images: uint8 [n, 3, H, W], any device.
        params: from :func:`sample_params` (rows matching ``images``).
        out_size: side (px) of the views.
        cfg: augmentation settings.

    Returns:
        float32 [n, 3, out_size, out_size], normalised, on the device of ``images``.
    """
    if images.shape[0] != params["crop"].shape[0]:
        raise ValueError(f"{images.shape[0]} images but parameters for {params['crop'].shape[0]} samples")
    # Every parameter of the view reaches the device in one copy (see _send_all).
    steps, tensors = _plan_photometric(params, cfg)
    crop, flip, *sent = _send_all([params["crop"], params["flip"], *tensors], images.device)
    return _photometric(_geometric(images, crop, flip, out_size), steps, sent)


def simclr_views(
    images: Tensor,
    cfg: AugmentConfig,
    out_size: int,
    seed: int,
    epoch: int,
    step: int,
    global_batch: int | None = None,
    offset: int = 0,
    small_size: int = 0,
) -> tuple[Tensor, ...]:
    """Two augmented views of a batch (SimCLR, Chen et al. 2020), and with ``small_size`` the small crops of
    multi-crop (``cfg.small_crops`` of them, Caron et al. 2020).

    Parameters are drawn for the whole global batch from :func:`batch_generator` (all of view 0, then
    all of view 1, then each small crop) and rows ``[offset, offset + len(images))`` are applied, so a process
    holding a slice of the global batch gets exactly its rows of the single-process views.

    Args:
        images: uint8 [n, 3, S, S], any device.
        cfg: augmentation settings.
        out_size: side (px) of the views.
        seed, epoch, step: identify the global batch.
        global_batch: rows in the global batch (default ``n``).
        offset: index of ``images[0]`` in the global batch.
        small_size: side (px) of the small crops; 0: none (whatever ``cfg.small_crops`` says).

    Returns:
        (view0, view1), each float32 [n, 3, out_size, out_size], normalised; then the small crops, each
        [n, 3, small_size, small_size], when ``small_size`` is set.
    """
    n, _, hgt, wid = images.shape
    if hgt != wid:
        raise ValueError(f"expected square images, got {hgt}x{wid}")
    total = n if global_batch is None else global_batch
    if offset < 0 or offset + n > total:
        raise ValueError(f"rows [{offset}, {offset + n}) do not fit in a global batch of {total}")
    crops = cfg.small_crops if small_size else 0
    params = view_params(total, (offset, offset + n), hgt, out_size, cfg, seed, epoch, step, crops)
    small_cfg = replace(cfg, scale=cfg.small_scale) if crops else cfg
    return tuple(apply_params(images, p, out_size, cfg) for p in params[:2]) + tuple(
        apply_params(images, p, small_size, small_cfg) for p in params[2:])


def view_params(
    global_batch: int, rows: tuple[int, int], src_size: int, out_size: int, cfg: AugmentConfig,
    seed: int, epoch: int, step: int, small_crops: int = 0,
) -> tuple[dict[str, Tensor], ...]:
    """Parameters of both views (and of ``small_crops`` small crops, from ``cfg.small_scale``) for rows
    ``[lo, hi)`` of a global batch.

    Drawn for the WHOLE global batch from :func:`batch_generator` of (seed, epoch, step), all of view 0, then
    all of view 1, then each small crop, and then sliced: a process holding rows ``[lo, hi)`` gets exactly those
    rows of the single-process parameters, whatever the number of processes. The two views do not depend on
    ``small_crops`` (they are drawn first). The in-memory path (:func:`simclr_views`) and the streaming path
    (:class:`simclr.stream.StepDataset`) both draw here.
    """
    lo, hi = rows
    g = batch_generator(seed, epoch, step)
    small_cfg = replace(cfg, scale=cfg.small_scale) if small_crops else cfg
    return tuple({k: v[lo:hi] for k, v in sample_params(global_batch, src_size, out_size, c, g).items()}
                 for c in [cfg, cfg] + [small_cfg] * small_crops)


def eval_transform(images: Tensor, out_size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Deterministic transform for feature extraction: resize (bilinear, antialiased) and normalise.

    Args:
        images: uint8 [n, 3, H, W], any device.
        out_size: side (px) of the output; images already at that size are not resampled.
        mean, std: per-channel normalisation.

    Returns:
        float32 [n, 3, out_size, out_size].
    """
    x = _to_float01(images)
    if x.shape[-2] != out_size or x.shape[-1] != out_size:
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp_(0.0, 1.0)
    m, s = _send_all(_mean_std(tuple(mean), tuple(std)), x.device)  # no blocking copy per batch
    return (x - m) / s


def save_preview(
    images: Tensor, cfg: AugmentConfig, out_size: int, path: str | Path, seed: int = 0, min_cell: int = 96
) -> Path:
    """Write a PNG grid: one row per image with the original (resized), view 1 and view 2.

    Args:
        images: uint8 [k, 3, H, W], any device.
        cfg: augmentation settings.
        out_size: side (px) of the views.
        path: PNG file to write (parent folders are created).
        seed: seed of the views (epoch 0, step 0).
        min_cell: small images are enlarged (nearest neighbour) to at least this many pixels per cell.

    Returns:
        The path written.
    """
    from PIL import Image  # only needed here

    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
    with torch.no_grad():
        v0, v1 = simclr_views(images, cfg, out_size, seed, 0, 0)
        orig = eval_transform(images, out_size, cfg.mean, cfg.std)
    cols = [(t.cpu() * std + mean).clamp(0, 1) for t in (orig, v0, v1)]
    grid = torch.stack(cols, dim=1)  # [k, 3 columns, 3, s, s]
    scale = max(1, math.ceil(min_cell / out_size))
    k, pad, cell = grid.shape[0], 4, out_size * scale
    canvas = torch.ones(3, k * (cell + pad) + pad, 3 * (cell + pad) + pad)
    for row in range(k):
        for col in range(3):
            tile = grid[row, col]
            if scale > 1:
                tile = tile.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
            y, x = pad + row * (cell + pad), pad + col * (cell + pad)
            canvas[:, y : y + cell, x : x + cell] = tile
    arr = (canvas * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")
    return path
