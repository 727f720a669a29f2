"""simclr: SimCLR self-supervised pretraining (Chen et al. 2020), evaluation and reports.

Public API::

    from simclr import nt_xent, load_config, pretrain
    loss = nt_xent(z0, z1, temperature=0.5)  # z0, z1: [N, D] projections of two views
"""

from .config import Config, load_config
from .errors import CheckpointError, ConfigError, DataError, NonFiniteLossError, SimCLRError
from .evaluate import evaluate_run, load_encoder
from .loss import nt_xent

__version__ = "0.1.0"


def pretrain(cfg: Config, resume: bool = False):
    """Train a SimCLR encoder as configured; returns the run directory (see :func:`simclr.train.pretrain`)."""
    from .train import pretrain as _pretrain

    return _pretrain(cfg, resume=resume)


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
