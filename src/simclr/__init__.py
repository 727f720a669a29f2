"""simclr: SimCLR self-supervised pretraining (Chen et al. 2020), evaluation and reports.

Public API::

    from simclr import nt_xent, load_config, pretrain, load_encoder
    loss = nt_xent(z0, z1, temperature=0.5)  # z0, z1: [N, D] projections of two views
    run = pretrain(load_config("quickstart"), backbone=my_module)  # or model.backbone by name
    encoder = load_encoder(run, backbone=MyModule())
"""

from .config import Config, load_config
from .errors import CheckpointError, ConfigError, DataError, NonFiniteLossError, SimCLRError
from .evaluate import evaluate_run, load_encoder
from .loss import nt_xent

__version__ = "0.1.0"


def pretrain(cfg: Config, resume: bool = False, backbone=None):
    """Train a SimCLR encoder as configured; returns the run directory (see :func:`simclr.train.pretrain`).

    Args:
        cfg: the configuration.
        resume: continue the run in ``cfg.out``.
        backbone: your own ``torch.nn.Module`` mapping ``[B, 3, H, W]`` images to ``[B, D]`` features (or
            ``[B, D, h, w]`` maps, average-pooled) instead of ``cfg.model.backbone``; it is trained in place and
            the run records it as ``custom:<class name>``. Restore it with ``load_encoder(run, backbone=Module())``.
    """
    from .train import pretrain as _pretrain

    if backbone is not None:
        import copy

        from .backbones import custom_name

        cfg = copy.deepcopy(cfg)
        cfg.model.backbone = custom_name(backbone)
    return _pretrain(cfg, resume=resume, backbone=backbone)


__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "DataError",
    "NonFiniteLossError",
    "SimCLRError",
    "evaluate_run",
    "load_config",
    "load_encoder",
    "nt_xent",
    "pretrain",
]
