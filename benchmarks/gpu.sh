#!/usr/bin/env bash
# SimCLR on one GPU (prepared for one H200 for at most 10 minutes), one command from the repository root:
#
#   bash benchmarks/gpu.sh [OUT_DIR] [CIFAR10_DIR]
#
#   OUT_DIR      where the results go (default: $OUT if set, else benchmarks/results/gpu-<UTC date>)
#   CIFAR10_DIR  the CIFAR-10 image folder, train/<class>/*.jpg + test/<class>/*.jpg (default: $CIFAR10 if set,
#                else data/cifar10 in the repo, else ../shared/data/cifar10)
#
# Needs python3 with torch + torchvision and the project's light dependencies (PyYAML, safetensors, Pillow,
# scikit-learn, matplotlib, tqdm, tensorboard); nothing is installed: the package runs from src/ via PYTHONPATH.
# The whole script stops itself before BUDGET_S seconds (default 570 = 9.5 min), each stage under `timeout`:
#
#   1. throughput (`simclr bench`, <= BENCH_S = 100 s): augmentation, training step and an ablation
#      (precision, memory format, fused SGD, cudnn.benchmark) of ResNet-18 (CIFAR stem) at batch 512, ours
#      (device-resident uint8, batched augmentation, bf16, channels_last) beside the peers' default (torchvision
#      per-image transforms in a DataLoader with WORKERS workers, fp32 eager); source images/s and peak memory.
#   2. the cifar10_resnet18 recipe with the 100-epoch schedule (--epochs 100 --lr 0.06, as dkobak/simclr-cifar10
#      reports kNN 83.2 % after 100 epochs) for as many epochs as fit; kNN accuracy (k=200, validation split)
#      every KNN_EVERY epochs (default 5: each costs about a second; 1 gives the full curve but fewer epochs),
#      seconds and images/s of every epoch (metrics.jsonl).
#   3. kNN accuracy on the test set of the last weights (`simclr evaluate --protocol knn`), if >= 45 s are left.
#   4. summary.md + summary.json.
#
# Knobs (environment): BUDGET_S, BENCH_S, KNN_EVERY, EPOCHS (100), WORKERS (15), COMPILE=1 (torch.compile in
# the bench and the pretraining; adds about a minute of compilation), SKIP_BENCH=1, PYTHON (python3), DEVICE (cuda),
# BENCH_ARGS / TRAIN_ARGS (extra flags, e.g. for a CPU smoke test of this script:
#   DEVICE=cpu EPOCHS=1 BENCH_ARGS="--batch-size 32 --steps 1 --aug-images 64 --workers 0" \
#   TRAIN_ARGS="--batch-size 64 --limit 512 --set model.proj_hidden=[64]" bash benchmarks/gpu.sh /tmp/gpu-smoke).
# Files written to OUT_DIR (8 at most, for tools that copy few files back): env.txt, log.txt, bench.json,
# metrics.jsonl, knn_test.json, timing.json, summary.md, summary.json. Scratch (run directory, uint8 cache) goes
# to ${SCRATCH:-/tmp/simclr-gpu}.
set -u
START=$(date +%s)
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
BUDGET_S=${BUDGET_S:-570}
BENCH_S=${BENCH_S:-100}
KNN_EVERY=${KNN_EVERY:-5}
EPOCHS=${EPOCHS:-100}
WORKERS=${WORKERS:-15}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
read -r -a BENCH_EXTRA <<<"${BENCH_ARGS:-}"
read -r -a TRAIN_EXTRA <<<"${TRAIN_ARGS:-}"
OUT_DIR=${1:-${OUT:-benchmarks/results/gpu-$(date -u +%Y%m%d-%H%M)}}
DATA=${2:-${CIFAR10:-}}
if [ -z "$DATA" ]; then
  for d in data/cifar10 ../shared/data/cifar10 /work/shared/data/cifar10; do
    if [ -d "$d/train" ]; then DATA=$d; break; fi
  done
