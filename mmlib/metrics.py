"""Segmentation metrics of the paper: Dice, sensitivity, precision and ASSD (mm).

Conventions for empty masks (after removing ignored voxels), chosen so that a mean over cases
never rewards or punishes a case for a quantity that is undefined on it:

| target | prediction | dice | sensitivity | precision | assd |
|---|---|---|---|---|---|
| empty | empty | 1.0 | nan | nan | 0.0 |
| empty | non-empty | 0.0 | nan | 0.0 | nan |
| non-empty | empty | 0.0 | 0.0 | nan | nan |

nan values are left out of means (pandas' default), so e.g. the mean sensitivity is taken over
the cases that have a lesion.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

_FACES = ndimage.generate_binary_structure(3, 1)  # 6-connectivity


def dice_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice 2|P∩T| / (|P|+|T|) of two binary arrays of the same shape; 1.0 when both are empty."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    total = int(pred.sum()) + int(target.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, target).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a binary (X, Y, Z) mask: mask voxels with a face-neighbour outside it.

    The volume border counts as outside, so a mask touching the border has surface there.
    """
    mask = np.asarray(mask, bool)
    inner = ndimage.binary_erosion(mask, structure=_FACES, border_value=0)
    return mask & ~inner


def assd(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance in mm between two non-empty binary (X, Y, Z) masks.

    The mean, over the surface voxels of both masks together, of each one's distance to the
    nearest surface voxel of the other mask (Euclidean, in mm with `spacing` per axis).
    """
    s_pred, s_target = surface(pred), surface(target)
    # distance_transform_edt gives each non-zero voxel its distance to the nearest zero voxel.
    to_target = ndimage.distance_transform_edt(~s_target, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~s_pred, sampling=spacing)
    total = to_target[s_pred].sum() + to_pred[s_target].sum()
    return float(total / (s_pred.sum() + s_target.sum()))


def segmentation_metrics(
    pred: np.ndarray,
    target: np.ndarray,
    spacing: Sequence[float],
    ignore: np.ndarray | None = None,
) -> dict[str, float]:
    """Dice, sensitivity, precision and ASSD (mm) of binary (X, Y, Z) arrays `pred` vs `target`.

    `ignore` (bool, X, Y, Z) marks voxels left out of every metric: they are cleared in both
    masks before anything is computed. Empty masks follow the table in this module's docstring.
    """
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} differs from target shape {target.shape}")
    if ignore is not None:
        keep = ~np.asarray(ignore, bool)
        pred, target = pred & keep, target & keep
    n_pred, n_target = int(pred.sum()), int(target.sum())
    tp = int(np.logical_and(pred, target).sum())
    nan = float("nan")
    if n_pred == 0 and n_target == 0:
        return {"dice": 1.0, "sensitivity": nan, "precision": nan, "assd": 0.0}
    return {
        "dice": 2.0 * tp / (n_pred + n_target),
        "sensitivity": tp / n_target if n_target else nan,
        "precision": tp / n_pred if n_pred else nan,
        "assd": assd(pred, target, spacing) if n_pred and n_target else nan,
    }


def pooled_dice(rows) -> float:
    """Dice of a set of cases taken as one volume, 2 sum|P∩T| / (sum|P| + sum|T|), from their
    per-case rows (dice, sensitivity, precision, lesion_ml, predicted_ml: mmlib.engine.evaluate).
    Unlike the mean of per-case Dice it is not decided by a few tiny lesions (a 2-voxel lesion
    missed counts as 2 voxels, not as a Dice of 0); 1.0 when every mask is empty."""
    target = np.asarray(rows["lesion_ml"], float)
    sens = np.nan_to_num(np.asarray(rows["sensitivity"], float))
    precision = np.asarray(rows["precision"], float)
    hit = sens * target
    # |P| without ignored voxels is |P∩T| / precision; where nothing was hit, the volume predicted.
    with np.errstate(divide="ignore", invalid="ignore"):
        pred = np.where(hit > 0, hit / precision, np.asarray(rows["predicted_ml"], float))
    total = target.sum() + pred.sum()
    return float(2.0 * hit.sum() / total) if total > 0 else 1.0
