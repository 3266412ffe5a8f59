"""One Markdown report of a study run, built from its saved results: what the preset cut, how long
each notebook took, every table beside the paper's, and the findings F1-F6."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from mmlib.experiments import tables as T
from mmlib.experiments.findings import evaluate_findings, findings_markdown
from mmlib.experiments.paper import paper_table
from mmlib.experiments.study import describe_cuts, load_results
from mmlib.presets import load_preset

#: Table number -> (title, builder from tidy results).
TABLES = {2: ("Table 2: single-database models, all modalities and (mean over missing-modality "
              "combinations)", T.table2),
          3: ("Table 3: Dice per training database, single-database (SD) vs joint (MD) models", T.table3),
          4: ("Table 4: new modality sets (ISLES, Tumor 2)", T.table4),
          5: ("Table 5: leave-one-database-out, 0-shot Dice on the held-out database", T.table5),
          6: ("Table 6: new pathology: scratch, fine-tuned and progressive models", T.table6)}


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


def study_report(out_dir: str | Path, preset: str) -> str:
    """The report's Markdown for the study in `out_dir` (tables the results cannot fill are said so)."""
    out_dir = Path(out_dir)
    results = load_results(out_dir)
    lines = [f"# Study report: preset {preset}", "", describe_cuts(load_preset(preset)), ""]
    timings = out_dir / "timings.json"
    if timings.is_file():
        secs = json.loads(timings.read_text())
        lines += ["| notebook | minutes |", "|---|---|"]
        lines += [f"| {name} | {s / 60:.1f} |" for name, s in secs.items()]
        lines += [f"| total | {sum(secs.values()) / 60:.1f} |", ""]
    for number, (title, build) in TABLES.items():
        lines += [f"## {title}", ""]
        try:
            ours = build(results) if not results.empty else pd.DataFrame()
        except (KeyError, ValueError) as exc:
            ours, why = pd.DataFrame(), f"{type(exc).__name__}: {exc}"
        else:
            why = "no results for it in this run"
        numbers = ours[[c for c in ours.columns if (c[0] if isinstance(c, tuple) else c) != "seeds"]]
        if ours.empty or not numbers.notna().to_numpy().any():
            lines += [f"*Not built: {why}.*", ""]
            continue
        lines += ["Our row first, the paper's below it (`paper`).", "",
                  markdown_table(T.side_by_side(ours, paper_table(number))), ""]
    lines += ["## Findings F1–F6", "", findings_markdown(evaluate_findings(results))]
    return "\n".join(lines)


def write_report(out_dir: str | Path, preset: str) -> Path:
    """Write out_dir/report.md atomically and return its path."""
    path = Path(out_dir) / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(study_report(out_dir, preset))
    os.replace(tmp, path)
    return path
