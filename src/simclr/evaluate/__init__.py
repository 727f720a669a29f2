"""Evaluation of a frozen encoder: features, kNN, linear probe, MLP head and fine-tuning -> metrics and plots.

Every protocol selects its model on the labeled validation split, never on the test set:

- ``knn``: weighted kNN on L2-normalised features (Wu et al. 2018; k=200, T=0.1 as in lightly and solo-learn).
- ``linear``: the standard linear probe on precomputed frozen features, standardised with training-set
  statistics; Adam (lr 0.01), cosine schedule, batch 1000, the epoch with the best validation accuracy kept.
  This is the recipe of dkobak/simclr-cifar10 (Böhm, Berens & Kobak 2022), which matches the SimCLR paper's
  L-BFGS / SGD probes on CIFAR-10 in seconds on a GPU.
- ``mlp``: the seed notebook project's head D -> 128 -> 64 -> C trained with Adam on frozen features of
  ``data.n_train_labels`` labeled images, early stopping on validation loss (patience 3), best head kept.
- ``finetune``: the whole network (encoder + linear layer) trained on N labels with crop + flip augmentation,
  Nesterov SGD with a cosine schedule, the epoch with the best validation accuracy kept.

Modules: :mod:`.features` (frozen features), :mod:`.knn`, :mod:`.heads` (linear / MLP heads and the keep-the-best
loop), :mod:`.finetune`, :mod:`.protocols` (the registry and a protocol's result), :mod:`.outputs` (metrics.json,
predictions, plots), :mod:`.runner` (evaluate an encoder or a run), :mod:`.encoder` (a run's encoder),
:mod:`.embed` (``simclr embed``), :mod:`.neighbors` (nearest neighbours in feature space and their picture,
``simclr neighbors``). The names below are the package's interface.
"""

from ..rundir import LABEL_EFFICIENCY, read_label_efficiency
from ..splits import EvalData, balanced_order, load_eval_data
from .embed import embed
from .encoder import encoder_from_run, load_encoder, run_config
from .features import extract_features
from .finetune import FINETUNE_SCALE, FINETUNE_WEIGHT_DECAY, Classifier, finetune
from .heads import LINEAR_BATCH_SIZE, MLP_BATCH_SIZE, FeatureHead, HeadResult, fit_keep_best, train_head
from .knn import knn_accuracy, knn_predict
from .neighbors import neighbors_for_files, write_eval_neighbors
from .outputs import classification_metrics, write_outputs
from .protocols import (
    PROTOCOL_REGISTRY,
    EvalContext,
    ProtocolResult,
    label_budget,
    parse_protocols,
    run_protocol,
)
from .runner import evaluate_encoder, evaluate_run

__all__ = [
    "FINETUNE_SCALE", "FINETUNE_WEIGHT_DECAY", "LABEL_EFFICIENCY", "LINEAR_BATCH_SIZE", "MLP_BATCH_SIZE",
    "PROTOCOL_REGISTRY", "Classifier", "EvalContext", "EvalData", "FeatureHead", "HeadResult", "ProtocolResult",
    "balanced_order", "classification_metrics", "embed", "encoder_from_run", "evaluate_encoder", "evaluate_run",
    "extract_features", "finetune", "fit_keep_best", "knn_accuracy", "knn_predict", "label_budget", "load_encoder",
    "load_eval_data", "neighbors_for_files", "parse_protocols", "read_label_efficiency", "run_config", "run_protocol",
    "train_head", "write_eval_neighbors", "write_outputs",
]
