"""The training recipe a preset may name: loss, learning-rate schedule, warm-up."""

from __future__ import annotations

import math

import pytest
import torch

from mmlib.engine.losses import bce_loss, dice_loss, training_loss
from mmlib.engine.train import COSINE_FLOOR, LRSchedule
from mmlib.errors import MMLibError
from mmlib.presets import load_preset


def test_step_schedule_is_the_papers_drop():
    s = LRSchedule(1e-3, 100, "step", drop_step=75)
    assert [s.at(i) for i in (0, 74)] == [1e-3, 1e-3]
    assert s.at(75) == pytest.approx(1e-4) and s.at(99) == pytest.approx(1e-4)
    assert LRSchedule(1e-3, 100, "step", drop_step=None).at(99) == 1e-3  # no drop step: constant


def test_cosine_schedule_warms_up_then_decays_to_its_floor():
    s = LRSchedule(2e-3, 100, "cosine", warmup=10)
    warm = [s.at(i) for i in range(10)]
    assert warm == sorted(warm) and warm[0] == pytest.approx(2e-4) and s.at(9) == pytest.approx(2e-3)
    decay = [s.at(i) for i in range(10, 100)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert s.at(10) == pytest.approx(2e-3) and s.at(99) == pytest.approx(2e-3 * COSINE_FLOOR)
    mid = 10 + (99 - 10) / 2
    assert s.at(math.ceil(mid)) < 2e-3 * 0.55 and s.at(math.floor(mid)) > 2e-3 * 0.45


def test_unknown_schedule_and_loss_are_refused():
    with pytest.raises(MMLibError, match="schedule 'poly'"):
        LRSchedule(1e-3, 10, "poly")
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        training_loss("focal", torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2), torch.ones(1, 1, 2, 2, 2))


def test_dice_bce_adds_the_cross_entropy_over_valid_voxels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 4, 4, 4, generator=g)
    y = (torch.rand(2, 1, 4, 4, 4, generator=g) > 0.7).float()
    valid = torch.ones_like(y)
    valid[:, :, 0] = 0
    both = training_loss("dice_bce", logits, y, valid, batch=False)
    assert both == pytest.approx(float(dice_loss(logits, y, valid, batch=False) + bce_loss(logits, y, valid)))
    # Invalid voxels do not count: changing the logits there changes nothing.
    moved = logits.clone()
    moved[:, :, 0] += 5.0
    assert bce_loss(moved, y, valid) == pytest.approx(float(bce_loss(logits, y, valid)))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, :, 1:], y[:, :, 1:])
    assert bce_loss(logits, y, valid) == pytest.approx(float(expected), rel=1e-5)


def test_the_papers_recipe_adds_nothing_to_a_models_identity_and_another_does():
    quick = load_preset("quick")
    settings = quick.training_settings()
    assert not {"loss", "lr_schedule", "warmup_fraction"} & set(settings) or quick.loss != "dice"
    paper = quick.with_(loss="dice", lr_schedule="step", warmup_fraction=0.0).training_settings()
    assert not {"loss", "lr_schedule", "warmup_fraction"} & set(paper)
    other = quick.with_(loss="dice_bce", lr_schedule="cosine", warmup_fraction=0.05).training_settings()
    assert (other["loss"], other["lr_schedule"], other["warmup_fraction"]) == ("dice_bce", "cosine", 0.05)


def test_the_deviations_state_a_presets_recipe():
    from mmlib.experiments.plan.deviations import deviations

    smoke = load_preset("smoke")
    rows = {d.aspect: d for d in deviations(smoke.with_(loss="dice_bce", lr_schedule="cosine", warmup_fraction=0.1))}
    assert rows["loss"].differs and "cross-entropy" in rows["loss"].ours
    assert "cosine" in rows["schedule"].ours and "warm-up" in rows["schedule"].ours
    assert not {d.aspect: d for d in deviations(smoke.with_(loss="dice"))}["loss"].differs


def test_train_follows_the_recipe_in_its_config(tmp_path):
    """train() steps at the schedule's rates (losses.csv says which) and learns under Dice + BCE."""
    import pandas as pd

    from tests.test_engine import CMAP, CONFIG, ToyBatches, tiny_net
    from mmlib.engine.train import TrainSettings, train

    config = {**CONFIG, "loss": "dice_bce", "lr_schedule": "cosine", "warmup_steps": 3}
    train(tiny_net(), ToyBatches(), TrainSettings(30, 1e-2, None, device="cpu", progress=False), tmp_path, config,
          CMAP)
    log = pd.read_csv(tmp_path / "losses.csv")
    plan = LRSchedule(1e-2, 30, "cosine", None, 3)
    assert log["lr"].tolist() == pytest.approx([plan.at(s) for s in range(30)])
    assert log["loss"].iloc[-5:].mean() < log["loss"].iloc[:5].mean()
