"""Rendering and writing the report: ``report.md`` and a self-contained ``report.html`` from the templates.

The layouts are Jinja2 templates shipped in ``templates/`` (``report.md``, ``report.html`` and its ``report.css``);
HTML is autoescaped by MarkupSafe, and Markdown text goes through the :func:`md` filter, so text from run files
(method names, commands, warnings) can never become markup.
"""

from __future__ import annotations

import base64
import html
import os
import re
import shutil
from pathlib import Path

import jinja2

from ..rundir import atomic_write
from .collect import collect_run
from .document import build_report


def md(text: object) -> str:
    """Escape text for Markdown table cells and paragraphs (no raw HTML, no table breaks)."""
    text = html.escape(str(text), quote=False)
    return text.replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def md_code(text: str) -> str:
    """Inline code on one line, fenced with more backticks than the text holds."""
    text = text.replace("\n", " ")
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if "`" in text else f"`{text}`"


def md_alt(text: str) -> str:
    """An image's alt text: :func:`md`, with brackets made round so they cannot close it."""
    return md(text).replace("[", "(").replace("]", ")")


def data_uri(path: str | os.PathLike) -> str:
    """A PNG file as a ``data:`` URI, so the page embeds it and loads nothing."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("simclr.report", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),  # report.html: yes; report.md and report.css: no
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the test suite instead of showing nothing
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(md=md, md_code=md_code, md_alt=md_alt, data_uri=data_uri)
    return env


def write_report(run_dirs: list[Path], out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.md`` (images copied to ``out_dir/images/``) and a self-contained ``report.html``.

    The results table has one row per (run, evaluation protocol), in the order of ``run_dirs`` and
    then knn, linear, mlp, finetune; a run without evaluation gets one row. Each run then has a
    section with its settings, its pretraining plots and, per protocol, the metrics and plots.
    ``report.html`` embeds its images (base64), has its CSS inline and loads nothing from the network, so it can
    be mailed or opened on a phone.

    Args:
        run_dirs: run directories (complete or partial).
        out_dir: folder for the report; created if needed.

    Returns:
        ``(report.md path, report.html path)``.

    Raises:
        DataError: a run directory does not exist.
    """
    out_dir = Path(out_dir)
    runs = [collect_run(d) for d in run_dirs]
    images_dir = out_dir / "images"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(runs, images_dir)

    # Copy every image the Markdown refers to; the HTML embeds the same files.
    for fig in report.figures():
        dest = images_dir / fig.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if Path(fig.source).resolve() != dest.resolve():
            shutil.copyfile(fig.source, dest)
    env = _environment()
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    text = env.get_template("report.md").render(report=report, images=images_dir.relative_to(out_dir).as_posix())
    text = text.rstrip("\n") + "\n"  # the file ends with its last line, not with the last block's blank line
    page = env.get_template("report.html").render(report=report)
    atomic_write(md_path, lambda f: f.write(text.encode("utf-8")))
    atomic_write(html_path, lambda f: f.write(page.encode("utf-8")))
    return md_path, html_path
