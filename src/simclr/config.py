"""Configuration: dataclasses for each stage; YAML preset -> defaults -> command-line overrides.

The resolved configuration is saved next to the results (``config.yaml``) so a run can be repeated.
Every key is validated before any work starts; a bad key or value raises :class:`ConfigError`
(exit code 2) with a message naming the key and the allowed values.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .budget import parse_duration
from .errors import ConfigError
from .precision import PRECISIONS
from .rundir import atomic_write_bytes

OPTIMIZERS = ("adam", "adamw", "sgd", "lars")
STEMS = ("auto", "cifar", "imagenet")
SPLITS = ("standard", "seed")
SCHEDULES = ("cosine", "constant")
# train.loss: each loss (simclr.loss) and the name the report gives it
LOSSES = {"nt_xent": "NT-Xent", "dcl": "decoupled contrastive (DCL: no positive in the denominator)"}
PROTOCOLS = ("knn", "linear", "mlp", "finetune")
BUILTIN_DATASETS = ("cifar10", "cifar100", "stl10")

# CIFAR-10 channel statistics (train set), used for normalisation unless the config overrides them.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def default_cache_root() -> Path:
    """Per-user cache folder (``$SIMCLR_CACHE`` or ``$XDG_CACHE_HOME/simclr`` or ``~/.cache/simclr``)."""
    if os.environ.get("SIMCLR_CACHE"):
        return Path(os.environ["SIMCLR_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "simclr"


@dataclass
class DataConfig:
    name: str = "cifar10"  # cifar10 | cifar100 | stl10 | path to an image folder
    root: str | None = None  # where torchvision datasets are downloaded; default <cache>/data
    cache_dir: str | None = None  # uint8 tensor cache; default <cache>/tensors
    cache_size: int | None = None  # side (px) images are stored at; None: min(image_size, native side)
    download: bool = True
    split: str = "standard"  # standard: pretrain on all train images; seed: the seed notebook project's 8,000 / 42,000 split
    n_labeled: int = 8000  # seed split: labeled images held out of pretraining
    n_val: int = 1500  # labeled images used for validation (heads, early stopping, kNN monitor)
    n_train_labels: int = 6500  # labeled training images for the mlp head (the seed notebook project's protocol)
    test_fraction: float = 0.2  # ROOT/<class>/* folders: share of images held out as the test split
    limit: int | None = None  # use the first N images of a seeded permutation
    strict: bool = False  # unreadable files are an error instead of a warning
    stream: bool = False  # image folders too large for memory: decode + crop in DataLoader workers each step
    workers: int = 4  # DataLoader workers for the streaming path


@dataclass
class AugmentConfig:
    """SimCLR view augmentation (Chen et al. 2020, appendix A). Probabilities are per sample."""

    scale: tuple[float, float] = (0.08, 1.0)  # random resized crop: area fraction of the source
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # random resized crop: aspect ratio range
    hflip: float = 0.5  # probability of a horizontal flip
    jitter_strength: float = 0.5  # s: brightness/contrast/saturation 0.8s, hue 0.2s
    jitter_p: float = 0.8  # probability of applying colour jitter
    gray_p: float = 0.2  # probability of converting to grayscale
    blur_p: float = 0.0  # probability of Gaussian blur (0.5 for ImageNet-sized images)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # blur sigma range, px of the output image
    # multi-crop (Caron et al. 2020, SwAV): besides the two global views, small_crops crops of small_size px (at
    # model.image_size; scaled with the views under progressive resizing) from small_scale of the source area.
    # Each is a positive of both global views (simclr.loss.multicrop_nt_xent).
    small_crops: int = 0
    small_size: int = 16
    small_scale: tuple[float, float] = (0.05, 0.4)
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD


@dataclass
class ModelConfig:
    backbone: str = "resnet18"  # a torchvision model name or timm:NAME (`simclr backbones` lists them)
    stem: str = "auto"  # auto: small-image stem (ResNets: 3x3 conv, no max-pool) at 64 px or less; see backbones.py
    image_size: int = 32  # side (px) of the views fed to the encoder
    feature_dim: int | None = None  # optional linear layer after pooling (the seed notebook project: 256)
    proj_hidden: list[int] = field(default_factory=lambda: [512])  # hidden widths of the projection MLP
    proj_dim: int = 128  # output dimension of the projection head
    proj_bn: bool = True  # BatchNorm after each hidden layer
    # weight of each training batch in the running statistics of every BatchNorm layer (encoder and head), which the
    # frozen encoder normalises with at evaluation; torch's default 0.1 averages over about the last 10 steps
    bn_momentum: float = 0.1


@dataclass
class OptimConfig:
    name: str = "sgd"  # adam | adamw (decoupled weight decay) | sgd (Nesterov momentum) | lars
    lr: float = 0.06  # base learning rate; per 256 images when scale_lr is true
    scale_lr: bool = True  # lr = base lr * batch_size / 256
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # not applied to BatchNorm parameters and biases
    warmup_epochs: float = 10.0  # linear warmup, then the schedule below; stepped per iteration
    schedule: str = "cosine"  # cosine (to final_lr_ratio * lr) | constant
    final_lr_ratio: float = 0.0
    lars_eta: float = 0.001  # LARS trust coefficient


@dataclass
class TrainConfig:
    epochs: int = 100  # ignored when budget is set
    budget: str | None = None  # pretraining time, e.g. 6m, 90s, 1h30m: the run sizes its steps to end then
    # `simclr run` only: the whole job (pretraining, evaluation, baselines, report) ends within this time; pretraining
    # ends early enough for the evaluation, whose time comes from its count of forwards at the encoder's measured
    # forward speed (feature protocols and the random baseline only). With train.budget too, pretraining stops at whichever comes first.
    total_budget: str | None = None
    batch_size: int = 512  # global batch (split across processes under torchrun)
    temperature: float = 0.5
    loss: str = "nt_xent"  # nt_xent | dcl: the positive out of the denominator (Yeh et al. 2022; simclr.loss)
    # progressive resizing: views of low_res_size px for the first low_res_fraction of the steps, then
    # model.image_size (0: off). The network sees the evaluation resolution at the end (the FixRes effect).
    low_res_size: int = 0
    low_res_fraction: float = 0.75
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto: from the hardware (simclr.precision: bf16 where native, else fp32) | fp32 | bf16 | fp16 (CUDA) | fp64 (numerical checks)
    channels_last: bool = True
    compile: bool = False  # torch.compile the model (costs a minute of compile time)
    reuse_memory: bool = True  # CPU (glibc): keep freed memory for the next step (runtime.reuse_freed_memory)
    sync_bn: bool = False  # synchronised BatchNorm across processes (global BN)
    sync_bn_impl: str = "auto"  # with sync_bn on CUDA: auto (models.CUDA_SYNC_BN) | torch (nn.SyncBatchNorm) | global
    deterministic: bool = False  # CUDA: deterministic algorithms, no cuDNN autotuning (bitwise resume; slower)
    knn_every: int = 10  # epochs between kNN monitor evaluations, and after the last epoch (0: never)
    knn_k: int = 200
    knn_t: float = 0.1
    checkpoint_every: int = 500  # optimizer steps between mid-epoch checkpoints (0: epoch ends only)
    skip_nonfinite: int = 0  # tolerate up to N steps with a non-finite loss (skipped) before stopping
    sync_every: int = 0  # steps between reads of the loss from the device (0: auto, 1 on CPU, 50 on GPUs)
    progress: bool = True  # progress bar when stdout is a terminal
    preview: bool = True  # write plots/augment_preview.png at the start


@dataclass
class EvalConfig:
    protocols: list[str] = field(default_factory=lambda: ["knn", "mlp"])
    baselines: list[str] = field(default_factory=lambda: ["random"])  # random | imagenet | scratch
    mlp_hidden: list[int] = field(default_factory=lambda: [128, 64])  # the seed notebook project's head: D->128->64->C
    mlp_epochs: int = 20
    mlp_lr: float = 1e-3
    patience: int = 3  # early stopping on validation loss
    linear_epochs: int = 100
    linear_lr: float = 0.01  # Adam on precomputed features, cosine schedule
    finetune_epochs: int = 30
    finetune_lr: float = 0.01
    labels: list[int] | None = None  # label-efficiency sweep, e.g. [100, 1000, 6500, 50000]
    knn_k: int = 200
    knn_t: float = 0.1
    batch_size: int = 256
    tsne_points: int = 2000
    seeds: int = 1  # trained heads (linear, mlp, finetune) repeated with seeds train.seed, +1, ...: mean ± std
    bootstrap: int = 1000  # resamples of the test images behind each 95 % interval (simclr.stats)
    imagenet_weights: str = "imagenet"  # supervised baseline weights: imagenet | none | path


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out: str = "runs/simclr"
    name: str = "simclr"  # method label in reports


# command-line flag -> dotted config key
FLAG_KEYS = {
    "data": "data.name",
    "data_root": "data.root",
    "limit": "data.limit",
    "out": "out",
    "epochs": "train.epochs",
    "budget": "train.budget",
    "total_budget": "train.total_budget",
    "batch_size": "train.batch_size",
    "seed": "train.seed",
    "device": "train.device",
    "precision": "train.precision",
    "temperature": "train.temperature",
    "loss": "train.loss",
    "backbone": "model.backbone",
    "image_size": "model.image_size",
    "optimizer": "optim.name",
    "lr": "optim.lr",
    "seeds": "eval.seeds",
}


def preset_dir() -> Path:
    """The presets' folder, ``simclr/configs/`` inside the installed package (package data, so a wheel has it too)."""
    return Path(str(resources.files("simclr") / "configs"))


