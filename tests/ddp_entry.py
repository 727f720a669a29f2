"""torchrun entry point of test_ddp.py (not a test module).

``ddp_entry.py JOBS.json`` runs several ``simclr`` command lines in turn in ONE process group, so one launch serves
several checks (a launch costs about 12 s of process start-up and gloo set-up on 2 cores): JOBS.json is a list of
``{"name": ..., "argv": [...], "env": {...}}``; rank 0 prints ``=== job NAME`` before each, so a test can read the
log of its own job. ``ddp_entry.py ARGS...`` runs one command line. Per job, ``env`` may hold:

- ``SIMCLR_TEST_LOCAL_GATHER=1``: the classic multi-GPU bug, a gather whose backward keeps only local gradients,
  so the tests can show that their comparison catches it;
- ``SIMCLR_TEST_FAKE_CLOCK=T``: the budget's clock advances T seconds a reading on rank 0 and 3T on rank 1, so the
  two processes measure different speeds.
"""

import contextlib
import json
import os
import sys

import torch.distributed as dist
from dist_loss_worker import gather_dropping_remote_grads

import simclr.budget
import simclr.loss
from simclr.cli import main


class _FakeTime:
    def __init__(self, tick: float):
        self.tick = tick * (3 if os.environ.get("RANK") == "1" else 1)
        self.t = 0.0

    def perf_counter(self) -> float:
        self.t += self.tick
        return self.t


@contextlib.contextmanager
def _hooks(env: dict):
    gather, clock = simclr.loss.all_gather_with_grad, simclr.budget.time
    if env.get("SIMCLR_TEST_LOCAL_GATHER") == "1":
        simclr.loss.all_gather_with_grad = gather_dropping_remote_grads
    if env.get("SIMCLR_TEST_FAKE_CLOCK"):
        simclr.budget.time = _FakeTime(float(env["SIMCLR_TEST_FAKE_CLOCK"]))
    try:
        yield
    finally:
        simclr.loss.all_gather_with_grad, simclr.budget.time = gather, clock


def _run_jobs(path: str) -> int:
    jobs = json.loads(open(path).read())
    dist.init_process_group(backend="gloo")  # ours: each job's pretrain leaves it open for the next
    try:
        for job in jobs:
            if dist.get_rank() == 0:
                print(f"=== job {job['name']}", flush=True)
            with _hooks(job.get("env", {})):
                code = main(job["argv"])
            if code:
                print(f"job {job['name']} exited {code}", file=sys.stderr, flush=True)
                return code
            sys.stdout.flush()
        return 0
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        sys.exit(_run_jobs(sys.argv[1]))
    with _hooks(dict(os.environ)):
        sys.exit(main())
