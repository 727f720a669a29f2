"""An installed wheel carries the presets: ``--config quickstart`` works without the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    # Without PYTHONPATH: a source tree on it (with its .egg-info) makes pip think simclr is already installed.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(list(cmd), capture_output=True, text=True, env=env, **kw)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


@pytest.mark.slow  # builds a wheel and a virtual environment: about 15-35 s
def test_wheel_installs_presets(tmp_path):
    # Build from a copy, so the build's leftovers (build/, *.egg-info) stay out of the checkout.
    src = tmp_path / "src-copy"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src))
    wheel = next(wheels.glob("simclr-*.whl"))

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--system-site-packages", str(venv))
    py = venv / "bin" / "python"
    _run(str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel))
    # torch and the other dependencies come from the environment running the tests (appended after the new
    # venv's own site-packages, so the wheel's simclr wins), not from a second 5 GB install.
    site = Path(_run(str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (site / "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    code = ("import simclr, simclr.config as c; cfg = c.load_config('quickstart'); "
            "print(simclr.__file__); print(c.resolve_config_path('quickstart')); print(cfg.train.epochs)")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    lines = _run(str(py), "-c", code, cwd=outside).stdout.splitlines()
    assert lines[0].startswith(str(site)), lines  # the installed package, not the checkout
    assert Path(lines[1]).is_file() and Path(lines[1]).is_relative_to(site), lines
    assert int(lines[2]) >= 1
