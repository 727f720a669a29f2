"""Errors the command line turns into a message and a documented exit code.

Exit codes (also printed by ``simclr --help``):
    0  success
    1  unexpected internal error (a bug: please report it with the traceback)
    2  invalid command line or configuration (names the key and the allowed values)
    3  data problem (missing path, empty folder, unreadable files under --strict, offline download)
    4  training diverged (non-finite loss); the last good checkpoint is kept
    5  checkpoint or weights file problem (missing, truncated, wrong architecture, config mismatch)
    130 interrupted (Ctrl-C); the last checkpoint is kept
"""

from __future__ import annotations

EXIT_CODES_HELP = """exit codes:
  0    success
  1    unexpected internal error (a bug: please report it with the traceback)
  2    invalid command line or configuration (the message names the key and the allowed values)
  3    data problem (missing path, empty folder, unreadable files with --strict, dataset not downloadable)
  4    training diverged (non-finite loss); the last good checkpoint is kept
  5    checkpoint or weights problem (missing, truncated, wrong architecture, resume with a changed config)
  130  interrupted (Ctrl-C); the last checkpoint is kept
"""


class SimCLRError(Exception):
    """Base class: an error with a message meant for the user and an exit code."""

    exit_code = 1


class ConfigError(SimCLRError, ValueError):
    """Invalid configuration value, unknown key or bad command-line flag."""

    exit_code = 2


class DataError(SimCLRError):
    """The data cannot be found, read or used as asked."""

    exit_code = 3


class NonFiniteLossError(SimCLRError):
    """The training loss became NaN or infinite."""

    exit_code = 4


class CheckpointError(SimCLRError):
    """A checkpoint or weights file is missing, corrupt or does not match the model/config."""

    exit_code = 5