def resolve_config_path(path_or_name: str) -> Path:
    """Accept a YAML path or a preset name such as ``quickstart``."""
    p = Path(path_or_name).expanduser()
    if p.is_file():
        return p
    candidate = preset_dir() / f"{path_or_name}.yaml"
    if candidate.is_file():
        return candidate
    presets = sorted(x.stem for x in preset_dir().glob("*.yaml"))
    raise ConfigError(f"config file {path_or_name!r} not found; give a YAML path or one of the presets: {', '.join(presets)}")


def _check_type(key: str, value: Any, default: Any, ftype: str) -> Any:
    """Coerce ``value`` to the type of the field (from its annotation string) or raise ConfigError."""
    t = ftype.replace(" ", "")
    optional = "None" in t
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: null is not allowed (expected {t})")
    base = t.replace("|None", "")
    try:
        if base == "bool":
            if isinstance(value, str):
                low = value.lower()
                if low in ("true", "1", "yes", "on"):
                    return True
                if low in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            if isinstance(value, bool):
                return value
            raise ValueError
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base == "str":
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if base.startswith("tuple[float"):
            seq = _as_list(value)
            n = base.count("float")
            if len(seq) != n:
                raise ValueError
            return tuple(float(x) for x in seq)
        if base == "list[int]":
            return [int(x) for x in _as_list(value)]
        if base == "list[str]":
            return [str(x) for x in _as_list(value)]
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: invalid value {value!r} (expected {t})") from None
    return value


