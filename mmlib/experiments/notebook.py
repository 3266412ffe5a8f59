"""What a study notebook calls, all from here: one setup call, each notebook's experiment, tables
shown by name, findings shown clause by clause. A thin façade over plan/, run/ and results/."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from mmlib.experiments.plan.deviations import deviation_note, deviations_frame
from mmlib.experiments.results.availability import available_findings, mark_table, write_findings
from mmlib.experiments.results.findings import clauses_frame, clauses_markdown
from mmlib.experiments.results.learning import learning_frame, learning_summary, model_records, save_learning_curves
from mmlib.experiments.results.reference import reference_results, reference_runs
from mmlib.experiments.results.rows import save_results
from mmlib.experiments.results.tables import table_by_name
from mmlib.experiments.run.experiments import joint_training, new_modality_sets, single_database, unseen_pathologies
from mmlib.experiments.run.study import Study


def _display(*objs) -> None:
    try:
        from IPython.display import display  # optional: outside IPython the text is printed
    except ImportError:  # outside IPython: plain text
        for obj in objs:
            print(obj)
        return
    display(*objs)


def _markdown(text: str):
    try:
        from IPython.display import Markdown  # optional: outside IPython the text stays text
    except ImportError:
        return text
    return Markdown(text)


def open_study(preset: str, out_dir: str | Path, data_root: str | Path | None = None, device: str = "auto",
               seeds=None, show: bool = True) -> Study:
    """The study of a notebook's parameters (made or reopened in out_dir, figures/ beside it),
    and the table of how this preset's protocol departs from the paper's."""
    study = Study(Path(out_dir), preset, data_root=data_root, device=device,
                  seeds=None if seeds is None else tuple(seeds), progress=False)
    (study.out_dir / "figures").mkdir(parents=True, exist_ok=True)
    if show:
        _display(deviations_frame(study.preset, sources=_sources(study)))
    return study


def _sources(study: Study) -> dict | None:
    """The study's databases where it uses releases (the default study of twins states none)."""
    return None if study.twins else study.sources


def database_table(databases: dict, sources: dict | None = None) -> pd.DataFrame:
    """Per prepared database: pathology, modalities, train/test cases here and in the paper; with the
    study's `sources`, where each came from, and a row for each database it lacks saying why."""
    rows = [{"database": n, "pathology": d.manifest.pathology, "modalities": "+".join(d.manifest.modalities),
             "train": len(d.train), "test": len(d.test), "paper cases": d.manifest.split_cases,
             "paper train": d.manifest.split_train} for n, d in databases.items()]
    if sources:
        rows = [dict(r, source=sources[r["database"]].describe()) for r in rows]
        rows += [{"database": n, "source": s.describe()} for n, s in sources.items() if not s.available]
    return pd.DataFrame(rows).set_index("database")


def figure_path(study: Study, name: str) -> Path:
    return study.out_dir / "figures" / f"{name}.png"


def show_table(name: str | int, results: pd.DataFrame, study: Study, decimals: int = 3,
               references: bool = True) -> pd.DataFrame:
    """Show Table `name` ('Table 3') built from `results`, each of our rows above the same row of
    the shipped reference runs (labelled) and the paper's, with a line that refers to the deviations
    table open_study showed and names the table's models the preset leaves out; return the frame."""
    spec = table_by_name(name)
    both = spec.side_by_side(results, reference_results() if references else None).round(decimals)
    both = mark_table(spec.number, both, study.unavailable(), results)  # cells needing a missing database
    _display(_markdown(f"**{spec.name}.** {spec.caption}"), both,
             _markdown(f"*{deviation_note(study.preset, spec.number, _sources(study))}*"))
    return both


def show_findings(results: pd.DataFrame, references: bool = True, unavailable: dict | None = None) -> dict:
    """Judge F1-F6 on `results` and show one row per clause (effect, 95% CI, verdict), beside the
    shipped reference runs' verdicts (labelled); clauses needing a database in `unavailable` (name:
    why, `Study.unavailable()`) read 'not available'; return the findings."""
    findings = available_findings(results, unavailable)
    refs = {n: r.findings for n, r in (reference_runs() if references else {}).items()}
    summary = pd.DataFrame([{"finding": k, "this run": f["verdict"],
                             **{f"reference {n}": v.get(k, {}).get("verdict", "–") for n, v in refs.items()},
                             "the paper's numbers": f["paper_verdict"], "statement": f["finding"]}
                            for k, f in findings.items()]).set_index("finding")
    clauses = clauses_frame(findings)
    for n, v in refs.items():
        by_key = {c["clause"]: c for f in v.values() for c in f["clauses"]}
        clauses[f"reference {n}"] = [f"{by_key[k]['value']:+.3f} {by_key[k]['verdict']}"
                                     if k in by_key and by_key[k]["value"] is not None
                                     else by_key.get(k, {}).get("verdict", "–") for k in clauses["clause"]]
    _display(summary, clauses.set_index(["finding", "clause"]))
    return findings


def show_learning(study: Study) -> list[dict]:
    """Show 'did each model learn?' (one row per model: precision, final loss, validation Dice beside
    the label-free floor, converged) and the validation curves; return the training records."""
    records = model_records(study)
    _display(_markdown(learning_summary(records)), learning_frame(records).round(3))
    fig = save_learning_curves(records, study.out_dir)
    if fig is not None:
        _display(fig)
        plt.close(fig)
    return records


def reading(findings: dict, *names: str) -> str:
    """Findings `names` ('F3') of `evaluate_findings` in words: per clause our effect, its 95% interval
    and verdict, beside the paper's effect measured the same way."""
    lines = []
    for name in names:
        f = findings[name]
        lines += [f"**{name} at this preset: {f['verdict']}** (the paper's own numbers: {f['paper_verdict']}).", ""]
        for ours, paper in zip(f["clauses"], f["paper"]):
            c = ours.clause
            measured = ((ours.verdict if ours.verdict.startswith("not available") else
                         "untested (a model it needs was not run)") if ours.effect is None else
                        f"{ours.effect:+.3f}" + ("" if ours.low is None else f" [{ours.low:+.3f}, {ours.high:+.3f}]")
                        + f", **{ours.verdict}**")
            theirs = "" if paper.effect is None else f"; the paper {paper.effect:+.3f}"
            notes = f" ({ours.notes()})" if ours.notes() else ""  # models that did not learn or converge
            lines.append(f"- {c.key.removeprefix(name + ' ')} (claim {c.side} {c.threshold:g}): {measured}{notes}{theirs}")
        lines.append("")
    return "\n".join(lines)


def show_reading(results: pd.DataFrame, *names: str, study: Study | None = None) -> dict:
    """Show findings `names` read off `results` (`reading`), under the table they come from (with
    `study`: clauses needing a database it lacks read 'not available'); return the findings judged
    (notebook 99 shows all of them beside the reference runs)."""
    findings = available_findings(results, None if study is None else study.unavailable())
    _display(_markdown(reading(findings, *names)))
    return findings


__all__ = ["open_study", "show_learning", "database_table", "figure_path", "show_table", "show_findings", "reading",
           "show_reading", "single_database", "joint_training", "new_modality_sets", "unseen_pathologies",
           "save_results", "write_findings", "clauses_markdown"]
