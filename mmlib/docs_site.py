"""`mmlib docs`: the study as a static site people read, built offline from the shipped reference runs
without training anything (mkdocs-material, mkdocs-jupyter for the notebooks, mkdocstrings for the API).

Pages: the README as home; "Run it yourself", gathered from the README's own sections (one source);
docs/ARCHITECTURE.md and docs/RESULTS_SCHEMA.md; per reference run its report.md and its executed
notebooks (a line on top naming the run: preset, device, commit, wall time), or one page saying the run
kept none; the API of every public module from its docstrings. Nothing on a page loads from the
internet: no web fonts, no scripts from a CDN (removed where nbconvert's template adds them).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from mmlib.errors import MMLibError
from mmlib.experiments.results.reference import REFERENCE_DIR, ReferenceRun, reference_runs

REPO = Path(__file__).resolve().parents[1]
#: README sections that make "Run it yourself", in this order.
RUN_SECTIONS = ("Set up and run", "Commands", "Scaling out", "Using the real databases")
#: Repository paths the README names, and the site page that shows them.
PAGE_OF_PATH = {"docs/ARCHITECTURE.md": "architecture.md", "docs/RESULTS_SCHEMA.md": "results-schema.md"}
#: The API pages: title -> the package whose modules it documents (without its subpackages).
API_PACKAGES = {"data": "mmlib.data", "synthetic twins": "mmlib.data.synth", "models": "mmlib.models",
                "engine": "mmlib.engine", "experiments": "mmlib.experiments",
                "experiments: plan": "mmlib.experiments.plan", "experiments: results": "mmlib.experiments.results",
                "experiments: run": "mmlib.experiments.run", "widgets": "mmlib.widgets", "top level": "mmlib"}
#: A file in the site's folder saying a build may replace the folder.
SITE_MARK = ".mmlib-site"
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_WIDGET_NOTE = ("*An interactive widget: it answers in JupyterLab (run the notebook there); the static "
                "pictures below show it as it opens.*")
#: Scripts nbconvert's template adds that would load from a CDN (MathJax, mermaid; no page uses them), and
#: MathJax's empty `src=""` where no CDN is given.
_REMOTE_SCRIPT = re.compile(r"<script\b[^>]*\bsrc=[\"'](?:https?://[^\"']*)?[\"'][^>]*>\s*</script>|"
                            r"<script\b[^>]*>(?:(?!</script>).)*?import\(\"https?://(?:(?!</script>).)*</script>",
                            re.S | re.I)

_INLINE_STYLE = re.compile(r'<style type="text/css">(.*?)</style>', re.S)
_SHARED_STYLE_CHARS = 20_000


def build_site(out: Path, reference_dir: Path = REFERENCE_DIR) -> Path:
    """Write the site into `out` (replaced) from the reference runs in `reference_dir`; return the path
    of its home page. Needs the docs extra (pip install 'mmlib[docs]') and the repository's README."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        raise MMLibError("`mmlib docs` needs the docs extra: pip install -e '.[docs]' (scripts/setup.sh installs it)")
    for doc in ("README.md", "docs/ARCHITECTURE.md", "docs/RESULTS_SCHEMA.md"):
        if not (REPO / doc).is_file():
            raise MMLibError("the site is built from a checkout of the repository; not found", REPO / doc)
    out = Path(out).resolve()
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_MARK).is_file():
        raise MMLibError("the site's folder holds files that are not an earlier mmlib site; give an empty or new "
                         "folder (the build replaces what is there)", out)
    runs = reference_runs(reference_dir)
    with tempfile.TemporaryDirectory(prefix="mmlib-docs-") as tmp:
        src = Path(tmp) / "docs"
        nav = write_pages(src, runs)
        config = Path(tmp) / "mkdocs.yml"
        config.write_text(yaml.safe_dump(mkdocs_config(src, out, nav), sort_keys=False, allow_unicode=True))
        done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--clean", "--quiet", "-f", str(config)],
                              capture_output=True, text=True, cwd=tmp, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
        if done.returncode != 0:
            raise MMLibError(f"mkdocs build failed: {(done.stderr or done.stdout).strip()[-2000:]}", config)
    (out / SITE_MARK).write_text("made by `mmlib docs`; the next build replaces this folder\n")
    for page in out.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        kept = _shared_styles(_REMOTE_SCRIPT.sub("", html), page, out)
        if kept != html:
            page.write_text(kept, encoding="utf-8")
    return out / "index.html"


