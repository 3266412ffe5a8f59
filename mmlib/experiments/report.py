"""One Markdown report of a study run, built from its saved results: how it departs from the
paper's protocol, how long each notebook took, every table beside the paper's (the deviations
under each), and every clause of F1-F6 with its effect, 95% interval and verdict."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from mmlib.experiments.findings import evaluate_findings, findings_markdown
from mmlib.experiments.protocol import deviation_line, deviations
from mmlib.experiments.tables import TABLES
from mmlib.presets import Preset


def markdown_table(df: pd.DataFrame, decimals: int = 3) -> str:
    """A pipe table of `df` (index as leading columns); numbers rounded, NaN as '–'."""
    flat = df.reset_index()
    heads = [" ".join(str(p) for p in c if str(p)) if isinstance(c, tuple) else str(c) for c in flat.columns]

    def cell(v, head):
        if isinstance(v, float):
            return "–" if pd.isna(v) else str(int(v)) if head == "seeds" else f"{v:.{decimals}f}"
        return "–" if v is None else str(v).replace("|", "/")

    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(cell(v, h) for v, h in zip(row, heads)) + " |"
              for row in flat.itertuples(index=False)]
    return "\n".join(lines)


def deviations_table(preset: Preset) -> str:
    """The preset's protocol beside the paper's, one aspect a row."""
    rows = pd.DataFrame([{"aspect": d.aspect, "paper": d.paper, f"ours ({preset.name})": d.ours,
                          "differs": "yes" if d.differs else ""} for d in deviations(preset)]).set_index("aspect")
    return markdown_table(rows)


def table_sections(results: pd.DataFrame, preset: Preset) -> list[str]:
    """Each registered table beside the paper's, with the preset's deviations under it."""
    lines = []
    for spec in TABLES.values():
        lines += [f"## {spec.name}: {spec.caption}", ""]
        try:
            ours = spec.build(results) if not results.empty else pd.DataFrame()
        except (KeyError, ValueError) as exc:
            ours, why = pd.DataFrame(), f"{type(exc).__name__}: {exc}"
        else:
            why = "no results for it in this run"
        numbers = ours[[c for c in ours.columns if (c[0] if isinstance(c, tuple) else c) != "seeds"]]
        if ours.empty or not numbers.notna().to_numpy().any():
            lines += [f"*Not built: {why}.*", ""]
            continue
        lines += ["Our row first, the paper's below it (`paper`).", "",
                  markdown_table(spec.side_by_side(results)), "", f"*{deviation_line(preset)}*", ""]
    return lines


def study_report(out_dir: str | Path, preset: Preset, results: pd.DataFrame, title: str | None = None,
                 provenance: dict | None = None) -> str:
    """The report's Markdown for the results of a study folder (tables it cannot fill say so)."""
    out_dir = Path(out_dir)
    lines = [f"# {title or f'Study report: preset {preset.name}'}", ""]
    if provenance:
        lines += [" · ".join(f"{k}: {v}" for k, v in provenance.items()), ""]
    lines += ["## Protocol: ours beside the paper's", "", deviations_table(preset), ""]
    timings = out_dir / "timings.json"
    if timings.is_file():
        secs = json.loads(timings.read_text())
        lines += ["| notebook | minutes |", "|---|---|"]
        lines += [f"| {name} | {s / 60:.1f} |" for name, s in secs.items()]
        lines += [f"| total | {sum(secs.values()) / 60:.1f} |", ""]
    lines += table_sections(results, preset)
    lines += ["## Findings F1–F6, clause by clause", "",
              "Effects with 95% bootstrap intervals over test cases (and seeds); a clause holds when the whole "
              "interval lies on its claimed side, a finding when every clause holds.", "",
              findings_markdown(evaluate_findings(results))]
    return "\n".join(lines)


def write_report(study, provenance: dict | None = None) -> Path:
    """Write <study folder>/report.md atomically from the study's current results."""
    path = Path(study.out_dir) / "report.md"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(study_report(study.out_dir, study.preset, study.results(), provenance=provenance))
    os.replace(tmp, path)
    return path
