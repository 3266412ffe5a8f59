"""One Markdown report of a study run, built from its saved results: how it departs from the
paper's protocol, how long each notebook took, every table beside the paper's (the deviations
under each), and every clause of F1-F6 with its effect, 95% interval and verdict."""

from __future__ import annotations

import json
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


def deviations_table(preset: Preset, precision: str | None = None) -> str:
    """The preset's protocol beside the paper's, one aspect a row (`precision`: the run's own)."""
    rows = pd.DataFrame([{"aspect": d.aspect, "paper": d.paper, f"ours ({preset.name})": d.ours,
                          "differs": "yes" if d.differs else ""} for d in deviations(preset, precision)]
                        ).set_index("aspect")
    return markdown_table(rows)


def learning_section(records: list[dict], figure: str | None = None) -> list[str]:
    """'Did each model learn?': the rule's verdict per model, and the validation curves' figure."""
    from mmlib.experiments.learning import learning_frame, learning_summary

    lines = ["## Did each model learn?", "", learning_summary(records), ""]
    if records:
        lines += [markdown_table(learning_frame(records)), ""]
    if figure:
        lines += [f"![validation Dice during training, per model]({figure})", ""]
    return lines


def agreement_section(results: pd.DataFrame, references: dict | None) -> list[str]:
    """Whether this run agrees with each shipped reference run of its preset: every model's
    all-modality Dice per database against the reference's 95% interval over its test cases."""
    from mmlib.experiments.reference import agreement

    lines = []
    for name, run in (references or {}).items():
        table = agreement(results, run.results)
        if table.empty:
            lines += [f"## This run beside reference run `{name}`", "",
                      f"Not compared: the reference shares no model evaluated on the same test data (it was made "
                      f"on other data, e.g. twins of another version, or trained other models).", ""]
            continue
        per_model = table.groupby("model")["agrees"].all()
        differs = int((~per_model).sum())
        lines += [f"## This run beside reference run `{name}`", "",
                  (f"**Your run differs from the reference on {differs} of {len(per_model)} models** (a model "
                   f"differs where its Dice on a database lies outside the reference's 95% interval over test "
                   f"cases)." if differs else
                   f"Your run agrees with the reference on all {len(per_model)} models it shares with it (every "
                   f"Dice within the reference's 95% interval over test cases)."), "",
                  markdown_table(table.set_index(["model", "database"])), ""]
    return lines


def table_sections(results: pd.DataFrame, preset: Preset, references: dict[str, pd.DataFrame] | None = None
                   ) -> list[str]:
    """Each registered table beside the reference runs' and the paper's, with the preset's deviations
    under it."""
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
        below = "".join(f", then reference run `{n}`" for n in references or {})
        lines += [f"Our row first{below}, the paper's last (`paper`).", "",
                  markdown_table(spec.side_by_side(results, references)), "", f"*{deviation_line(preset)}*", ""]
    return lines


def references_section(references) -> list[str]:
    """Which reference runs the tables show beside ours, and their findings' verdicts."""
    if not references:
        return []
    import json

    lines = ["## Reference runs shown beside this one", "",
             "Shipped with mmlib (mmlib/reference/), made from a fresh clone; they are not this run.", ""]
    lines += [f"- `{run.name}`: {run.label()}" for run in references.values()]
    lines += ["", "| finding | " + " | ".join(f"reference {n}" for n in references) + " |",
              "|---|" + "---|" * len(references)]
    verdicts = {n: json.loads((r.folder / "findings.json").read_text())["findings"] for n, r in references.items()}
    for f in ("F1", "F2", "F3", "F4", "F5", "F6"):
        lines.append(f"| {f} | " + " | ".join(verdicts[n].get(f, {}).get("verdict", "–") for n in references) + " |")
    return lines + [""]


def study_report(out_dir: str | Path, preset: Preset, results: pd.DataFrame, title: str | None = None,
                 provenance: dict | None = None, references: dict | None = None, records: list[dict] | None = None,
                 curves_figure: str | None = None) -> str:
    """The report's Markdown for the results of a study folder (tables it cannot fill say so), with
    the reference runs (`ReferenceRun` by name) beside it; `records`: the models' training records
    (did each learn?), `curves_figure`: the learning curves' image, relative to the report."""
    from mmlib.experiments.learning import run_precision

    out_dir = Path(out_dir)
    records = records or []
    lines = [f"# {title or f'Study report: preset {preset.name}'}", ""]
    if provenance:
        lines += [" · ".join(f"{k}: {v}" for k, v in provenance.items() if not isinstance(v, dict)), ""]
    lines += ["## Protocol: ours beside the paper's", "", deviations_table(preset, run_precision(records)), ""]
    lines += learning_section(records, curves_figure)
    same = {n: r for n, r in (references or {}).items() if r.provenance.get("preset") == preset.name}
    lines += agreement_section(results, same)
    timings = out_dir / "timings.json"
    if timings.is_file():
        secs = json.loads(timings.read_text())
        lines += ["| notebook | minutes |", "|---|---|"]
        lines += [f"| {name} | {s / 60:.1f} |" for name, s in secs.items()]
        lines += [f"| total | {sum(secs.values()) / 60:.1f} |", ""]
    lines += table_sections(results, preset, {n: r.results for n, r in (references or {}).items()})
    lines += ["## Findings F1–F6, clause by clause", "",
              "Effects with 95% bootstrap intervals over test cases (and seeds); a clause holds when the whole "
              "interval lies on its claimed side, a finding when every clause holds.", "",
              findings_markdown(evaluate_findings(results))]
    lines += references_section(references)
    return "\n".join(lines)


def write_report(study, provenance: dict | None = None) -> Path:
    """Write <study folder>/report.md atomically from the study's current results and its models'
    training records (learning curves in figures/learning_curves.png), the shipped reference runs
    beside them."""
    from mmlib.experiments.learning import model_records, save_learning_curves
    from mmlib.experiments.reference import reference_runs
    from mmlib.io import atomic_write_text

    records = model_records(study)
    fig = save_learning_curves(records, study.out_dir)
    figure = None
    if fig is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)
        figure = "figures/learning_curves.png"
    return atomic_write_text(Path(study.out_dir) / "report.md", study_report(
        study.out_dir, study.preset, study.results(), provenance=provenance, references=reference_runs(),
        records=records, curves_figure=figure))
