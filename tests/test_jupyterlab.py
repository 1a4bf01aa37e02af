"""End to end in a real JupyterLab and a real headless browser (Debian's Chromium through
Playwright): run the coverage-explorer notebook, check that Plotly figures and widgets render,
and that moving the top_k slider changes the figure and the numbers.

It needs no browser download: Playwright drives the system Chromium that scripts/setup.sh
installs. Where Playwright or Chromium is missing the test is skipped and the end of the
test report says "JupyterLab browser test: NOT RUN (why)"; under CI (``CI=true``, whose
set-up installs both) it fails instead.
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SMALL = "seq_len = 2048\nnum_heads = 4\nnum_kv_heads = 2\nhead_dim = 32\nblock_size = 64\ntop_k = 4\nrows = 128"


class _NotRunReport:
    """A line at the end of the terminal report, so a skipped browser test is not missed."""

    def __init__(self, why: str):
        self.why = why

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.write_line(f"JupyterLab browser test: NOT RUN ({self.why})", yellow=True, bold=True)


def browser_tools_or_skip(config, chromium):
    """Playwright's sync API and ``chromium`` to drive, or a skip that the end of the report
    names (a failure under CI, whose set-up installs both)."""
    why = None
    try:
        import playwright.sync_api as sync_api
    except ImportError:
        why = "no Playwright: pip install -e '.[dev]'"
    if chromium is None:
        why = "no Chromium: bash scripts/setup.sh, or apt-get install chromium"
    if why is None:
        return sync_api, chromium
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI set-up installs Playwright and Chromium, yet: {why}")
    config.pluginmanager.register(_NotRunReport(why), "jupyterlab-browser-not-run")
    pytest.skip(why)


@pytest.fixture()
def browser_tools(request):
    return browser_tools_or_skip(request.config, CHROMIUM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def lab(tmp_path):
    nb = nbformat.read(ROOT / "notebooks" / "02_coverage_explorer.ipynb", as_version=4)
    where = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(where + 1, nbformat.v4.new_code_cell(SMALL))
    nbformat.write(nb, tmp_path / "explorer.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, HOME=str(tmp_path), JUPYTER_CONFIG_DIR=str(tmp_path / ".jupyter"))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip", "127.0.0.1", "--port", str(port),
         "--allow-root", f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0",
         f"--ServerApp.root_dir={tmp_path}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("JupyterLab did not start") from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/lab/tree/explorer.ipynb?token={token}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_explorer_notebook_renders_and_responds_in_a_real_browser(browser_tools, lab):
    sync_api, chromium = browser_tools
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(lab)
        page.wait_for_selector(".jp-StatusBar-Item:has-text('| Idle')", timeout=90_000)
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        page.wait_for_function(
            """() => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
                       return p.length > 0 && p.every(e => /\\[\\d+\\]/.test(e.textContent)); }""",
            timeout=240_000)
        assert page.locator(".jp-OutputArea-output[data-mime-type*='error']").count() == 0
        assert page.locator(".jp-OutputArea .js-plotly-plot .main-svg").count() >= 3  # static figures
        summary = page.locator(".widget-html-content:has-text('recall mean')")
        summary.wait_for(timeout=60_000)  # the explorer's widgets rendered
        heat = page.locator(".jp-OutputArea .widget-box .js-plotly-plot").first
        heat.wait_for(timeout=60_000)  # its FigureWidgets rendered
        before_text, before_svg = summary.inner_text(), heat.inner_html()
        slider = page.locator(".widget-slider:has(.widget-label:text-is('top_k')) .noUi-handle")
        readout = page.locator(".widget-slider:has(.widget-label:text-is('top_k')) .widget-readout")
        start = readout.inner_text()
        slider.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function("([el, old]) => el.textContent !== old",
                               arg=[summary.element_handle(), before_text], timeout=30_000)
        assert readout.inner_text() == str(int(start) + 1)
        assert f"top_k {int(start) + 1}" in summary.inner_text()
        page.wait_for_timeout(500)
        assert heat.inner_html() != before_svg  # the figure was redrawn with the new selection
        browser.close()


def test_a_browser_test_that_cannot_run_is_named_at_the_end_of_the_report(tmp_path):
    """This file's browser test on a PATH without Chromium: skipped, with the NOT RUN line."""
    env = dict(os.environ, PATH=str(tmp_path), CI="")
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--noconftest", "-q",
                           "-k", "real_browser", __file__], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "1 skipped" in done.stdout, done.stdout
    assert "JupyterLab browser test: NOT RUN (no Chromium" in done.stdout, done.stdout


def test_under_ci_a_missing_browser_fails_the_browser_test(monkeypatch, request):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI set-up installs Playwright and Chromium, yet: no Chromium"):
        browser_tools_or_skip(request.config, None)