def _shared_styles(html: str, page: Path, out: Path) -> str:
    """The page with each large inline stylesheet moved to one file in assets/ that every page links:
    mkdocs-jupyter inlines the same 0.5 MB of notebook CSS (data: URLs only) in every notebook page."""

    def link(match: re.Match) -> str:
        css = match.group(1)
        if len(css) < _SHARED_STYLE_CHARS:
            return match.group(0)
        target = out / "assets" / "stylesheets" / f"notebook-{hashlib.sha1(css.encode()).hexdigest()[:12]}.css"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(css, encoding="utf-8")
        return f'<link rel="stylesheet" href="{Path(os.path.relpath(target, page.parent)).as_posix()}">'

    return _INLINE_STYLE.sub(link, html)


def write_pages(src: Path, runs: dict[str, ReferenceRun]) -> list:
    """Write every page's source under `src`; return mkdocs' nav."""
    src.mkdir(parents=True)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    (src / "index.md").write_text(_link_paths(readme), encoding="utf-8")
    (src / "run-it-yourself.md").write_text(run_it_yourself(readme), encoding="utf-8")
    for path, page in PAGE_OF_PATH.items():
        (src / page).write_text(_link_paths((REPO / path).read_text(encoding="utf-8")), encoding="utf-8")
    nav = [{"Home": "index.md"}, {"Run it yourself": "run-it-yourself.md"},
           {"Architecture": "architecture.md"}, {"Results schema": "results-schema.md"}]
    reference_nav = [{name: run_pages(src / "reference" / name, run)} for name, run in runs.items()]
    if reference_nav:
        nav.append({"Reference runs": reference_nav})
    nav.append({"API reference": api_pages(src / "api")})
    return nav


def run_it_yourself(readme: str) -> str:
    """The page of how to install, run, scale out and use the real data: the README's sections."""
    sections = readme_sections(readme)
    lines = ["# Run it yourself", "",
             "The README's sections on installing and running mmlib, gathered on one page.", ""]
    for start in RUN_SECTIONS:
        title = next((t for t in sections if t.startswith(start)), None)
        if title is None:
            raise MMLibError(f"README.md has no section starting '## {start}' (the site's Run it yourself page)",
                             REPO / "README.md")
        lines += [f"## {title}", "", sections[title].strip(), ""]
    return _link_paths("\n".join(lines))


def readme_sections(text: str) -> dict[str, str]:
    """{title: body} of the text's level-2 sections (a '## ' inside a code block does not start one)."""
    sections, title, body, fenced = {}, None, [], False
    for line in text.splitlines():
        fenced ^= line.lstrip().startswith("```")
        if line.startswith("## ") and not fenced:
            if title is not None:
                sections[title] = "\n".join(body)
            title, body = line[3:].strip(), []
        elif title is not None:
            body.append(line)
    if title is not None:
        sections[title] = "\n".join(body)
    return sections


def run_pages(folder: Path, run: ReferenceRun) -> list:
    """One reference run's pages (its report, then its notebooks or the page saying it kept none)."""
    folder.mkdir(parents=True)
    shutil.copy(run.folder / "report.md", folder / "report.md")
    pages = [{"Report": f"reference/{run.name}/report.md"}]
    notebooks = sorted((run.folder / "notebooks").glob("*.ipynb"))
    for path in notebooks:
        nb = json.loads(path.read_text(encoding="utf-8"))
        (folder / path.name).write_text(json.dumps(notebook_page(nb, run, path.stem)), encoding="utf-8")
        pages.append({path.stem.replace("_", " "): f"reference/{run.name}/{path.name}"})
    if not notebooks:
        (folder / "notebooks.md").write_text(
            f"# Notebooks of reference run {run.name}\n\n"
            f"This reference run kept no executed notebooks: it was saved before `mmlib reference` kept a "
            f"study's notebooks, or from a study that ran none. "
            f"Its tables and findings are in its [report](report.md). To see the notebooks with their outputs, "
            f"run the study ([Run it yourself](../../run-it-yourself.md)); a run saved with `mmlib reference` "
            f"now keeps them.\n\n*{run.label()}.*\n", encoding="utf-8")
        pages.append({"Notebooks (none kept)": f"reference/{run.name}/notebooks.md"})
    return pages


