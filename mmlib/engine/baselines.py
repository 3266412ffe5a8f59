"""The floor every trained model must clear: the best single-modality intensity threshold.

For each database, every rule 'modality above t' / 'modality below t' (inside the brain, on the
z-scored image) is scored by its mean Dice over the training cases; the best rule is applied
to the test cases and reported in the rows of `evaluate_cases`, with model='threshold'.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from mmlib.data.cases import IGNORE, PreparedCase
from mmlib.engine.evaluate import ROW_COLUMNS, case_row

#: Quantile levels of the candidate thresholds: dense in both tails, where lesions live.
_TAIL = np.geomspace(1e-4, 0.05, 25)
_LEVELS = np.unique(np.concatenate([_TAIL, np.linspace(0, 1, 101), 1 - _TAIL]))
_SAMPLE_PER_CASE = 100_000


def _candidates(cases: list[PreparedCase], channel: int, rng: np.random.Generator) -> np.ndarray:
    """Candidate thresholds: midpoints between consecutive distinct quantiles of the brain
    intensities (a sample per case), so a gap between two populations always gets one."""
    values = []
    for case in cases:
        v = case.image[channel][case.brain]
        values.append(rng.choice(v, _SAMPLE_PER_CASE, replace=False) if v.size > _SAMPLE_PER_CASE else v)
    q = np.unique(np.quantile(np.concatenate(values), _LEVELS, method="lower"))
    return (q[:-1] + q[1:]) / 2 if q.size > 1 else q


def _mean_dice(cases: list[PreparedCase], channel: int, thresholds: np.ndarray, above: bool) -> np.ndarray:
    """Mean Dice over cases of every rule `x > t` (above) or `x < t`, t in sorted `thresholds`."""
    total = np.zeros(thresholds.size)
    for case in cases:
        keep = case.label != IGNORE
        lesion = case.label == 1
        v = case.image[channel][case.brain & keep]
        is_lesion = lesion[case.brain & keep]
        n_target = int((lesion & keep).sum())
        # For each voxel, how many thresholds lie below (above) it; a cumulative count over
        # those gives, for every threshold at once, how many voxels the rule marks.
        if above:
            k = np.searchsorted(thresholds, v, side="left")  # v > t_j  <=>  j < k
            n_pred = np.cumsum(np.bincount(k, minlength=thresholds.size + 1)[::-1])[::-1][1:]
            tp = np.cumsum(np.bincount(k[is_lesion], minlength=thresholds.size + 1)[::-1])[::-1][1:]
        else:
            k = np.searchsorted(thresholds, v, side="right")  # v < t_j  <=>  j >= k
            n_pred = np.cumsum(np.bincount(k, minlength=thresholds.size + 1))[:-1]
            tp = np.cumsum(np.bincount(k[is_lesion], minlength=thresholds.size + 1))[:-1]
        denom = n_pred + n_target
        total += np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 1.0)
    return total / len(cases)


def best_threshold_rule(cases: list[PreparedCase], seed: int = 0) -> dict:
    """The rule with the highest mean training Dice -> dict(modality, direction, threshold, train_dice)."""
    rng = np.random.default_rng(seed)
    best = {"train_dice": -1.0}
    for channel, modality in enumerate(cases[0].modalities):
        thresholds = _candidates(cases, channel, rng)
        for direction in ("above", "below"):
            dice = _mean_dice(cases, channel, thresholds, above=direction == "above")
            j = int(np.argmax(dice))
            if dice[j] > best["train_dice"]:
                best = {"modality": modality, "direction": direction,
                        "threshold": float(thresholds[j]), "train_dice": float(dice[j])}
    return best


def apply_rule(case: PreparedCase, rule: dict) -> np.ndarray:
    """Binary (X, Y, Z) prediction of a threshold rule on a case, inside its brain."""
    x = case.image[case.modalities.index(rule["modality"])]
    hit = x > rule["threshold"] if rule["direction"] == "above" else x < rule["threshold"]
    return hit & case.brain


def threshold_baseline(train_cases: list[PreparedCase], test_cases: list[PreparedCase]) -> pd.DataFrame:
    """Per database, the best single-modality threshold rule on `train_cases`, scored on that
    database's `test_cases`: evaluate_cases rows (model='threshold') plus modality, direction,
    threshold, train_dice. Test databases without training cases are skipped."""
    by_db: dict[str, list[PreparedCase]] = defaultdict(list)
    for case in train_cases:
        by_db[case.database].append(case)
    rules = {db: best_threshold_rule(cases) for db, cases in by_db.items()}
    rows = []
    for case in test_cases:
        if case.database in rules:
            rule = rules[case.database]
            rows.append({**case_row(case, apply_rule(case, rule), (rule["modality"],), "threshold"), **rule})
    return pd.DataFrame(rows, columns=[*ROW_COLUMNS, "modality", "direction", "threshold", "train_dice"])
