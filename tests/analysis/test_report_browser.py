"""The HTML report in a real headless browser (Debian's chromium): its tables and images
render; a screenshot is taken."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from known import known_store_for

from ttc.analysis import load, report
from ttc.analysis.analysis import analyze

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Rendered in the page by a script run in the browser: what the DOM holds after layout.
PROBE = """
<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 100).length;
  const rows = [...document.querySelectorAll('table tbody tr')].length;
  const el = document.createElement('pre');
  el.id = 'probe';
  el.textContent = `PROBE images=${imgs.length} loaded=${ok} rows=${rows}`;
  document.body.prepend(el);
});
</script>
"""


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": "/tmp"},
    )


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_report_renders_in_chromium(tmp_path_factory: pytest.TempPathFactory) -> None:
    url, _, ids = known_store_for(tmp_path_factory)
    out = tmp_path_factory.mktemp("report")
    page = report.render(analyze(load(url), measure="score"), title="browser test")
    (out / "report.html").write_text(page)
    probed = out / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r"PROBE images=(\d+) loaded=(\d+) rows=(\d+)", dom.stdout)
    assert found is not None, dom.stdout[-2000:]
    line = found.group(0)
    counts = dict(zip(("images", "loaded", "rows"), found.groups(), strict=True))
    assert counts["images"] == "3" and counts["loaded"] == "3", line
    assert int(counts["rows"]) > 20, line
    for run_id in ids.values():
        assert run_id in dom.stdout
    shot = out / "report.png"
    done = _chromium(
        f"--screenshot={shot}", "--window-size=1280,2400", (out / "report.html").as_uri()
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("TTC_REPORT_SCREENSHOT")
    if keep:  # to look at it
        Path(keep).write_bytes(shot.read_bytes())
