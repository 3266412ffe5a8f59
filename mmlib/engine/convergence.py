"""Did a model learn? Its validation Dice during training, on cases held out from its training set
(never its test cases), and one rule, stated here once, for whether it had stopped improving.
The validation Dice of a database pools its validation cases into one volume (mmlib.metrics.
pooled_dice): a mean of per-case Dice over a few cases is decided by whichever of them has a
lesion of a few voxels, and says nothing about whether the model learnt.

A model *learnt* a database when its weights are finite and its final validation Dice there beats
the label-free floor (the intensity-outlier rule, mmlib.engine.baselines) on the same cases by more
than `LEARNT_MARGIN` (where the rule finds nothing its floor is 0, and a model at Dice 0.003 has
learnt nothing either); it learnt as a whole when its mean over its databases does so against the
floor's mean. The verdicts are taken again from the recorded numbers whenever they are read, so
they always follow the rule stated here. It *converged* when the last quarter of training raised its validation Dice (the mean
over its databases) by less than `MIN_GAIN`. The findings are judged only on models that learnt,
and say so where the models compared had not converged (mmlib.experiments.results.findings).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
from torch import nn

#: The convergence rule: the share of training at the end, and the validation gain over it below
#: which a model has converged.
LAST_SHARE = 0.25
MIN_GAIN = 0.01
RULE = (f"converged: the last {LAST_SHARE:.0%} of training raised the validation Dice (pooled over the "
        f"cases held out from each database's training set, then the mean over the model's databases) by "
        f"less than {MIN_GAIN}")
#: How far above the label-free floor a validation Dice must be for the model to have learnt.
LEARNT_MARGIN = 0.02
LEARNT_RULE = (f"learnt: the final validation Dice beats the label-free floor on the same cases by more than "
               f"{LEARNT_MARGIN}")
#: Share of the steps at the end whose mean loss is the model's final loss.
FINAL_LOSS_SHARE = 0.05


@dataclass
class Validation:
    """Validation during training: `measure(model)` -> {database: Dice} on held-out training cases,
    taken at `points` evenly spaced steps (the last one at the end); `floor`: {database: Dice} of
    the label-free rule on the same cases (what a model that learnt beats)."""

    measure: Callable[[nn.Module], dict[str, float]]
    floor: dict[str, float] = field(default_factory=dict)
    points: int = 8

    def steps(self, total: int) -> list[int]:
        """The steps (1-based counts of finished steps) after which it measures."""
        return sorted({max(1, round(total * (i + 1) / self.points)) for i in range(self.points)})


@dataclass(frozen=True)
class Learning:
    """What a model's training record says: finite weights, learnt (mean validation Dice above
    the floor's; None: no validation cases), converged (None: no curve), its final loss and
    validation Dice, and per database {database: {dice, floor, learnt}}."""

    finite: bool
    learnt: bool | None
    converged: bool | None
    final_loss: float | None
    final_dice: float | None
    gain_last_quarter: float | None
    reason: str
    databases: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


def _mean(values: dict) -> float:
    finite = [float(v) for v in values.values() if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def final_loss(losses: list[float]) -> float | None:
    """Mean loss over the last FINAL_LOSS_SHARE of the steps (at least one)."""
    if not losses:
        return None
    n = max(1, round(len(losses) * FINAL_LOSS_SHARE))
    return float(np.mean(losses[-n:]))


def beats_floor(dice, floor) -> bool:
    """The learnt rule on one pair of numbers (NaN or None never learnt)."""
    try:
        dice, floor = float(dice), float(floor)
    except (TypeError, ValueError):
        return False
    return bool(np.isfinite(dice) and np.isfinite(floor) and dice > floor + LEARNT_MARGIN)


def judge_record(record: dict) -> Learning:
    """The verdict of a training record (training.json) by the rules as they stand now, from its
    recorded numbers (validation curve, floor, final loss)."""
    learning = record.get("learning") or {}
    loss = learning.get("final_loss")
    return judge_learning(record.get("validation") or [], record.get("floor") or {}, [] if loss is None else [loss],
                          finite=learning.get("finite", True))


def judge_learning(curve: list[dict], floor: dict[str, float], losses: list[float], finite: bool = True) -> Learning:
    """The record's verdict. `curve`: [{'step': s, 'dice': {database: Dice}}] in step order."""
    loss = final_loss(losses)
    if not finite or (loss is not None and not np.isfinite(loss)):
        return Learning(False, False, False, loss, None, None, "non-finite weights or loss")
    if not curve:
        return Learning(True, None, None, loss, None, None, "no validation curve recorded")
    last = curve[-1]
    dice = _mean(last["dice"])
    per_db = {db: {"dice": float(v), "floor": float(floor.get(db, 0.0)), "learnt": beats_floor(v, floor.get(db, 0.0))}
              for db, v in last["dice"].items()}
    learnt = beats_floor(dice, _mean({db: p["floor"] for db, p in per_db.items()}))
    below = [f"{db} {p['dice']:.3f} vs floor {p['floor']:.3f}" for db, p in per_db.items() if not p["learnt"]]
    total = last["step"]
    start = min(curve, key=lambda p: abs(p["step"] - (1 - LAST_SHARE) * total))
    gain = dice - _mean(start["dice"]) if start is not last else None
    converged = None if gain is None else bool(gain < MIN_GAIN)
    reasons = [f"learnt (validation Dice more than {LEARNT_MARGIN} above the label-free floor)" if learnt else
               f"did not learn (validation Dice not more than {LEARNT_MARGIN} above the label-free floor)"]
    if below:
        reasons.append(f"not learnt on {'; '.join(below)}")
    if gain is not None:
        reasons.append(f"validation Dice {'+' if gain >= 0 else ''}{gain:.3f} over the last quarter: "
                       f"{'converged' if converged else 'still improving'}")
    return Learning(True, learnt, converged, loss, dice, gain, "; ".join(reasons), per_db)


__all__ = ["RULE", "LAST_SHARE", "MIN_GAIN", "LEARNT_MARGIN", "LEARNT_RULE", "Validation", "Learning", "beats_floor",
           "judge_learning", "judge_record", "final_loss"]