def _as_list(value: Any) -> list:
    if isinstance(value, str):
        value = [x for x in value.replace(",", " ").split() if x]
    if not isinstance(value, (list, tuple)):
        raise ValueError
    return list(value)


def _set(cfg: Config, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    obj: Any = cfg
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if part not in fields:
            prefix = ".".join(parts[:i])
            allowed = ", ".join(f"{prefix + '.' if prefix else ''}{n}" for n in fields)
            close = difflib.get_close_matches(part, list(fields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {dotted!r}.{hint} Allowed keys here: {allowed}")
        f = fields[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)):
                raise ConfigError(f"{dotted} is a section; set one of its keys, e.g. {dotted}.{dataclasses.fields(getattr(obj, part))[0].name}")
            setattr(obj, part, _check_type(dotted, value, getattr(obj, part), str(f.type)))
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"{'.'.join(parts[: i + 1])} is not a section; unknown key {dotted!r}")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_config(path: str | None = None, overrides: dict[str, Any] | None = None, base: Config | None = None) -> Config:
    """Build a validated Config: defaults, then the YAML file (if any), then dotted-key overrides.

    Args:
        path: YAML file or preset name (``quickstart``, ``cifar10_resnet18``, ...).
        overrides: ``{"train.epochs": 5, ...}``; values may be strings from the command line.
        base: start from this config instead of the defaults.
    """
    cfg = base if base is not None else Config()
    if path:
        p = resolve_config_path(path)
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a mapping of config keys at the top level")
        for k, v in _flatten(raw).items():
            _set(cfg, k, v)
    for k, v in (overrides or {}).items():
        _set(cfg, k, v)
    validate(cfg)
    return cfg


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: invalid value {value!r}; allowed values: {', '.join(map(str, allowed))}")


def _positive(key: str, value: float | int, minimum: float = 0, strict: bool = True) -> None:
    bad = value <= minimum if strict else value < minimum
    if bad:
        op = ">" if strict else ">="
        raise ConfigError(f"{key}: invalid value {value!r}; must be {op} {minimum}")


def validate(cfg: Config) -> None:
    """Reject invalid values before any work starts (raises ConfigError, exit code 2)."""
    from .backbones import check_name  # torchvision's (and timm's) model lists, read on first use

    check_name(cfg.model.backbone)
    _choice("model.stem", cfg.model.stem, STEMS)
    _choice("optim.name", cfg.optim.name, OPTIMIZERS)
    _choice("optim.schedule", cfg.optim.schedule, SCHEDULES)
    _choice("train.precision", cfg.train.precision, PRECISIONS)
    _choice("train.loss", cfg.train.loss, LOSSES)
    _choice("train.sync_bn_impl", cfg.train.sync_bn_impl, ("auto", "torch", "global"))
    _choice("data.split", cfg.data.split, SPLITS)
    for p in cfg.eval.protocols:
        _choice("eval.protocols", p, PROTOCOLS)
    for b in cfg.eval.baselines:
        _choice("eval.baselines", b, ("random", "imagenet", "scratch"))
    if cfg.train.batch_size < 2:
        raise ConfigError(f"train.batch_size: invalid value {cfg.train.batch_size}; must be >= 2 (NT-Xent needs negatives)")
    _positive("train.temperature", cfg.train.temperature)
    _positive("train.epochs", cfg.train.epochs, 0, strict=False)
    if cfg.train.budget is not None:
        parse_duration(cfg.train.budget)
    if cfg.train.total_budget is not None:
        parse_duration(cfg.train.total_budget, "train.total_budget")
        # the evaluation's time is predicted for frozen-feature work; fine-tuning and supervised baselines train
        # for epochs whose cost this prediction does not cover
        extra = (["eval.protocols: finetune"] if "finetune" in cfg.eval.protocols else []) + \
            [f"eval.baselines: {b}" for b in cfg.eval.baselines if b != "random"] + \
            (["eval.labels (a label sweep)"] if cfg.eval.labels else [])
        if extra:
            raise ConfigError(f"train.total_budget: cannot plan the time of {', '.join(extra)}; it covers the "
                              "protocols on frozen features (knn, linear, mlp) and the random baseline. Drop them, "
                              "or use train.budget (pretraining time) with --set train.total_budget=null")
    _positive("optim.lr", cfg.optim.lr)
    _positive("optim.weight_decay", cfg.optim.weight_decay, 0, strict=False)
    _positive("optim.warmup_epochs", cfg.optim.warmup_epochs, 0, strict=False)
    _positive("model.image_size", cfg.model.image_size, 7)
    if cfg.train.low_res_size:
        if not 8 <= cfg.train.low_res_size < cfg.model.image_size:
            raise ConfigError(f"train.low_res_size: invalid value {cfg.train.low_res_size}; must be 0 (off) or between 8 "
                              f"and model.image_size - 1 ({cfg.model.image_size - 1})")
        if not 0.0 < cfg.train.low_res_fraction < 1.0:
            raise ConfigError(f"train.low_res_fraction: invalid value {cfg.train.low_res_fraction}; a fraction of the "
                              "steps between 0 and 1")
        if cfg.data.stream:
            raise ConfigError("train.low_res_size: progressive resizing needs the images in memory; set "
                              "data.stream: false or train.low_res_size: 0")
    _positive("model.proj_dim", cfg.model.proj_dim)
    if not 0.0 < cfg.model.bn_momentum <= 1.0:
        raise ConfigError(f"model.bn_momentum: invalid value {cfg.model.bn_momentum!r}; must be in (0, 1] "
                          "(torch's default: 0.1; smaller averages the running statistics over more steps)")
    _positive("train.knn_every", cfg.train.knn_every, 0, strict=False)
    _positive("train.knn_k", cfg.train.knn_k)
    _positive("train.knn_t", cfg.train.knn_t)
    _positive("train.skip_nonfinite", cfg.train.skip_nonfinite, 0, strict=False)
    _positive("train.checkpoint_every", cfg.train.checkpoint_every, 0, strict=False)
    _positive("train.sync_every", cfg.train.sync_every, 0, strict=False)
    if cfg.data.limit is not None:
        _positive("data.limit", cfg.data.limit, 1, strict=False)
    if cfg.data.cache_size is not None:
        _positive("data.cache_size", cfg.data.cache_size, 7)
    _positive("data.n_val", cfg.data.n_val, 0, strict=False)
    _positive("data.n_train_labels", cfg.data.n_train_labels)
    if not 0.0 < cfg.data.test_fraction < 1.0:
        raise ConfigError(f"data.test_fraction: invalid value {cfg.data.test_fraction}; must be between 0 and 1")
    lo, hi = cfg.augment.scale
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"augment.scale: invalid value {cfg.augment.scale}; need 0 < min <= max <= 1")
    if not 0 < cfg.augment.ratio[0] <= cfg.augment.ratio[1]:
        raise ConfigError(f"augment.ratio: invalid value {cfg.augment.ratio}; need 0 < min <= max")
    for key in ("hflip", "jitter_p", "gray_p", "blur_p"):
        v = getattr(cfg.augment, key)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"augment.{key}: invalid value {v}; a probability in [0, 1]")
    _positive("augment.jitter_strength", cfg.augment.jitter_strength, 0, strict=False)
    _check_multicrop(cfg)
    if any(s <= 0 for s in cfg.augment.std):
        raise ConfigError(f"augment.std: invalid value {cfg.augment.std}; every entry must be > 0")
    _positive("eval.mlp_epochs", cfg.eval.mlp_epochs, 0, strict=False)
    _positive("eval.linear_epochs", cfg.eval.linear_epochs, 0, strict=False)
    _positive("eval.finetune_epochs", cfg.eval.finetune_epochs, 0, strict=False)
    _positive("eval.patience", cfg.eval.patience)
    _positive("eval.knn_k", cfg.eval.knn_k)
    _positive("eval.batch_size", cfg.eval.batch_size, 1, strict=False)
    _positive("eval.seeds", cfg.eval.seeds)
    _positive("eval.bootstrap", cfg.eval.bootstrap)
    if cfg.eval.labels is not None and any(n < 1 for n in cfg.eval.labels):
        raise ConfigError(f"eval.labels: invalid value {cfg.eval.labels}; label counts must be >= 1")


