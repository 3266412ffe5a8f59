"""Reference runs shipped with mmlib: a whole study's result rows, findings and report at one preset,
with their provenance (commit, device, preset, wall time), shown beside a user's own run and always
labelled as reference: in report.md, notebook 99 and the results explorer.

Each lives in mmlib/reference/<name>/: provenance.json, results.csv.gz (the study's current rows),
findings.json, report.md and notebooks/ (the study's executed notebooks with their outputs, pictures
shrunk; absent when it kept none). This module reads them; `publish.save_reference` writes one
from a finished study folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from mmlib.errors import MMLibError
from mmlib.experiments.results.rows import read_rows
from mmlib.experiments.results.tables import tidy_results

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "reference"
_PROVENANCE_KEYS = ("preset", "commit", "device", "wall_time", "date")


@dataclass
class ReferenceRun:
    """One shipped reference run: its folder and provenance; results are read on first use."""

    name: str
    folder: Path
    provenance: dict

    @cached_property
    def results(self) -> pd.DataFrame:
        return read_rows(self.folder / "results.csv.gz")

    @cached_property
    def findings(self) -> dict:
        """The findings as the run judged them (findings.json's 'findings': verdicts and clauses)."""
        path = self.folder / "findings.json"
        try:
            return json.loads(path.read_text())["findings"]
        except (OSError, ValueError, KeyError) as exc:
            raise MMLibError(f"unreadable findings ({exc})", path) from None

    @cached_property
    def records(self) -> list[dict]:
        """The models' training records (learning.json; [] for a run made before mmlib kept them)."""
        path = self.folder / "learning.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else []
        except (OSError, ValueError) as exc:
            raise MMLibError(f"unreadable training records ({exc})", path) from None

    def label(self) -> str:
        p = self.provenance
        return f"reference {self.name}: preset {p['preset']}, {p['device']}, {p['wall_time']}, commit {p['commit'][:10]}"


def reference_runs(folder: Path = REFERENCE_DIR) -> dict[str, ReferenceRun]:
    """Every reference run shipped, by name (none when the folder is empty)."""
    runs = {}
    for stamp in sorted(Path(folder).glob("*/provenance.json")):
        try:
            provenance = json.loads(stamp.read_text())
        except (OSError, ValueError) as exc:
            raise MMLibError(f"unreadable reference provenance ({exc})", stamp) from None
        missing = [k for k in _PROVENANCE_KEYS if k not in provenance]
        if missing or not (stamp.parent / "results.csv.gz").is_file():
            raise MMLibError(f"incomplete reference run (missing {', '.join(missing) or 'results.csv.gz'})", stamp.parent)
        runs[stamp.parent.name] = ReferenceRun(stamp.parent.name, stamp.parent, provenance)
    return runs


def reference_results(preset_name: str | None = None, folder: Path = REFERENCE_DIR) -> dict[str, pd.DataFrame]:
    """{name: result rows} of the reference runs (of one preset when given)."""
    return {name: run.results for name, run in reference_runs(folder).items()
            if preset_name is None or run.provenance["preset"] == preset_name}


def _case_interval(values: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the mean of per-case values (fixed seed: a stable reading)."""
    draws = np.random.default_rng(seed).integers(0, len(values), size=(n, len(values)))
    low, high = np.percentile(values[draws].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def agreement(results: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Per model (name and seed) and database that both runs evaluated with all modalities on the
    same test data (eval_data_id, where both rows carry it): our mean Dice, the reference's with its
    95% interval over its test cases, and whether ours lies in it."""
    if results.empty or reference.empty:
        return pd.DataFrame()
    ours, ref = (tidy_results(r) for r in (results, reference))
    keys = ["model", "seed", "database"]
    if "eval_data_id" in ours and "eval_data_id" in ref:  # twins of another version are other data
        keys.append("eval_data_id")
    ours, ref = (r[r["all_modalities"] & (r["training"] != "rule")] for r in (ours, ref))
    mine = ours.groupby(keys)["dice"].mean()
    rows = []
    for key, part in ref.groupby(keys):
        if key not in mine.index:
            continue
        cases = part.groupby("case_id")["dice"].mean().dropna().to_numpy()
        if not len(cases):
            continue
        low, high = _case_interval(cases)
        model, seed, db = key[:3]
        rows.append({"model": f"{model} (seed {seed})", "database": db, "this run": mine[key],
                     "reference": float(cases.mean()), "95% interval": f"[{low:.3f}, {high:.3f}]",
                     "agrees": bool(low - 1e-9 <= mine[key] <= high + 1e-9)})
    return pd.DataFrame(rows)


__all__ = ["REFERENCE_DIR", "ReferenceRun", "reference_runs", "reference_results", "agreement"]
