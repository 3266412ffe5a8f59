"""Specification of mmlib.metrics: hand-computed Dice, ASSD and the empty-mask conventions."""

import math

import numpy as np
import pandas as pd
import pytest

from mmlib.metrics import dice_score, pooled_dice, segmentation_metrics, surface


def box(lo, hi, shape=(10, 10, 10)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def test_dice_of_two_cubes_overlapping_by_half_is_one_half():
    a, b = box((2, 2, 2), (6, 6, 6)), box((4, 2, 2), (8, 6, 6))  # 64 voxels each, 32 shared
    assert dice_score(a, b) == pytest.approx(0.5)
    assert segmentation_metrics(a, b, (1, 1, 1))["dice"] == pytest.approx(0.5)


def test_sensitivity_and_precision_count_true_positives_over_target_and_prediction():
    target, pred = box((2, 2, 2), (6, 6, 6)), box((2, 2, 2), (6, 6, 4))  # pred = half the target
    m = segmentation_metrics(pred, target, (1, 1, 1))
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(1.0)


def test_surface_counts_the_volume_border_as_outside():
    full = np.ones((3, 3, 3), bool)
    assert surface(full).sum() == 26  # everything but the centre


def test_assd_between_single_voxels_uses_anisotropic_spacing():
    a, b = box((2, 2, 2), (3, 3, 3)), box((5, 2, 2), (6, 3, 3))
    assert segmentation_metrics(a, b, (2.0, 1.0, 1.0))["assd"] == pytest.approx(6.0)


def test_assd_averages_over_the_points_of_both_surfaces():
    pred = box((2, 2, 2), (3, 3, 3))
    target = pred | box((2, 5, 2), (3, 6, 3))
    # pred's point: 0 mm; target's points: 0 mm and 3 voxels x 3 mm -> (0 + 0 + 9) / 3
    assert segmentation_metrics(pred, target, (1.0, 3.0, 1.0))["assd"] == pytest.approx(3.0)


def test_assd_of_a_cube_shifted_one_voxel_along_an_anisotropic_axis():
    # 3^3 cubes (26 surface voxels each) shifted by one 2-mm voxel along x. From each cube:
    # its outer 9-voxel face lies 2 mm from the other surface, the centre of its inner face
    # 1 mm (a y-neighbour), the rest lies on the other surface: (9*2 + 1) * 2 / 52.
    a, b = box((2, 2, 2), (5, 5, 5)), box((3, 2, 2), (6, 5, 5))
    assert segmentation_metrics(a, b, (2.0, 1.0, 1.0))["assd"] == pytest.approx(38 / 52)


def test_both_masks_empty_is_a_perfect_dice_with_undefined_rates():
    empty = np.zeros((6, 6, 6), bool)
    m = segmentation_metrics(empty, empty, (1, 1, 1))
    assert m["dice"] == 1.0 and m["assd"] == 0.0
    assert math.isnan(m["sensitivity"]) and math.isnan(m["precision"])


def test_prediction_on_an_empty_target_scores_zero_dice_and_precision():
    m = segmentation_metrics(box((1, 1, 1), (3, 3, 3)), np.zeros((10, 10, 10), bool), (1, 1, 1))
    assert m["dice"] == 0.0 and m["precision"] == 0.0
    assert math.isnan(m["sensitivity"]) and math.isnan(m["assd"])


def test_empty_prediction_on_a_lesion_scores_zero_dice_and_sensitivity():
    m = segmentation_metrics(np.zeros((10, 10, 10), bool), box((1, 1, 1), (3, 3, 3)), (1, 1, 1))
    assert m["dice"] == 0.0 and m["sensitivity"] == 0.0
    assert math.isnan(m["precision"]) and math.isnan(m["assd"])


def test_ignored_voxels_are_left_out_of_every_metric():
    target = box((2, 2, 2), (5, 5, 5))
    ignore = box((7, 7, 7), (10, 10, 10))
    pred = target | box((7, 7, 7), (9, 9, 9))  # a false positive only inside the ignored region
    m = segmentation_metrics(pred, target, (1, 1, 1), ignore=ignore)
    assert m == {"dice": 1.0, "sensitivity": 1.0, "precision": 1.0, "assd": 0.0}
    assert segmentation_metrics(pred, target, (1, 1, 1))["precision"] < 1.0


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError):
        segmentation_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), (1, 1, 1))


def test_pooled_dice_is_the_dice_of_the_cases_taken_as_one_volume():
    rng = np.random.default_rng(0)
    big_t = np.zeros((12, 12, 12), bool)
    big_t[2:9, 2:9, 2:9] = True
    big_p = np.roll(big_t, 1, axis=0)
    tiny_t = np.zeros((12, 12, 12), bool)
    tiny_t[5, 5, 5:7] = True                      # a 2-voxel lesion, missed
    tiny_p = rng.random((12, 12, 12)) > 0.995     # a few false positives
    empty = np.zeros((12, 12, 12), bool)          # no lesion, nothing predicted
    pairs = [(big_p, big_t), (tiny_p, tiny_t), (empty, empty)]
    rows = pd.DataFrame([{**segmentation_metrics(p, t, (1.0, 1.0, 1.0)), "lesion_ml": t.sum() / 1000,
                          "predicted_ml": p.sum() / 1000} for p, t in pairs])
    whole = dice_score(np.concatenate([p for p, _ in pairs]), np.concatenate([t for _, t in pairs]))
    assert pooled_dice(rows) == pytest.approx(whole)
    assert rows["dice"][:2].mean() < whole - 0.3  # the per-case mean is decided by the tiny lesion
