"""Fine-tuning: a copy of the encoder plus a linear layer trained end to end on the labeled images."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import augment
from ..config import Config, OptimConfig
from ..data import ImageData
from ..errors import ConfigError
from ..models import Backbone
from ..optim import Schedule, build_optimizer
from ..runtime import Log, autocast, seed_for
from .features import extract_features
from .heads import HeadResult, fit_keep_best

FINETUNE_WEIGHT_DECAY = 5e-4
FINETUNE_SCALE = (0.35, 1.0)  # random resized crop area for fine-tuning (plus flips; no colour distortion)


class Classifier(nn.Module):
    """Encoder + linear layer: ``[B,3,H,W] -> [B, C]`` logits."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.out_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))


def finetune(
    encoder: Backbone,
    train: ImageData,
    val: ImageData,
    num_classes: int,
    cfg: Config,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    precision: str,
    log: Log | None = None,
    seed: int | None = None,
) -> HeadResult:
    """Fine-tune a copy of ``encoder`` with a new linear layer on labeled images (the input encoder is untouched).

    Random resized crops (area ``FINETUNE_SCALE``) and flips drawn per sample, Nesterov SGD (lr
    ``eval.finetune_lr``, momentum 0.9, weight decay 5e-4 except on BN and biases), cosine schedule over
    ``eval.finetune_epochs``, batch ``eval.batch_size``; BatchNorm in train mode, as in fine-tuning in
    Chen et al. 2020. The epoch with the best validation accuracy is kept. ``seed`` (default ``train.seed``)
    seeds the new layer, the batch order and the crops.
    """
    seed = cfg.train.seed if seed is None else seed
    if len(val) == 0:
        raise ConfigError("finetune: the validation split is empty; model selection needs data.n_val > 0")
    model = Classifier(copy.deepcopy(encoder), num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.fc.reset_parameters()
    model.requires_grad_(True).to(device).to(memory_format=torch.channels_last)
    aug = dataclasses.replace(cfg.augment, scale=FINETUNE_SCALE, hflip=0.5, jitter_p=0.0, gray_p=0.0, blur_p=0.0,
                              mean=tuple(mean), std=tuple(std))
    images = train.images.to(device)
    labels = train.labels.to(device)
    n, bs = len(images), min(cfg.eval.batch_size, len(images))
    if n < 2:
        raise ConfigError(f"finetune: {n} labeled training image(s); BatchNorm training needs at least 2")
    steps = max(1, n // bs)  # the last partial batch is dropped (a batch of 1 breaks BatchNorm)
    epochs = cfg.eval.finetune_epochs
    ocfg = OptimConfig(name="sgd", lr=cfg.eval.finetune_lr, scale_lr=False, momentum=0.9, nesterov=True,
                       weight_decay=FINETUNE_WEIGHT_DECAY, warmup_epochs=0.0, schedule="cosine")
    opt = build_optimizer(ocfg, model, bs)
    sched = Schedule(opt, ocfg, bs, steps, max(epochs, 1))
    # fp16 (CUDA 7.x) needs loss scaling, or small gradients underflow to zero; a disabled scaler is a pass-through
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def train_epoch(epoch: int) -> tuple[float, float]:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed_for(seed, epoch))).to(device)
        loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device), 0
        for it in range(steps):
            idx = perm[it * bs : (it + 1) * bs]
            params = augment.sample_params(len(idx), images.shape[-1], image_size, aug,
                                           augment.batch_generator(seed + 99_991, epoch, it))
            with torch.no_grad():
                x = augment.apply_params(images[idx], params, image_size, aug).contiguous(memory_format=torch.channels_last)
            sched(epoch * steps + it)
            with autocast(device, precision):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels[idx])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            loss_sum += loss.detach() * len(idx)  # read once per epoch, not per step (no device sync)
            correct += (logits.detach().argmax(1) == labels[idx]).sum()
            seen += len(idx)
        return float(loss_sum) / seen, int(correct) / seen

    def validate() -> tuple[float, float]:
        val_logits = extract_features(model, val.images, image_size, mean, std, device, precision, cfg.eval.batch_size)
        return float(F.cross_entropy(val_logits, val.labels)), float((val_logits.argmax(1) == val.labels).float().mean())

    res = fit_keep_best(model, epochs, train_epoch, validate, select="val_acc", name="finetune", log=log)
    model.requires_grad_(False)
    return res
