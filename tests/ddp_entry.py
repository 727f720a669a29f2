"""torchrun entry point of test_ddp.py (not a test module): the ``simclr`` command line, and with
``SIMCLR_TEST_LOCAL_GATHER=1`` the classic multi-GPU bug, a gather whose backward keeps only local gradients,
so the tests can show that their comparison catches it."""

import os
import sys

from dist_loss_worker import gather_dropping_remote_grads

import simclr.loss
from simclr.cli import main

if os.environ.get("SIMCLR_TEST_LOCAL_GATHER") == "1":
    simclr.loss.all_gather_with_grad = gather_dropping_remote_grads
sys.exit(main())
