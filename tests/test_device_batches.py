"""DeviceBatches: the tensor-op path of JointBatches gives the numpy path's samples, on CPU
tensors here (the same code runs on a GPU): images up to float16 rounding, labels exactly."""

from __future__ import annotations

import pytest
import torch

from mmlib.data.device_batches import DeviceBatches
from tests.test_loaders import batches


def _half(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


def assert_matches(got: dict, want: dict, exact_images: bool = False):
    assert got["x"].dtype == torch.float32 and got["x"].shape == want["x"].shape
    assert torch.equal(got["x"], want["x"] if exact_images else _half(want["x"]))
    for key in ("y", "valid", "present"):
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
    for key in ("database", "case_id", "index", "global_batch", "step"):
        assert got[key] == want[key], key


@pytest.mark.parametrize("budget", [None, 0], ids=["resident", "host-with-prefetch"])
def test_device_batches_equal_the_numpy_path_sample_for_sample(budget):
    # crop 12 > BRATS's 10 x 12 x 8 volumes: padding; rotate_p and lesion crops: all branches.
    source = batches(seed=7, crop=12, rotate_p=0.6, lesion_crop_p=0.5)
    device = DeviceBatches(batches(seed=7, crop=12, rotate_p=0.6, lesion_crop_p=0.5), "cpu",
                           memory_budget=budget)
    assert device.resident == (budget is None)
    try:
        rotated = 0
        for step in range(8):
            assert_matches(device.batch(step), source.batch(step))
            rotated += sum(p.k > 0 for p in source.plan(step))
        assert rotated > 0
    finally:
        device.close()


def test_float32_storage_is_exact():
    source = batches(seed=3, rotate_p=0.5)
    device = source.to("cpu", storage_dtype=torch.float32)
    for step in range(3):
        assert_matches(device.batch(step), source.batch(step), exact_images=True)


def test_prefetch_serves_steps_asked_out_of_order_and_sharded():
    source = batches(seed=11, rotate_p=0.5)
    device = DeviceBatches(batches(seed=11, rotate_p=0.5), "cpu", memory_budget=0)
    try:
        for step, rank, world in [(5, 0, 1), (6, 0, 1), (2, 0, 1), (3, 1, 2), (4, 1, 2), (4, 0, 2)]:
            assert_matches(device.batch(step, rank, world), source.batch(step, rank, world))
    finally:
        device.close()


def test_iteration_and_state_follow_the_source():
    device = batches(seed=1).to("cpu")
    first = [next(device) for _ in range(3)]
    assert [b["step"] for b in first] == [0, 1, 2] and device.state_dict()["step"] == 3
    again = batches(seed=1).to("cpu")
    again.load_state_dict({**device.state_dict(), "step": 1})
    assert_matches(next(again), first[1], exact_images=True)


def test_volumes_are_stored_in_half_precision_and_uint8():
    device = batches().to("cpu")
    assert all(t.dtype == torch.float16 for ts in device.images.values() for t in ts)
    assert all(t.dtype == torch.uint8 for ts in device.labels.values() for t in ts)
    assert device.nbytes == sum(t.numel() * 2 + lab.numel() for name in device.images
                                for t, lab in zip(device.images[name], device.labels[name]))
