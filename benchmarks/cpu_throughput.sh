#!/usr/bin/env bash
# CPU throughput, ours beside the peers' default, in one run each (ResNet-18 with the CIFAR stem, batch 256):
#
#   bash benchmarks/cpu_throughput.sh [OUT_DIR]        (default: benchmarks/results)
#
# 1. cpu_bench.json, on the CIFAR-10 images at $CIFAR10 (default ../shared/data/cifar10; random uint8 without them):
#    augmentation (8,192 source images, two views each), training steps (3 rounds, ours then the peers, each 2
#    warm-up + 5 timed steps) and an epoch (2,560 images, 10 steps, through the real training loop), ours
#    (device-resident uint8 + batched augmentation + bf16 autocast + channels_last + fused SGD) vs torchvision
#    per-image transforms in a DataLoader with 2 workers feeding the fp32 eager model. About 9 minutes on 2 cores.
# 2. cpu_ablation.json: model-only steps, one setting changed at a time (fp32 / bf16, contiguous / channels_last,
#    foreach / fused SGD, torch.compile). About 3 minutes, a minute of it compiling.
# 3. cpu_stream.json (when the CIFAR-10 image folder is at $CIFAR10, default ../shared/data/cifar10): an epoch of
#    4,096 images through the streaming path (data.stream: 2 DataLoader workers decode and crop the JPEG files each
#    step) beside the in-memory path. About 3 minutes.
# The numbers are only meaningful on a quiet machine: machine.txt records lscpu and the load before and after.
set -eu
cd "$(dirname "$0")/.."
OUT_DIR=${1:-benchmarks/results}
SIMCLR=${SIMCLR:-$( [ -x .venv/bin/simclr ] && echo .venv/bin/simclr || echo simclr )}
mkdir -p "$OUT_DIR"
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "before: $(uptime)"
  lscpu | grep -E '^(Model name|CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|L3 cache)'
} >"$OUT_DIR/cpu_machine.txt"
CIFAR10=${CIFAR10:-../shared/data/cifar10}
# Real images when the CIFAR-10 folder is there: the cost depends on the content (denormal floats in a training
# network; on an Intel Xeon the loop ran 30 % slower on CIFAR-10 than on random uint8 before they were flushed).
REAL=()
[ -d "$CIFAR10/train" ] && REAL=(--data "$CIFAR10")
"$SIMCLR" bench --config quickstart --device cpu --batch-size 256 --steps 5 --rounds 3 --warmup 2 --aug-images 8192 \
  --epoch-images 2560 --workers 2 --parts augment,step,epoch "${REAL[@]}" --json --output "$OUT_DIR/cpu_bench.json" >/dev/null
"$SIMCLR" bench --config quickstart --device cpu --batch-size 256 --steps 3 --warmup 1 --parts ablation --compile \
  --no-baseline --json --output "$OUT_DIR/cpu_ablation.json" >/dev/null
if [ -d "$CIFAR10/train" ]; then  # the streaming path (data.stream) on real JPEG files, beside the in-memory path
  "$SIMCLR" bench --config quickstart --device cpu --batch-size 256 --data "$CIFAR10" --stream --parts epoch \
    --epoch-images 4096 --workers 2 --no-baseline --json --output "$OUT_DIR/cpu_stream.json" >/dev/null
fi
echo "after: $(uptime)" >>"$OUT_DIR/cpu_machine.txt"
"${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}" - "$OUT_DIR" <<'PY'
import json, sys
from pathlib import Path
from simclr.bench import format_table
out = Path(sys.argv[1])
for name in ("cpu_bench.json", "cpu_ablation.json", "cpu_stream.json"):
    if (out / name).is_file():
        print(format_table(json.loads((out / name).read_text())), end="\n\n")
PY
