"""End to end in a real browser: JupyterLab serves notebooks/05_explore.ipynb, headless Chromium
runs all its cells, and the widgets must render and answer clicks.

Needs Debian's `chromium` (/usr/bin/chromium, or $MMLIB_CHROMIUM) and the `playwright` Python
package (its bundled browsers are never downloaded); skips with the reason otherwise.
Screenshots go to runs/test-artifacts/browser/; MMLIB_UPDATE_SCREENSHOTS=1 also copies the
widgets' pictures to docs/. MMLIB_BROWSER_RUN_DIR explores a study folder at the preset
MMLIB_BROWSER_PRESET (e.g. the README's runs/quick at quick; else a fresh smoke joint model is made
in a temporary folder).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "05_explore.ipynb"
ARTIFACTS = REPO / "runs" / "test-artifacts" / "browser"
CHROMIUM = Path(os.environ.get("MMLIB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: The notebook trains a smoke model first when the run folder is empty: minutes on a busy CPU.
RUN_ALL_TIMEOUT_S = 600
WIDGETS = {"case_viewer": ".mmlib-case-viewer", "modality_explorer": ".mmlib-modality-explorer",
           "results_explorer": ".mmlib-results-explorer"}


def _requirements() -> str | None:
    """Why the test cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the 'playwright' Python package is not installed (pip install playwright)"
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MMLIB_CHROMIUM)"
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        return "JupyterLab is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {proc.returncode}; see its log in {ARTIFACTS}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {timeout_s} s")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and the kernel it started (its own process group, started by this test)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _prepare(workdir: Path, run_dir: Path, preset: str) -> Path:
    """A copy of the notebook without outputs whose `out_dir` and `preset` parameters are these."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if "parameters" in cell.metadata.get("tags", []):
            cell.source = re.sub(r"^out_dir = .*$", f"out_dir = {str(run_dir)!r}", cell.source, flags=re.M)
            cell.source = re.sub(r"^preset = .*$", f"preset = {preset!r}", cell.source, flags=re.M)
    nb.metadata.pop("widgets", None)
    path = workdir / NOTEBOOK.name
    nbformat.write(nb, path)
    return path


def _lab_settings(settings_dir: Path) -> None:
    """No news pop-up and no update check (nothing may cover the notebook or reach out), and
    every cell kept in the page (JupyterLab otherwise drops cells scrolled out of view)."""
    settings = {("apputils-extension", "notification"): {"fetchNews": "false", "checkForUpdates": False},
                ("notebook-extension", "tracker"): {"windowingMode": "none", "autoStartDefaultKernel": True}}
    for (package, plugin), values in settings.items():
        folder = settings_dir / "@jupyterlab" / package
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))


@pytest.mark.slow
def test_explore_notebook_runs_in_jupyterlab_and_widgets_answer_clicks(tmp_path):
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    workdir = tmp_path / "lab"
    workdir.mkdir()
    run_dir = Path(os.environ.get("MMLIB_BROWSER_RUN_DIR") or tmp_path / "run").resolve()
    _prepare(workdir, run_dir, os.environ.get("MMLIB_BROWSER_PRESET", "smoke"))
    _lab_settings(tmp_path / "settings")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"), MPLBACKEND="Agg")
    log = open(ARTIFACTS / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={workdir}",
         "--ServerApp.port_retries=0", "--ServerApp.terminals_enabled=False",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly", "--LabApp.news_url=None",
         *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_server(f"{base}/api/status?token={token}", proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
                page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=90_000)
                # The kernel is up when the status bar says so (a kernel dialog would stop us here).
                page.get_by_text(re.compile(r"\| Idle$")).first.wait_for(timeout=90_000)
                # Run > Run All Cells, as a reader would.
                page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
                page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
                page.wait_for_selector(WIDGETS["results_explorer"], state="attached",
                                       timeout=RUN_ALL_TIMEOUT_S * 1000)
                page.wait_for_function(
                    "() => ![...document.querySelectorAll('.jp-InputPrompt')]"
                    ".some(p => p.textContent.includes('*'))", timeout=120_000)
                page.screenshot(path=str(ARTIFACTS / "05_explore_ran.png"), full_page=True)
                errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                                      ":has-text('Traceback')")
                assert errors.count() == 0, errors.first.inner_text()
                for name, selector in WIDGETS.items():
                    assert page.locator(selector).count() == 1, f"{name} did not render"

                # The modality explorer: untick a modality, the Dice/latency label must change.
                explorer = page.locator(WIDGETS["modality_explorer"])
                status = explorer.locator(".mmlib-status")
                before = status.inner_text()
                assert "Dice" in before and "ms" in before
                explorer.locator(".widget-checkbox input[type=checkbox]").first.click()
                page.wait_for_function(
                    "([sel, old]) => { const e = document.querySelector(sel); "
                    "return e && e.innerText !== old; }",
                    arg=[f"{WIDGETS['modality_explorer']} .mmlib-status", before], timeout=120_000)
                after = status.inner_text()
                assert "Dice" in after and "ms" in after and after != before

                # The case viewer: another plane, another picture.
                viewer = page.locator(WIDGETS["case_viewer"])
                img = viewer.locator("img").first
                src = img.get_attribute("src")
                viewer.get_by_role("button", name="coronal").click()
                page.wait_for_function(
                    "([sel, old]) => document.querySelector(sel).getAttribute('src') !== old",
                    arg=[f"{WIDGETS['case_viewer']} img", src], timeout=60_000)

                page.set_viewport_size({"width": 1400, "height": 2400})  # whole widgets in view
                for name, selector in WIDGETS.items():
                    page.locator(selector).screenshot(path=str(ARTIFACTS / f"widget_{name}.png"))
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "failure.png"))  # what the page showed
                raise
            finally:
                browser.close()
    finally:
        _stop(proc)
        log.close()
    if os.environ.get("MMLIB_UPDATE_SCREENSHOTS") == "1":
        for name in WIDGETS:
            shutil.copy(ARTIFACTS / f"widget_{name}.png", REPO / "docs" / f"widget_{name}.png")
