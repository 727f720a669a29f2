"""torchrun entry point of test_ddp.py (not a test module): the ``simclr`` command line, and with
``SIMCLR_TEST_LOCAL_GATHER=1`` the classic multi-GPU bug, a gather whose backward keeps only local gradients,
so the tests can show that their comparison catches it. ``SIMCLR_TEST_FAKE_CLOCK=T``: the budget's clock advances T
seconds a reading on rank 0 and 3T on rank 1, so the two processes measure different speeds."""

import os
import sys

from dist_loss_worker import gather_dropping_remote_grads

import simclr.loss
from simclr.cli import main

if os.environ.get("SIMCLR_TEST_LOCAL_GATHER") == "1":
    simclr.loss.all_gather_with_grad = gather_dropping_remote_grads
if os.environ.get("SIMCLR_TEST_FAKE_CLOCK"):
    import simclr.budget

    class _FakeTime:
        tick = float(os.environ["SIMCLR_TEST_FAKE_CLOCK"]) * (3 if os.environ.get("RANK") == "1" else 1)
        t = 0.0

        def perf_counter(self) -> float:
            self.t += self.tick
            return self.t

    simclr.budget.time = _FakeTime()
sys.exit(main())
