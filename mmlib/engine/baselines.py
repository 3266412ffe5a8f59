"""Baselines that need no network: the best single-modality threshold (supervised) and an
intensity-outlier rule (label-free).

Supervised: every rule 'modality above t' / 'modality below t' (inside the brain, on the
z-scored image) is scored by its mean Dice over the training cases; the best is applied to the
test cases. Label-free: voxels more than `OUTLIER_Z` robust standard deviations from the
brain's median, on the side where lesions of that modality usually lie. Its threshold and sides
are fixed in advance, never fitted to labels, so it is the floor for a claim of segmenting a
pathology "above chance" (Table 5).
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


def best_threshold_rule(cases: list[PreparedCase], seed: int = 0, modalities=None) -> dict:
    """The rule with the highest mean training Dice -> dict(modality, direction, threshold, train_dice),
    searched over `modalities` (default: every modality of the cases)."""
    rng = np.random.default_rng(seed)
    best = {"train_dice": -1.0}
    for channel, modality in enumerate(cases[0].modalities):
        if modalities is not None and modality not in modalities:
            continue
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


def threshold_baseline(train_cases: list[PreparedCase], test_cases: list[PreparedCase],
                       modalities=None) -> pd.DataFrame:
    """Per database, the best single-modality threshold rule on `train_cases` (over `modalities`,
    default all), scored on that database's `test_cases`: evaluate_cases rows (model='threshold')
    plus modality, direction, threshold, train_dice. Test databases without training cases are skipped."""
    by_db: dict[str, list[PreparedCase]] = defaultdict(list)
    for case in train_cases:
        by_db[case.database].append(case)
    rules = {db: best_threshold_rule(cases, modalities=modalities) for db, cases in by_db.items()}
    rows = []
    for case in test_cases:
        if case.database in rules:
            rule = rules[case.database]
            rows.append({**case_row(case, apply_rule(case, rule), (rule["modality"],), "threshold"), **rule})
    return pd.DataFrame(rows, columns=[*ROW_COLUMNS, "modality", "direction", "threshold", "train_dice"])


#: Where lesions usually lie on each modality relative to normal tissue: bright (+1) or dark (-1).
#: Fixed from how these contrasts show the paper's pathologies (hyperintense on FLAIR, T2, PD, DWI
#: and T1c; hypointense on T1, and SWI for microbleeds), not fitted to any label.
LESION_SIDE = {"FLAIR": 1, "T2": 1, "PD": 1, "DWI": 1, "T1c": 1, "T1": -1, "SWI": -1}
#: The label-free rule's cut, in robust standard deviations (1.4826 x the median absolute deviation).
OUTLIER_Z = 3.0


def outlier_rule(case: PreparedCase, modality: str) -> np.ndarray:
    """Binary (X, Y, Z): brain voxels of `modality` more than OUTLIER_Z robust SDs from the brain's
    median on the modality's lesion side (LESION_SIDE). Uses no label."""
    x = case.image[case.modalities.index(modality)]
    inside = x[case.brain]
    median = float(np.median(inside))
    mad = float(np.median(np.abs(inside - median))) * 1.4826
    z = (x - median) / (mad if mad > 1e-8 else 1.0)
    return (LESION_SIDE[modality] * z > OUTLIER_Z) & case.brain


def outlier_baseline(test_cases: list[PreparedCase], modality: str) -> pd.DataFrame:
    """The label-free outlier rule on `modality` of each test case: evaluate_cases rows
    (model='outlier') plus modality, direction and threshold (z)."""
    rows = []
    for case in test_cases:
        rule = {"modality": modality, "direction": "above" if LESION_SIDE[modality] > 0 else "below",
                "threshold": OUTLIER_Z, "train_dice": float("nan")}
        rows.append({**case_row(case, outlier_rule(case, modality), (modality,), "outlier"), **rule})
    return pd.DataFrame(rows, columns=[*ROW_COLUMNS, "modality", "direction", "threshold", "train_dice"])
