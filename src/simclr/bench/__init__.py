"""Throughput benchmarks behind ``simclr bench`` and ``benchmarks/``: our pipeline beside the peers' default.

Ours (:mod:`.ours`): the dataset lives on the device as uint8, both views of a batch are made there with
per-sample parameters, the encoder runs under the run's precision with channels_last tensors and a fused
optimizer, with the process settings of ``simclr pretrain``. The peers' default (:mod:`.peers`, theirs): a
torchvision per-image transform on PIL images in a DataLoader with worker processes, and the same model in fp32,
eager, contiguous format, with ``torch.optim.SGD`` as constructed by default, under torch's and glibc's defaults.

Modules: :mod:`.run` (:func:`run_bench`: the machine, the source images, the parts, the result), :mod:`.parts`
(augment, step, epoch, ablation), :mod:`.ours` and :mod:`.peers` (the timed pipelines), :mod:`.timing` (warm-up,
timed steps, :class:`Measurement`; throughputs count SOURCE images per second), :mod:`.memory` (peak memory of
the timed work), :mod:`.isolation` (each pipeline in a fresh process on the CPU), :mod:`.table` (the printed
table), :mod:`.options` (:class:`BenchOptions`). The names below are the package's interface.
"""

from .isolation import PipelineError, run_pipeline
from .memory import PeakMemory, rss_kb
from .options import PARTS, BenchOptions
from .ours import optimizer_name, our_settings
from .parts import bench_ablation, bench_augment, bench_epoch, bench_step, bench_step_rounds
from .peers import PairDataset, peer_loader, torchvision_pipeline
from .run import machine_info, run_bench
from .table import format_table, tf32_label
from .timing import Measurement, views_step

__all__ = [
    "PARTS", "BenchOptions", "Measurement", "PairDataset", "PeakMemory", "PipelineError", "bench_ablation",
    "bench_augment", "bench_epoch", "bench_step", "bench_step_rounds", "format_table", "machine_info",
    "optimizer_name", "our_settings", "peer_loader", "rss_kb", "run_bench", "run_pipeline", "tf32_label",
    "torchvision_pipeline", "views_step",
]
