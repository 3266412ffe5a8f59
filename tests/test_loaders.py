"""Loader specifications: channel union, modality drop, subsets, joint batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlib.data.cases import IGNORE, PreparedCase
from mmlib.data.loaders import ChannelMap, JointBatches, all_subsets, modality_drop
from mmlib.errors import MMLibError, ModalityError


def case(database, case_id, modalities, shape=(10, 12, 8), lesion=True, seed=0):
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    if lesion:
        label[4:6, 5:7, 3:5] = 1
        label[0, 0, 0] = IGNORE
    image = rng.normal(size=(len(modalities), *shape)).astype(np.float32)
    image += np.arange(1, len(modalities) + 1, dtype=np.float32)[:, None, None, None] * 10
    return PreparedCase(database, case_id, tuple(modalities), image, label, np.ones(shape, bool), (1.0, 1.0, 1.0))


def databases():
    return {"BRATS": [case("BRATS", f"b{i}", ["FLAIR", "T1", "T1c", "T2"], seed=i) for i in range(6)],
            "ATLAS": [case("ATLAS", f"a{i}", ["T1"], seed=10 + i) for i in range(2)],
            "WMH": [case("WMH", f"w{i}", ["FLAIR", "T1"], shape=(20, 20, 20), seed=20 + i) for i in range(3)]}


def channel_map():
    return ChannelMap.from_databases([["FLAIR", "T1", "T1c", "T2"], ["T1"], ["FLAIR", "T1"], ["pd", "t2"]])


def batches(seed=0, drop=True, **kw):
    args = dict(crop=8, batch_per_database=2, drop=drop, rotate_p=0.5, lesion_crop_p=0.5, seed=seed)
    args.update(kw)
    return JointBatches(databases(), channel_map(), **args)


# --------------------------------------------------------------------------- ChannelMap

def test_channel_map_is_the_union_in_mmlib_order():
    assert channel_map().modalities == ("FLAIR", "T1", "T1c", "T2", "PD")
    assert channel_map().index("t1gd") == 2


def test_channel_map_round_trips_through_a_dict():
    cmap = channel_map().with_assignments({"SWI": 4})
    assert ChannelMap.from_dict(cmap.to_dict()) == cmap


def test_assemble_places_modalities_in_their_channels_and_zeros_elsewhere():
    c = case("WMH", "w", ["FLAIR", "T1"])
    x = channel_map().assemble(c)
    assert x.shape == (5, *c.shape)
    np.testing.assert_array_equal(x[0], c.image[0])
    np.testing.assert_array_equal(x[1], c.image[1])
    assert not x[2:].any()


def test_assemble_restricted_to_a_subset_zeros_the_others():
    c = case("WMH", "w", ["FLAIR", "T1"])
    x = channel_map().assemble(c, subset=("T1",))
    assert not x[0].any() and np.array_equal(x[1], c.image[1])


def test_unknown_modality_raises_unless_assigned_a_channel():
    c = case("ISLES", "i", ["FLAIR", "DWI"])
    with pytest.raises(ModalityError, match="DWI"):
        channel_map().assemble(c)
    x = channel_map().with_assignments({"DWI": 4}).assemble(c)
    np.testing.assert_array_equal(x[4], c.image[1])


# --------------------------------------------------------------------------- modality drop, subsets

def test_modality_drop_never_drops_everything_and_the_number_dropped_is_uniform():
    rng = np.random.default_rng(0)
    keeps = np.array([modality_drop(4, rng) for _ in range(4000)])
    assert keeps.any(axis=1).all()
    dropped = np.bincount(4 - keeps.sum(axis=1), minlength=4)
    assert np.allclose(dropped / 4000, 0.25, atol=0.03)
    assert np.allclose(keeps.mean(axis=0), keeps.mean(), atol=0.04)  # no modality favoured


def test_modality_drop_never_drops_a_single_modality():
    rng = np.random.default_rng(0)
    assert all(modality_drop(1, rng)[0] for _ in range(200))


def test_all_subsets_are_every_non_empty_combination_by_size_then_order():
    subsets = all_subsets(["T2", "FLAIR", "T1c", "T1"])
    assert len(subsets) == 2 ** 4 - 1 == len(set(subsets))
    assert subsets[:4] == [("FLAIR",), ("T1",), ("T1c",), ("T2",)]
    assert subsets[-1] == ("FLAIR", "T1", "T1c", "T2")


# --------------------------------------------------------------------------- JointBatches

def test_joint_batch_shapes_and_types():
    b = next(batches())
    assert b["x"].shape == (6, 5, 8, 8, 8) and b["x"].dtype == torch.float32
    assert b["y"].shape == b["valid"].shape == (6, 1, 8, 8, 8)
    assert b["present"].shape == (6, 5) and b["present"].dtype == torch.bool
    assert set(torch.unique(b["y"]).tolist()) <= {0.0, 1.0}


def test_every_database_is_in_every_batch():
    it = batches()
    for _ in range(5):
        assert next(it)["database"] == ["BRATS"] * 2 + ["ATLAS"] * 2 + ["WMH"] * 2


def test_small_databases_are_over_sampled_and_an_epoch_is_the_largest():
    it = batches()
    assert it.epoch_length() == 3
    seen = {"BRATS": [], "ATLAS": []}
    for _ in range(it.epoch_length()):
        b = next(it)
        for db, cid in zip(b["database"], b["case_id"]):
            if db in seen:
                seen[db].append(cid)
    assert sorted(seen["BRATS"]) == [f"b{i}" for i in range(6)]
    assert len(seen["ATLAS"]) == 6 and set(seen["ATLAS"]) == {"a0", "a1"}
    assert seen["ATLAS"].count("a0") == 3  # per-database cycling: each case equally often


def test_present_channels_match_the_nonzero_channels_after_drop():
    it = batches(drop=True)
    for _ in range(5):
        b = next(it)
        nonzero = b["x"].abs().flatten(2).amax(-1) > 0
        assert torch.equal(b["present"] & nonzero, nonzero)  # a dropped channel is all zero
        assert b["present"].any(dim=1).all()
        atlas = [i for i, d in enumerate(b["database"]) if d == "ATLAS"]
        assert b["present"][atlas, 1].all()  # one-modality database never dropped


def test_without_drop_every_modality_of_a_case_is_present():
    b = next(batches(drop=False))
    assert b["present"][:2, :4].all() and not b["present"][:, 4].any()


def test_crops_smaller_volumes_are_padded_with_zeros():
    b = next(batches(crop=16, rotate_p=0.0))
    brats = b["x"][0]  # BRATS volumes are 10 x 12 x 8: a 16^3 crop is mostly padding
    assert (brats[0] == 0).sum() >= 16 ** 3 - 10 * 12 * 8


def test_same_seed_gives_the_same_batches():
    a, b = batches(seed=3), batches(seed=3)
    for _ in range(3):
        ba, bb = next(a), next(b)
        assert torch.equal(ba["x"], bb["x"]) and ba["case_id"] == bb["case_id"]


def test_resuming_from_state_dict_equals_an_uninterrupted_run():
    straight = batches(seed=1)
    expected = [next(straight) for _ in range(6)]
    first = batches(seed=1)
    for _ in range(4):
        next(first)
    state = first.state_dict()
    resumed = batches(seed=1)
    resumed.load_state_dict(state)
    for want in expected[4:]:
        got = next(resumed)
        assert torch.equal(got["x"], want["x"]) and torch.equal(got["y"], want["y"])
        assert got["case_id"] == want["case_id"]


def test_ignore_label_gives_valid_zero():
    c = case("WMH", "w", ["FLAIR", "T1"], shape=(8, 8, 8))
    c.label[:] = IGNORE
    c.label[2, 2, 2] = 1
    it = JointBatches({"WMH": [c]}, channel_map(), crop=8, batch_per_database=1, drop=False,
                      rotate_p=0.0, lesion_crop_p=0.0, seed=0)
    b = next(it)
    assert b["valid"].sum() == 1 and b["y"].sum() == 1 and b["valid"][0, 0, 2, 2, 2] == 1


def test_lesion_crops_contain_the_lesion():
    it = batches(crop=4, rotate_p=0.0, lesion_crop_p=1.0)
    for _ in range(3):
        assert (next(it)["y"].flatten(1).amax(1) == 1).all()


def test_assemble_needs_channels_only_for_the_modalities_given():
    from mmlib.data.cases import PreparedCase
    from mmlib.data.loaders import ChannelMap

    img = np.stack([np.full((4, 4, 4), 1.0, np.float32), np.full((4, 4, 4), 2.0, np.float32)])
    case = PreparedCase("ISLES", "c1", ("FLAIR", "T1"), img, np.zeros((4, 4, 4), np.uint8),
                        np.ones((4, 4, 4), bool), (1.0, 1.0, 1.0))
    t1_only = ChannelMap.from_databases([("T1",)])
    out = t1_only.assemble(case, subset=("T1",))
    assert out.shape == (1, 4, 4, 4) and np.all(out[0] == 2.0)


# --------------------------------------------------------------------------- counter-based batches

def _same_batch(a, b):
    return all(torch.equal(a[k], b[k]) for k in ("x", "y", "valid", "present")) and \
        a["case_id"] == b["case_id"] and a["database"] == b["database"]


def test_batch_of_a_step_is_the_same_in_any_order_and_equals_iteration():
    it = batches(seed=2)
    iterated = [next(it) for _ in range(5)]
    direct = batches(seed=2)
    for step in (4, 0, 3, 3, 1, 2):
        assert _same_batch(direct.batch(step), iterated[step])
    assert [b["step"] for b in iterated] == [0, 1, 2, 3, 4]


def test_different_seeds_give_different_batches():
    a, b = batches(seed=0), batches(seed=1)
    assert not all(torch.equal(a.batch(s)["x"], b.batch(s)["x"]) for s in range(3))


def test_a_database_samples_do_not_depend_on_the_other_databases():
    sets = databases()
    both = JointBatches(sets, channel_map(), crop=8, batch_per_database=2, drop=True, rotate_p=0.5,
                        lesion_crop_p=0.5, seed=4)
    alone = JointBatches({"WMH": sets["WMH"]}, channel_map(), crop=8, batch_per_database=2, drop=True,
                         rotate_p=0.5, lesion_crop_p=0.5, seed=4)
    for step in range(4):
        full, part = both.batch(step), alone.batch(step)
        wmh = [i for i, d in enumerate(full["database"]) if d == "WMH"]
        assert torch.equal(full["x"][wmh], part["x"]) and [full["case_id"][i] for i in wmh] == part["case_id"]


def test_each_epoch_of_a_database_is_a_new_permutation_of_its_cases():
    it = batches(seed=0)
    orders = [[it.case_at("BRATS", e * 6 + i) for i in range(6)] for e in range(4)]
    assert all(sorted(o) == list(range(6)) for o in orders)
    assert len({tuple(o) for o in orders}) > 1


@pytest.mark.parametrize("world_size", [1, 2, 4, 6, 8])
def test_ranks_draw_disjoint_shares_whose_union_is_the_global_batch(world_size):
    it = batches(seed=5)
    whole = it.batch(3)
    assert whole["global_batch"] == 6 and whole["index"] == list(range(6))
    seen = []
    for rank in range(world_size):
        share = it.batch(3, rank=rank, world_size=world_size)
        assert share["global_batch"] == 6
        assert all(i % world_size == rank for i in share["index"])
        assert torch.equal(share["x"], whole["x"][share["index"]])
        assert torch.equal(share["y"], whole["y"][share["index"]])
        assert share["case_id"] == [whole["case_id"][i] for i in share["index"]]
        seen += share["index"]
    assert sorted(seen) == list(range(6))


def test_a_rank_outside_the_world_raises():
    with pytest.raises(MMLibError):
        batches().batch(0, rank=2, world_size=2)


def test_rotations_use_only_the_planes_asked_for():
    import dataclasses

    it = batches(rotate_p=1.0, rotate_planes=((0, 2),), crop=6)
    plans = [p for s in range(10) for p in it.plan(s)]
    assert {p.plane for p in plans} == {(0, 2)} and {p.k for p in plans} == {1, 2, 3}
    for p in plans[:6]:
        x, label, _ = it._draw(p)
        x0, label0, _ = it._draw(dataclasses.replace(p, k=0))
        np.testing.assert_array_equal(x, np.rot90(x0, p.k, axes=(1, 3)))
        np.testing.assert_array_equal(label, np.rot90(label0, p.k, axes=(0, 2)))


def test_default_rotations_cover_the_three_planes_at_rate_rotate_p():
    it = batches(rotate_p=0.3)
    plans = [p for s in range(300) for p in it.plan(s)]
    rotated = [p for p in plans if p.k]
    assert abs(len(rotated) / len(plans) - 0.3) < 0.04
    assert {p.plane for p in rotated} == {(0, 1), (0, 2), (1, 2)}


@pytest.mark.parametrize("planes", [(), ((0, 0),), ((0, 3),), ((0, 1, 2),)])
def test_bad_rotation_planes_raise(planes):
    with pytest.raises(MMLibError, match="rotate_planes"):
        batches(rotate_planes=planes)


def test_drop_keeps_follow_modality_drop_distribution():
    it = batches(drop=True)
    brats = [p.keep for s in range(400) for p in it.plan(s) if p.database == "BRATS"]
    dropped = np.bincount([4 - sum(k) for k in brats], minlength=4) / len(brats)
    assert np.allclose(dropped, 0.25, atol=0.05)  # n ~ U{0..3} of 4 modalities dropped


def test_state_dict_is_the_step_and_resumes_iteration():
    it = batches(seed=1)
    for _ in range(3):
        next(it)
    state = it.state_dict()
    assert state["step"] == 3
    other = batches(seed=1)
    other.load_state_dict(state)
    assert _same_batch(next(other), next(it))
