"""`mmlib docs`: the study as a static site. A reference run keeps its executed notebooks (pictures
shrunk); the site shows the README, each run's report and notebooks (or says it kept none), the
architecture and the API; every page exists, every link and picture inside it resolves, nothing loads
from the internet, and Chromium shows the home page and a notebook page without console errors.

The site test makes its reference run from a smoke study in $MMLIB_STUDY_OUT, the folder the notebooks
run in under nbval afterwards (they find its models and evaluations there instead of training again).
Screenshots go to runs/test-artifacts/site/.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from PIL import Image
from test_browser import CHROMIUM, CHROMIUM_ARGS
from test_reference import fake_study

from mmlib.cli import main
from mmlib.docs_site import SITE_MARK, build_site, notebook_page, readme_sections, run_it_yourself
from mmlib.errors import MMLibError
from mmlib.experiments.results.executed_notebooks import MAX_SIDE_PX, shrink_png
from mmlib.experiments.results.publish import save_reference
from mmlib.experiments.results.reference import reference_runs
from mmlib.experiments.run.runner import run_study
from mmlib.experiments.run.study import Study

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "runs" / "test-artifacts" / "site"
#: The notebooks the site test's study runs: figures (00, 02), tables (02), widgets' snapshots (05);
#: 01, 03, 04 and 99 take the same path to their pages and would double the test's time.
KEPT = ["00_databases", "02_joint_training", "05_explore"]


def png_bytes(size=(2400, 1200)) -> bytes:
    """A figure-like picture: white, a few coloured bars and a grey gradient."""
    img = Image.new("RGB", size, "white")
    for i, colour in enumerate(("#1f77b4", "#ff7f0e", "#2ca02c")):
        img.paste(colour, (100 + 300 * i, 200, 300 + 300 * i, 1000))
    img.paste(Image.linear_gradient("L").resize((600, 600)).convert("RGB"), (1500, 300))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def executed_notebook(png: bytes) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {"widgets": {"state": "x" * 1000}}, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "# 02 · One model\n\nWhy it matters."},
        {"cell_type": "code", "metadata": {}, "execution_count": 1, "source": "figure()", "outputs": [
            {"output_type": "display_data", "metadata": {},
             "data": {"image/png": base64.b64encode(png).decode(), "text/plain": "<Figure>"}},
            {"output_type": "display_data", "metadata": {},
             "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "abc"}, "text/plain": "VBox()"}}]}]}


def test_a_large_figure_is_scaled_to_the_page_and_gets_smaller():
    big = png_bytes()
    small = shrink_png(big)
    with Image.open(io.BytesIO(small)) as img:
        assert max(img.size) == MAX_SIDE_PX and img.size[0] == 2 * img.size[1]
    assert len(small) < len(big) / 2


def test_a_picture_that_cannot_shrink_is_kept_as_it_is():
    out = io.BytesIO()
    Image.new("L", (4, 4)).save(out, format="PNG", optimize=True)
    assert shrink_png(out.getvalue()) == out.getvalue()


def test_a_reference_run_keeps_the_finished_notebooks_with_their_outputs(tmp_path):
    study = fake_study(tmp_path, 0.05)
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "02_joint_training.ipynb").write_text(json.dumps(executed_notebook(png_bytes())))
    (tmp_path / "notebooks" / "02_joint_training.done.json").write_text('{"seconds": 60}')
    (tmp_path / "notebooks" / "03_new_modality_sets.ipynb").write_text("{}")  # failed: no .done.json
    folder = save_reference(study, "smoke-cpu", "4 min", folder=tmp_path / "ref")
    assert [p.name for p in (folder / "notebooks").iterdir()] == ["02_joint_training.ipynb"]
    kept = json.loads((folder / "notebooks" / "02_joint_training.ipynb").read_text())
    png = base64.b64decode(kept["cells"][1]["outputs"][0]["data"]["image/png"])
    with Image.open(io.BytesIO(png)) as img:
        assert max(img.size) == MAX_SIDE_PX
    assert "widgets" not in kept["metadata"] and kept["cells"][0]["source"].startswith("# 02")


def test_a_notebook_page_names_its_reference_run_under_the_title_and_replaces_live_widgets(tmp_path):
    save_reference(fake_study(tmp_path, 0.05), "smoke-cpu", "4 min", folder=tmp_path / "ref")
    run = reference_runs(tmp_path / "ref")["smoke-cpu"]
    page = notebook_page(executed_notebook(b"png"), run, "02_joint_training")
    title, _, rest = page["cells"][0]["source"].partition("\n")
    assert title == "# 02 · One model"
    assert "reference run **smoke-cpu**" in rest and "preset `quick`" in rest and "wall time 4 min" in rest
    assert rest.index("reference run") < rest.index("Why it matters")
    widget = page["cells"][1]["outputs"][1]["data"]
    assert list(widget) == ["text/markdown"] and "JupyterLab" in widget["text/markdown"]


def test_run_it_yourself_is_the_readmes_own_sections():
    readme = (REPO / "README.md").read_text()
    page = run_it_yourself(readme)
    for command in ("bash scripts/setup.sh && .venv/bin/mmlib study --preset quick --out runs/quick",
                    "bash scripts/setup.sh && .venv/bin/python -m pytest -q",
                    "torchrun --standalone --nproc-per-node 4", "--executor slurm", "Presets (`mmlib/presets.yaml`)"):
        assert command in page, command
    assert "## Scaling out" in page and "## What the main job measured" not in page
    with pytest.raises(MMLibError, match="no section starting '## Commands'"):
        run_it_yourself(readme.replace("## Commands", "## Orders"))


def test_a_heading_inside_a_code_block_starts_no_section():
    sections = readme_sections("# t\n## A\ntext\n```\n## not a heading\n```\n## B\nmore\n")
    assert list(sections) == ["A", "B"] and "## not a heading" in sections["A"]


def test_mmlib_docs_refuses_to_replace_a_folder_that_is_not_a_site(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["docs", "--out", str(tmp_path)]) == 2
    assert "not an earlier mmlib site" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep me"


class _Links(HTMLParser):
    """Every URL a page names: (tag, attributes) of each element with an href or src."""

    def __init__(self):
        super().__init__()
        self.elements = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("href") or attrs.get("src"):
            self.elements.append((tag, attrs))


def elements(page: Path) -> list[tuple[str, dict]]:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.elements


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A smoke study (the notebooks' nbval folder), kept as reference run smoke-test beside a run that
    kept no notebooks, and the site built from both; (site folder, build seconds, reference folder)."""
    study_dir = Path(os.environ["MMLIB_STUDY_OUT"])  # set by the repository's conftest.py
    run_study(study_dir, "smoke", notebooks=KEPT, progress=False)
    ref = tmp_path_factory.mktemp("reference")
    save_reference(Study.open(study_dir), "smoke-test", "4 min", folder=ref)
    save_reference(fake_study(tmp_path_factory.mktemp("bare"), 0.05), "bare", "1 min", folder=ref)
    out = tmp_path_factory.mktemp("site") / "site"
    t0 = time.perf_counter()
    build_site(out, ref)
    return out, time.perf_counter() - t0, ref