def notebook_page(nb: dict, run: ReferenceRun, name: str) -> dict:
    """A copy of an executed notebook for its page: the reference run named under its title, and
    each live widget's output replaced by a note (its static snapshot follows it in the notebook)."""
    nb = copy.deepcopy(nb)
    p = run.provenance
    seconds = p.get("notebook_seconds", {}).get(name)
    took = f" · this notebook {seconds / 60:.1f} min" if seconds is not None else ""
    line = (f"> Executed in reference run **{run.name}**: preset `{p['preset']}` · {p['device']} · "
            f"commit `{str(p['commit'])[:10]}` · wall time {p['wall_time']}{took} · {p['date']}. "
            f"[Its report](report.html).")  # a notebook's markdown is rendered as it is: the page's own name
    cells = nb.setdefault("cells", [])
    first = cells[0] if cells and cells[0].get("cell_type") == "markdown" else None
    text = "".join(first["source"]) if first else ""
    if first and text.startswith("# "):
        title, _, rest = text.partition("\n")
        first["source"] = f"{title}\n\n{line}\n{rest}"
    else:
        cells.insert(0, {"cell_type": "markdown", "metadata": {}, "source": line})
    for cell in cells:
        for output in cell.get("outputs", []):
            if _WIDGET_VIEW in output.get("data", {}):
                output["data"] = {"text/markdown": _WIDGET_NOTE}
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def api_pages(folder: Path) -> list:
    """One page per package: every public module in it, from its docstrings (read, not imported)."""
    folder.mkdir(parents=True)
    pages = []
    for title, package in API_PACKAGES.items():
        path = REPO.joinpath(*package.split("."))
        modules = [f"{package}.{p.stem}" for p in sorted(path.glob("*.py"))
                   if not p.stem.startswith("_") and not (p.stem == "cli" and package == "mmlib")]
        slug = re.sub(r"[^a-z0-9]+", "-", title).strip("-")
        body = [f"# API: {title} (`{package}`)", ""]
        if package != "mmlib":  # the package's docstring only: what it re-exports is shown in its module
            body.append(f"::: {package}\n    options:\n      members: false")
        body += [f"::: {m}" for m in modules]
        (folder / f"{slug}.md").write_text("\n\n".join(body) + "\n", encoding="utf-8")
        pages.append({title: f"api/{slug}.md"})
    return pages


def mkdocs_config(src: Path, out: Path, nav: list) -> dict:
    """mkdocs.yml as data: the material theme without web fonts, a site that works from the file
    system (material's offline plugin), notebooks shown as executed, docstrings read statically."""
    return {
        "site_name": "mmlib",
        "site_description": "Joint learning from brain MRI databases with different diseases and modalities "
                            "(Xu et al., MIDL 2024), as a study package",
        "docs_dir": str(src), "site_dir": str(out), "use_directory_urls": False,
        "theme": {"name": "material", "font": False, "features": ["navigation.sections", "content.code.copy"]},
        "plugins": ["search", "offline",
                    {"mkdocs-jupyter": {"include": ["*.ipynb"], "execute": False, "include_source": False,
                                        "include_requirejs": False, "cache": False,
                                        # papermill's copy of the parameters: the line on top names the preset
                                        "remove_tag_config": {"remove_cell_tags": ["injected-parameters"]}}},
                    {"mkdocstrings": {"default_handler": "python", "handlers": {"python": {
                        "paths": [str(REPO)], "options": {
                            "show_source": False, "members_order": "source", "filters": ["!^_"],
                            "show_root_heading": True, "heading_level": 2, "show_signature_annotations": True,
                            "docstring_style": None}}}}}],
        "markdown_extensions": ["tables", "admonition", "attr_list", {"toc": {"permalink": True}}],
        "nav": nav,
    }


def _link_paths(text: str) -> str:
    """Backquoted repository paths that the site shows (`docs/ARCHITECTURE.md`) made links to their page."""
    for path, page in PAGE_OF_PATH.items():
        text = re.sub(rf"(?<!\[)`{re.escape(path)}`", f"[`{path}`]({page})", text)
    return text


__all__ = ["build_site", "write_pages", "run_it_yourself", "readme_sections", "run_pages", "notebook_page",
           "api_pages", "mkdocs_config"]