fi
SCRATCH=${SCRATCH:-/tmp/simclr-gpu}
RUN=$SCRATCH/run
mkdir -p "$OUT_DIR" "$SCRATCH"
rm -rf "$RUN"
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 SIMCLR_CACHE="$SCRATCH/cache"
LOG=$OUT_DIR/log.txt
: >"$LOG"
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
say() { echo "[gpu.sh $(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
stage_t=()
mark() { stage_t+=("\"$1\": $(($(date +%s) - START))"); }
COMPILE_FLAG=()
if [ "${COMPILE:-0}" = 1 ]; then COMPILE_FLAG=(--compile); fi

{
  date -u
  nvidia-smi 2>&1 | head -15
  "$PYTHON" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO GPU')"
  nproc; free -g | head -2
  echo "data: $DATA"
  git -C "$REPO" rev-parse HEAD 2>/dev/null
} >"$OUT_DIR/env.txt" 2>&1
say "env: $(tail -n +1 "$OUT_DIR/env.txt" | grep -m1 '^torch')"
if [ -z "$DATA" ] || [ ! -d "$DATA/train" ]; then
  say "no CIFAR-10 image folder found (give it as the second argument or CIFAR10=...); the pretraining stage is skipped"
fi

# 1. throughput -----------------------------------------------------------------------------------------------
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  say "stage 1: simclr bench (<= ${BENCH_S}s)"
  timeout -s INT -k 10 "$BENCH_S" "$PYTHON" -m simclr bench --config cifar10_resnet18 --device "$DEVICE" --batch-size 512 \
    --precision bf16 --parts augment,step,ablation --steps 30 --warmup 10 --aug-images 51200 --workers "$WORKERS" \
    "${COMPILE_FLAG[@]}" "${BENCH_EXTRA[@]}" --json --output "$OUT_DIR/bench.json" >/dev/null 2>>"$LOG"
  say "stage 1 exit $?"
fi
mark bench

# 2. pretraining for as many epochs as fit ----------------------------------------------------------------------
if [ -n "$DATA" ] && [ -d "$DATA/train" ]; then
  T=$(( $(left) - 75 ))  # keep time for the test kNN and the summary
  if [ "$T" -gt 30 ]; then
    say "stage 2: cifar10_resnet18, $EPOCHS-epoch schedule, for at most ${T}s"
    timeout -s INT -k 20 "$T" "$PYTHON" -m simclr pretrain --config cifar10_resnet18 --epochs "$EPOCHS" --lr 0.06 \
      --data "$DATA" --device "$DEVICE" --out "$RUN" --set train.knn_every="$KNN_EVERY" --set train.progress=false \
      --set train.preview=false "${COMPILE_FLAG[@]}" "${TRAIN_EXTRA[@]}" >>"$LOG" 2>&1
    say "stage 2 exit $? (124/130: stopped by the time limit; finished epochs are in metrics.jsonl)"
    cp "$RUN/metrics.jsonl" "$OUT_DIR/metrics.jsonl" 2>/dev/null
  fi
fi
mark pretrain

# 3. kNN on the test set -------------------------------------------------------------------------------------------
if [ -f "$RUN/checkpoints/last.pt" ] && [ "$(left)" -gt 45 ]; then
  say "stage 3: test-set kNN"
  timeout -s INT -k 5 $(( $(left) - 20 )) "$PYTHON" benchmarks/gpu_tools.py export "$RUN" >>"$LOG" 2>&1
  timeout -s INT -k 5 $(( $(left) - 15 )) "$PYTHON" -m simclr evaluate --run "$RUN" --protocol knn --device "$DEVICE" \
    --set eval.tsne_points=0 >>"$LOG" 2>&1
  say "stage 3 exit $?"
  cp "$RUN/eval/knn/metrics.json" "$OUT_DIR/knn_test.json" 2>/dev/null
fi
mark evaluate

# 4. summary -----------------------------------------------------------------------------------------------------------
(IFS=,; echo "{${stage_t[*]}}") >"$OUT_DIR/timing.json"
timeout -k 2 10 "$PYTHON" benchmarks/gpu_tools.py summary "$OUT_DIR" "$RUN" >>"$LOG" 2>&1
say "done in $(($(date +%s) - START))s; results in $OUT_DIR"
cat "$OUT_DIR/summary.md" 2>/dev/null
