"""One Markdown report of a study run, built from its saved results: how it departs from the
paper's protocol (once, at the top), how long each notebook took, every table beside the paper's
(one line under each refers to them and names the table's models the preset leaves out), and every clause of F1-F6 with
its effect, 95% interval and verdict."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from mmlib.atomic_files import atomic_write_text, read_json
from mmlib.experiments.plan.deviations import deviation_note, deviations_frame
from mmlib.experiments.results.availability import available_findings, computable, mark_table
from mmlib.experiments.results.findings import FINDINGS, findings_markdown
from mmlib.experiments.results.learning import (learning_frame, learning_summary, model_records, run_precision,
                                                save_learning_curves)
from mmlib.experiments.results.markdown import markdown_table
from mmlib.experiments.results.reference import agreement, reference_runs
from mmlib.experiments.results.tables import TABLES
from mmlib.presets import Preset


def deviations_table(preset: Preset, precision: str | None = None, sources: dict | None = None) -> str:
    """The preset's protocol beside the paper's, one aspect a row (`precision`: the run's own;
    `sources`: its databases, where it used releases)."""
    return markdown_table(deviations_frame(preset, precision, sources))


def databases_section(sources: dict | None, out_dir: Path | None = None) -> list[str]:
    """Where each database came from (release, twin, or not available and why) with the identity of
    the data the run read (out_dir/databases/<NAME>.json), and what a run without the missing ones
    can compute of the paper's tables and findings."""
    if not sources:
        return []
    used = {n: read_json(Path(out_dir) / "databases" / f"{n}.json", {}) if out_dir else {} for n in sources}
    table = pd.DataFrame([{"database": n, "source": s.kind, "detail": s.describe(),
                           "data identity (train, test)": f"{used[n]['train_id']}, {used[n]['test_id']}"
                           if used[n].get("train_id") else "–"} for n, s in sources.items()])
    lines = ["## Databases of this run", "", markdown_table(table.set_index("database")), ""]
    unavailable = {n: s.why for n, s in sources.items() if not s.available}
    if unavailable:
        lines += ["What this run can compute of the paper's tables and findings without them:", "",
                  markdown_table(computable(unavailable)), ""]
    return lines


def deviations_markdown(presets: list[Preset]) -> str:
    """One row per aspect, the paper's column, then one column per preset ('same' where it agrees)."""
    frames = [deviations_frame(p) for p in presets]
    table = frames[0][["paper"]].copy()
    for p, f in zip(presets, frames):
        table[p.name] = [ours if differs else "same" for ours, differs in zip(f[f"ours ({p.name})"], f["differs"])]
    return markdown_table(table)


def learning_section(records: list[dict], figure: str | None = None) -> list[str]:
    """'Did each model learn?': the rule's verdict per model, and the validation curves' figure."""
    lines = ["## Did each model learn?", "", learning_summary(records), ""]
    if records:
        lines += [markdown_table(learning_frame(records)), ""]
    if figure:
        lines += [f"![validation Dice during training, per model]({figure})", ""]
    return lines


def agreement_section(results: pd.DataFrame, references: dict | None) -> list[str]:
    """Whether this run agrees with each shipped reference run of its preset: every model's
    all-modality Dice per database against the reference's 95% interval over its test cases."""
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


def table_sections(results: pd.DataFrame, preset: Preset, references: dict[str, pd.DataFrame] | None = None,
                   sources: dict | None = None) -> list[str]:
    """Each registered table beside the reference runs' and the paper's, with one line under it that
    refers to the deviations table at the top, names the table's models the preset leaves out and
    the twins standing in; cells that need a database the run lacks say 'not available (...)'."""
    unavailable = {n: s.why for n, s in (sources or {}).items() if not s.available}
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
                  markdown_table(mark_table(spec.number, spec.side_by_side(results, references), unavailable,
                                            results)), "",
                  f"*{deviation_note(preset, spec.number, sources)}*", ""]
    return lines


def references_section(references) -> list[str]:
    """Which reference runs the tables show beside ours, and their findings' verdicts."""
    if not references:
        return []
    lines = ["## Reference runs shown beside this one", "",
             "Shipped with mmlib (mmlib/reference/), made from a fresh clone; they are not this run.", ""]
    lines += [f"- `{run.name}`: {run.label()}" for run in references.values()]
    verdicts = pd.DataFrame({f"reference {n}": [r.findings.get(f, {}).get("verdict", "–") for f in FINDINGS]
                             for n, r in references.items()}, index=pd.Index(FINDINGS, name="finding"))
    return lines + ["", markdown_table(verdicts), ""]


def study_report(out_dir: str | Path, preset: Preset, results: pd.DataFrame, title: str | None = None,
                 provenance: dict | None = None, references: dict | None = None, records: list[dict] | None = None,
                 curves_figure: str | None = None, sources: dict | None = None) -> str:
    """The report's Markdown for the results of a study folder (tables it cannot fill say so), with
    the reference runs (`ReferenceRun` by name) beside it; `records`: the models' training records
    (did each learn?), `curves_figure`: the learning curves' image, relative to the report; `sources`:
    each database's source (release, twin, missing), stated in the protocol and under each table."""
    out_dir = Path(out_dir)
    records = records or []
    lines = [f"# {title or f'Study report: preset {preset.name}'}", ""]
    if provenance:
        lines += [" · ".join(f"{k}: {v}" for k, v in provenance.items() if not isinstance(v, dict)), ""]
    lines += ["## Protocol: ours beside the paper's", "",
              "How this run departs from the paper's protocol, stated once; one line under each table below refers to it.",
              "", deviations_table(preset, run_precision(records), sources), ""]
    lines += databases_section(sources, out_dir)
    lines += learning_section(records, curves_figure)
    same = {n: r for n, r in (references or {}).items() if r.provenance.get("preset") == preset.name}
    lines += agreement_section(results, same)
    timings = out_dir / "timings.json"
    if timings.is_file():
        secs = json.loads(timings.read_text())
        minutes = pd.Series({**secs, "total": sum(secs.values())}, name="minutes") / 60
        lines += [markdown_table(minutes.rename_axis("notebook").to_frame(), decimals=1), ""]
    lines += table_sections(results, preset, {n: r.results for n, r in (references or {}).items()}, sources)
    lines += ["## Findings F1–F6, clause by clause", "",
              "Effects with 95% bootstrap intervals over test cases (and seeds); a clause holds when the whole "
              "interval lies on its claimed side, a finding when every clause holds.", "",
              findings_markdown(available_findings(
                  results, {n: s.why for n, s in (sources or {}).items() if not s.available}))]
    lines += references_section(references)
    return "\n".join(lines)


def write_report(study, provenance: dict | None = None) -> Path:
    """Write <study folder>/report.md atomically from the study's current results and its models'
    training records (learning curves in figures/learning_curves.png), the shipped reference runs
    beside them."""
    records = model_records(study)
    fig = save_learning_curves(records, study.out_dir)
    figure = None
    if fig is not None:
        plt.close(fig)
        figure = "figures/learning_curves.png"
    return atomic_write_text(Path(study.out_dir) / "report.md", study_report(
        study.out_dir, study.preset, study.results(), provenance=provenance, references=reference_runs(),
        records=records, curves_figure=figure, sources=None if study.twins else study.sources))
