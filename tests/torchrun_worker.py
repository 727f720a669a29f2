"""``simclr`` CLI for the torchrun tests, recording who decodes images and who evaluates.

Each event is a line ``<RANK> <event> <detail>`` appended to the file $SIMCLR_EVENTS; then ``simclr.cli.main`` runs
with this script's arguments.
"""

import os
import sys

import simclr.data.decode
import simclr.pipeline
import simclr.report
from simclr.cli import main


def _record(event: str, detail: str = "") -> None:
    with open(os.environ["SIMCLR_EVENTS"], "a") as f:
        f.write(f"{os.environ.get('RANK', '0')} {event} {detail}\n")


def _spy(module, name: str, describe):
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        _record(name, describe(*args, **kwargs))
        return real(*args, **kwargs)

    setattr(module, name, wrapper)


_spy(simclr.data.decode, "_decode_all", lambda paths, size, workers: f"{len(paths)} files {workers} workers")
_spy(simclr.pipeline, "_evaluate", lambda run_dir, *a, **k: "")
_spy(simclr.report, "write_report", lambda *a, **k: "")

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
