#!/usr/bin/env bash
# How long the test suite takes on this machine: `make test` as CI runs it (pytest-xdist on every core, one torch
# thread a worker), then the same suite in one process (`PARALLEL=` empty), each with its 15 slowest tests.
#
#   bash benchmarks/suite_time.sh        # about 10 minutes on 2 cores; run it alone on the machine
#
# Writes benchmarks/results/suite_time.json (wall seconds of each, the machine) and prints the durations.
set -euo pipefail
cd "$(dirname "$0")/.."
make setup >/dev/null
PY=.venv/bin/python
out=benchmarks/results/suite_time.json
declare -A wall
for mode in parallel serial; do
  args=$([ "$mode" = parallel ] && sed -n 's/^PARALLEL ?= //p' Makefile || true)
  started=$(date +%s)
  # shellcheck disable=SC2086  # the flags are words
  "$PY" -m pytest tests $args -p no:cacheprovider --durations=15 | tail -20
  wall[$mode]=$(( $(date +%s) - started ))
done
"$PY" - "$out" "${wall[parallel]}" "${wall[serial]}" <<'PY'
import datetime, json, sys
from pathlib import Path

import torch

from simclr.hardware import cpu_count
from simclr.precision import device_name, hardware

out, parallel, serial = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "machine": hardware(torch.device("cpu")), "cpu": device_name(torch.device("cpu")), "cpus": cpu_count(),
       "make_test_s": round(parallel, 1), "one_process_s": round(serial, 1)}
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(res, indent=2) + "\n")
print(json.dumps(res, indent=2))
PY
