"""Did each model of a study learn? Its training record (training.json: precision, validation curve
on held-out training cases, final loss, the convergence rule's verdict) as tables and curves, and
the precision a run's models actually trained in, for the protocol table.

The rule itself lives in mmlib.engine.convergence; the findings read the same verdicts from the
result rows (mmlib.experiments.results.findings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mmlib.atomic_files import atomic_path, atomic_write_json
from mmlib.engine.convergence import LEARNT_RULE, RULE, judge_record
from mmlib.errors import MMLibError
from mmlib.viz import plot_learning_curves


def model_records(study) -> list[dict]:
    """The training records of the study's current models (oldest layout's models without one are
    left out), each with its folder name as 'model_id'."""
    records = []
    for folder in sorted(study.models_dir.glob("*")) if study.models_dir.is_dir() else []:
        path = folder / "training.json"
        if not (folder / "final.pt").is_file() or not path.is_file() or not study.is_current_model(folder.name):
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise MMLibError(f"unreadable training record ({exc})", path) from None
        records.append({**record, "model_id": folder.name})
    return records


def _yes_no(value) -> str:
    return "–" if value is None else "yes" if value else "no"


def learning_frame(records: list[dict]) -> pd.DataFrame:
    """'Did each model learn?': one row per model: steps, precision, final loss, final validation
    Dice beside the label-free floor, learnt, gain over the last quarter, converged, and why."""
    rows = []
    for r in records:
        learning = judge_record(r).to_json()
        floors = [p["floor"] for p in (learning.get("databases") or {}).values()]
        rows.append({"model": r.get("name") or r["model_id"], "steps": r.get("steps"),
                     "precision": r.get("precision_note") or r.get("precision", ""),
                     "final loss": learning.get("final_loss"), "validation Dice": learning.get("final_dice"),
                     "label-free floor": float(np.mean(floors)) if floors else None,
                     "learnt": _yes_no(learning.get("learnt")),
                     "gain, last quarter": learning.get("gain_last_quarter"),
                     "converged": _yes_no(learning.get("converged")), "why": learning.get("reason", "")})
    frame = pd.DataFrame(rows, columns=["model", "steps", "precision", "final loss", "validation Dice",
                                        "label-free floor", "learnt", "gain, last quarter", "converged", "why"])
    return frame.set_index("model")


def curves_frame(records: list[dict]) -> pd.DataFrame:
    """Tidy validation curves: one row per (model, step, database) with its validation Dice."""
    rows = [{"model": r.get("name") or r["model_id"], "step": point["step"], "share": point["step"] / r["steps"],
             "database": db, "dice": dice}
            for r in records if r.get("steps") for point in r.get("validation") or [] for db, dice in point["dice"].items()]
    return pd.DataFrame(rows, columns=["model", "step", "share", "database", "dice"])


def learning_summary(records: list[dict]) -> str:
    """One sentence: how many models learnt and converged, by the rule stated once."""
    if not records:
        return "No model of this run kept a training record."
    verdicts = [judge_record(r) for r in records]
    learnt = sum(bool(v.learnt) for v in verdicts)
    converged = sum(bool(v.converged) for v in verdicts)
    fell_back = sum(r.get("fallback") is not None for r in records)
    text = (f"{learnt} of {len(records)} models learnt ({LEARNT_RULE}) and "
            f"{converged} of {len(records)} converged ({RULE}).")
    if fell_back:
        text += f" {fell_back} fell back to float32 after a non-finite value under reduced precision."
    return text


def run_precision(records: list[dict]) -> str | None:
    """The precision the run's models trained in, for the protocol table (None: no records)."""
    if not records:
        return None
    notes = pd.Series([r.get("precision_note") or r.get("precision", "float32") for r in records]).value_counts()
    return "; ".join(f"{note} ({n} model{'s' if n > 1 else ''})" for note, n in notes.items())


def save_learning_curves(records: list[dict], out_dir: str | Path):
    """Draw the validation curves of `records` and write them to out_dir/figures/learning_curves.png
    atomically; the figure (the caller closes it), or None when no model kept a curve."""
    curves = curves_frame(records)
    if curves.empty:
        return None
    fig = plot_learning_curves(curves)
    path = Path(out_dir) / "figures" / "learning_curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight", format="png")
    return fig


def save_records(records: list[dict], path: str | Path) -> Path:
    """Write the records (as a reference run keeps them) as JSON, atomically."""
    return atomic_write_json(Path(path), records)


__all__ = ["model_records", "learning_frame", "curves_frame", "learning_summary", "run_precision", "save_learning_curves",
           "save_records"]
