"""The report as a person sees it: headless Chromium at a desktop (1280 px) and a phone (412 px) width.

Skipped where no Chromium / Chrome is installed (CI does not install one); runs wherever a browser is found.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_report import make_full_run, make_supervised_run, png

from simclr import plots, report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
BROWSER = next((b for b in map(shutil.which, BROWSERS) if b), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium or Chrome on this machine (apt-get install chromium)")

# Measured after the page has loaded; the result is left in the DOM for --dump-dom.
MEASURE = """<script>
window.addEventListener('load', () => {
  const vw = document.documentElement.clientWidth;
  const th = [...document.querySelector('#results ~ .table-wrap table').querySelectorAll('thead th')];
  const cards = [...document.querySelectorAll('.gallery figure')].map(f => {
    const img = f.querySelector('img'), cap = f.querySelector('figcaption');
    return {card: f.getBoundingClientRect().height, content: img.getBoundingClientRect().height
            + cap.getBoundingClientRect().height};
  });
  const out = {vw, scroll: document.documentElement.scrollWidth,
               heads: th.map(h => ({text: h.textContent, right: h.getBoundingClientRect().right})), cards};
  parent.postMessage(JSON.stringify(out), '*');
});
</script>"""

# Headless Chromium keeps windows at least 500 px wide: the report is shown in an iframe of the width under test
# (its media queries follow the iframe), and the measurement comes back by postMessage.
HARNESS = """<!DOCTYPE html><html><body style="margin:0">
<iframe src="report.html" style="width:{width}px;height:900px;border:0;display:block"></iframe>
<script>window.addEventListener('message', e => {{
  const pre = document.createElement('pre'); pre.id = 'measure'; pre.textContent = e.data;
  document.body.appendChild(pre); }});</script></body></html>"""


def _image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(width + height)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


def _report(tmp_path: Path) -> Path:
    """A report with the real plot sizes: a tall augmentation preview beside the loss and kNN plots, neighbours."""
    simclr = make_full_run(tmp_path / "runs")
    plots.plot_loss([1, 2], [6.1, 5.9], simclr / "plots" / "loss.png")
    plots.plot_knn([2], [0.41], simclr / "plots" / "knn.png")
    _image(simclr / "plots" / "augment_preview.png", 420, 1100)
    baseline = make_supervised_run(tmp_path / "runs")
    for run in (simclr, baseline):
        rng = np.random.default_rng(0)
        plots.plot_neighbors(rng.integers(0, 255, (10, 3, 32, 32), dtype=np.uint8),
                             rng.integers(0, 255, (10, 8, 3, 32, 32), dtype=np.uint8),
                             run / "eval" / "neighbors" / "neighbors.png", match=rng.random((10, 8)) > 0.5,
                             query_names=[f"class {i}" for i in range(10)])
    png(baseline / "plots" / "loss.png")
    _, html = report.write_report([simclr, baseline], tmp_path / "report")
    page = html.read_text().replace("</body>", MEASURE + "</body>")
    html.write_text(page)
    return html


def _browse(html: Path, width: int, *extra: str) -> str:
    harness = html.with_name(f"harness_{width}.html")
    harness.write_text(HARNESS.format(width=width))
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
           "--allow-file-access-from-files", f"--window-size={max(width, 500)},900", "--virtual-time-budget=5000",
           *extra, harness.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("width", [1280, 412])
def test_report_in_a_real_browser(tmp_path, width):
    html = _report(tmp_path)
    dom = _browse(html, width, "--dump-dom")
    data = json.loads(dom.split('<pre id="measure">', 1)[1].split("</pre>", 1)[0].replace("&quot;", '"'))
    assert data["vw"] == width
    heads = [h["text"] for h in data["heads"]]
    assert heads[:4] == ["Method", "Protocol", "Test accuracy", "Test F1 (weighted)"]
    # method, protocol, test accuracy and F1 are on screen without scrolling the table sideways
    assert all(h["right"] <= width for h in data["heads"][:4]), data["heads"][:4]
    assert data["scroll"] <= width  # the page itself never scrolls sideways (only the table does)
    # no card is stretched to the height of its tallest neighbour (the augmentation preview)
    stretched = [c for c in data["cards"] if c["card"] - c["content"] > 40]
    assert not stretched, stretched
    shot = tmp_path / f"report_{width}.png"
    _browse(html, width, f"--screenshot={shot}")
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size[0] == max(width, 500)