def _check_multicrop(cfg: Config) -> None:
    a = cfg.augment
    if isinstance(a.small_crops, int) and a.small_crops < 0:
        raise ConfigError(f"augment.small_crops: invalid value {a.small_crops}; the number of small crops per image "
                          "besides the two global views, >= 0 (0: off; 2-6 is usual)")
    if not a.small_crops:
        return
    if not 4 <= a.small_size < cfg.model.image_size:
        raise ConfigError(f"augment.small_size: invalid value {a.small_size}; a small crop's side must be between 4 and "
                          f"model.image_size - 1 ({cfg.model.image_size - 1}) px, below the global views'; lower it "
                          "or set augment.small_crops: 0")
    lo, hi = a.small_scale
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"augment.small_scale: invalid value {a.small_scale}; need 0 < min <= max <= 1")
    if cfg.data.stream:
        raise ConfigError("augment.small_crops: multi-crop needs the images in memory (the streaming workers make two "
                          "views only); set data.stream: false or augment.small_crops: 0")


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML/JSON."""

    def conv(x: Any) -> Any:
        if isinstance(x, tuple):
            return [conv(v) for v in x]
        if isinstance(x, list):
            return [conv(v) for v in x]
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        return x

    return conv(dataclasses.asdict(cfg))


def from_dict(d: dict[str, Any]) -> Config:
    """Inverse of :func:`to_dict` (validated)."""
    return load_config(None, _flatten(d))


def save_config(cfg: Config, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    """Write the resolved config as YAML (``extra`` keys such as the command line go first)."""
    d = dict(extra or {})
    d.update(to_dict(cfg))
    atomic_write_bytes(yaml.safe_dump(d, sort_keys=False).encode(), path)


def read_config(path: str | os.PathLike) -> Config:
    """Read a resolved ``config.yaml`` written by :func:`save_config` (extra keys are ignored)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    keys = {f.name for f in dataclasses.fields(Config)}
    return from_dict({k: v for k, v in raw.items() if k in keys})
