"""One writer per run directory: the process that trains there holds an OS advisory lock on it.

Two processes pretraining into the same ``--out`` (a second ``--resume`` while the first still runs, a scheduler
relaunching a job, a second terminal) would both append metrics and both write checkpoints. The lock is
``flock`` on ``RUN/.lock``: the kernel releases it when the holder exits or dies (SIGKILL included), so a killed run
can always be resumed, and nothing is left to clean up by hand. The file holds the holder's pid, for the message.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import ConfigError
from .runtime import Dist

try:
    import fcntl
except ImportError:  # Windows: no flock; one writer per run directory is then the user's to ensure
    fcntl = None

LOCK_FILE = ".lock"


class RunLock:
    """An exclusive, non-blocking advisory lock on a run directory (created if missing)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`ConfigError` (exit 2) naming the directory and the holder's pid."""
        if fcntl is None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"{self.run_dir} is in use: another simclr process (pid {holder}) is training there. Wait for it to "
                "finish or stop it, then continue with --resume; or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_for_training(run_dir: str | os.PathLike, rt: Dist) -> RunLock | None:
    """Rank 0 takes the run directory's lock; under torchrun every rank learns whether it got it, so that no rank
    waits at a collective for a rank 0 that stopped. Returns the lock (rank 0) or None (other ranks)."""
    lock, error = None, None
    if rt.is_main:
        try:
            lock = RunLock(run_dir).acquire()
        except ConfigError as e:
            error = e
    if rt.distributed:
        ok = torch.tensor([0.0 if error else 1.0], device=rt.device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if ok.item() < 1 and error is None:
            error = ConfigError(f"{run_dir} is in use by another simclr process (rank 0 could not lock it)")
    if error is not None:
        raise error
    return lock