@pytest.mark.slow
def test_the_site_has_every_page_and_notebook_pages_show_their_figures(site):
    out, seconds, ref = site
    expected = ["index", "run-it-yourself", "architecture", "results-schema", "reference/bare/report",
                "reference/bare/notebooks", "reference/smoke-test/report",
                *(f"reference/smoke-test/{name}" for name in KEPT),
                *(f"api/{p}" for p in ("data", "synthetic-twins", "models", "engine", "experiments",
                                       "experiments-plan", "experiments-results", "experiments-run", "widgets",
                                       "top-level"))]
    assert [p for p in expected if not (out / f"{p}.html").is_file()] == []
    assert "kept no executed notebooks" in (out / "reference" / "bare" / "notebooks.html").read_text()
    assert set(KEPT) <= {p.stem for p in (ref / "smoke-test" / "notebooks").iterdir()}  # a reused folder may hold more
    for name in KEPT:
        kept = json.loads((ref / "smoke-test" / "notebooks" / f"{name}.ipynb").read_text())
        pictures = sum("image/png" in o.get("data", {}) for c in kept["cells"] for o in c.get("outputs", []))
        html = (out / "reference" / "smoke-test" / f"{name}.html").read_text()
        assert html.count('src="data:image/png;base64,') >= pictures, name
        assert "reference run <strong>smoke-test</strong>" in html and "preset <code>smoke</code>" in html, name
    assert (out / "reference" / "smoke-test" / "02_joint_training.html").read_text().count("data:image/png") > 0
    assert "MultiUNet" in (out / "api" / "models.html").read_text()
    assert (out / SITE_MARK).is_file()
    # mkdocs-jupyter's 0.5 MB of notebook CSS is one shared file, not a copy in every notebook page.
    assert len(list((out / "assets" / "stylesheets").glob("notebook-*.css"))) == 1
    assert all((out / "reference" / "smoke-test" / f"{n}.html").stat().st_size < 400_000 for n in KEPT)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"site built in {seconds:.0f} s, {size / 2**20:.1f} MiB")


@pytest.mark.slow
def test_every_internal_link_and_picture_resolves_and_nothing_loads_from_the_internet(site):
    out = site[0]
    broken, remote = [], []
    # 404.html is what a web server sends for any missing path, so its links start at the site's root.
    for page in (p for p in out.rglob("*.html") if p.name != "404.html"):
        for tag, attrs in elements(page):
            url = attrs.get("src") or attrs.get("href")
            parts = urlsplit(url)
            if parts.scheme in ("http", "https") or url.startswith("//"):
                if tag != "a":  # a link the reader may follow is fine; a script, style or picture loads
                    remote.append((str(page.relative_to(out)), tag, url))
                continue
            if parts.scheme or not parts.path:  # data:, mailto:, an anchor on the same page
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            if not (target / "index.html" if target.is_dir() else target).is_file():
                broken.append((str(page.relative_to(out)), url))
    assert broken == []
    assert remote == []


@pytest.mark.slow
def test_chromium_shows_the_home_page_and_a_notebook_page_without_console_errors(site):
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MMLIB_CHROMIUM)")
    playwright = pytest.importorskip("playwright.sync_api", reason="the 'playwright' Python package is not installed")
    out = site[0]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        problems = []
        page.on("console", lambda m: m.type == "error" and problems.append(f"console error: {m.text}"))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"failed to load {r.url}"))
        page.on("request", lambda r: r.url.startswith("http") and problems.append(f"network request {r.url}"))
        try:
            for name, path, must_show in (("home", "index.html", "h1"),
                                          ("notebook_02", "reference/smoke-test/02_joint_training.html",
                                           ".jupyter-wrapper img")):
                page.goto((out / path).as_uri())
                page.wait_for_load_state("load")
                page.wait_for_timeout(500)  # the theme's scripts run after load
                assert page.locator(must_show).first.is_visible(), name
                assert page.locator(".md-nav").count() > 0, f"{name}: the theme's navigation did not render"
                page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)
        finally:
            browser.close()
    assert problems == []
