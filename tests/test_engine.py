"""Specification of mmlib.engine: checkpoints, the training loop, inference, evaluation rows
and the threshold baseline. Tiny stand-in networks and 16^3 volumes keep it fast."""

import importlib
import importlib.util
from dataclasses import fields, replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mmlib.data.cases import IGNORE, PreparedCase
from mmlib.data.loaders import ChannelMap, JointBatches
from mmlib.engine import checkpoint as ckpt
from mmlib.engine.baselines import threshold_baseline
from mmlib.engine.device import cpu_bf16_native
from mmlib.engine.evaluate import (EvalSettings, SlidingWindow, evaluate_all_combinations, evaluate_cases, predict_case,
                                   predict_subsets)
from mmlib.engine.train import TrainSettings, train
from mmlib.errors import CheckpointError

CMAP = ChannelMap(("FLAIR", "T1", "T2"))
CONFIG = {"arch": "multiunet", "width": 0.25}


class TinyNet(nn.Module):
    """A stand-in for the U-Nets: forward(x, present) -> logits (B, 1, X, Y, Z), with dropout."""

    def __init__(self, in_channels: int = 3, needs_multiple_of_16: bool = False):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 4, 3, padding=1)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Conv3d(4, 1, 1)
        self.needs_multiple_of_16 = needs_multiple_of_16
        self.seen_present = []

    def forward(self, x, present=None):
        if self.needs_multiple_of_16:
            assert all(s % 16 == 0 for s in x.shape[2:]), x.shape
        self.seen_present.append(present)
        return self.head(self.drop(torch.relu(self.conv(x))))


class ThresholdNet(nn.Module):
    """A 'perfect' model for the toy cases below: lesion where channel 0 > 0.5."""

    def forward(self, x, present=None):
        return 10.0 * (x[:, :1] - 0.5)


class ToyBatches:
    """Resumable iterator of learnable batches: y = channel 0 > 0.5. Raises KeyboardInterrupt
    when asked for batch number `interrupt_at`, before drawing it."""

    def __init__(self, seed: int = 0, interrupt_at: int | None = None):
        self.rng, self.step, self.interrupt_at = np.random.default_rng(seed), 0, interrupt_at

    def __iter__(self):
        return self

    def __next__(self):
        if self.step == self.interrupt_at:
            raise KeyboardInterrupt
        self.step += 1
        x = self.rng.normal(size=(2, 3, 16, 16, 16)).astype(np.float32)
        y = (x[:, :1] > 0.5).astype(np.float32)
        valid = np.ones_like(y)
        valid[:, :, :2] = 0
        return {"x": torch.from_numpy(x), "y": torch.from_numpy(y), "valid": torch.from_numpy(valid),
                "present": torch.ones(2, 3, dtype=torch.bool), "database": ["A", "B"]}

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "step": self.step}

    def load_state_dict(self, state):
        self.rng.bit_generator.state, self.step = state["rng"], state["step"]


def tiny_net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def settings_and_rest(steps: int, kw: dict) -> tuple[TrainSettings, dict]:
    """train()'s settings from keyword arguments, and the arguments that are not settings."""
    names = {f.name for f in fields(TrainSettings)}
    return (TrainSettings(steps, **{k: v for k, v in kw.items() if k in names}),
            {k: v for k, v in kw.items() if k not in names})


def run(out_dir, steps, model=None, batches=None, **kw):
    settings, rest = settings_and_rest(steps, {"lr": 1e-2, "lr_drop_step": 0, "device": "cpu", "progress": False,
                                               **kw})
    return train(model or tiny_net(), batches or ToyBatches(), settings, out_dir, rest.pop("config", CONFIG), CMAP,
                 **rest)


def toy_case(case_id: str, seed: int, modalities=("FLAIR", "T1"), shape=(16, 16, 16)) -> PreparedCase:
    """Channel 0 is bright (> 0.5) exactly on the lesion; a corner of the label is IGNORE."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    label[4:9, 5:10, 3:8] = 1
    image = rng.uniform(-1, 0.4, size=(len(modalities), *shape)).astype(np.float32)
    image[0][label == 1] = rng.uniform(2, 3, size=int((label == 1).sum()))
    label[-2:, -2:, -2:] = IGNORE
    return PreparedCase("TOY", case_id, tuple(modalities), image, label,
                        np.ones(shape, bool), (1.0, 1.0, 1.5))


# --- checkpoints -------------------------------------------------------------------------

def test_checkpoint_round_trip_restores_weights_state_and_numpy_rng(tmp_path):
    model = tiny_net()
    np_state = np.random.RandomState(3).get_state(legacy=False)  # holds a uint32 array
    path = ckpt.save_checkpoint(tmp_path / "c.pt", model, torch.optim.Adam(model.parameters()),
                                {"lr": 1e-3}, 7, CONFIG, CMAP.to_dict(), {"torch": torch.get_rng_state()},
                                extra={"numpy": np_state})
    state = ckpt.load_checkpoint(path)
    assert state["step"] == 7 and state["config"] == CONFIG and state["channel_map"] == CMAP.to_dict()
    fresh = tiny_net(seed=1)
    ckpt.load_weights(fresh, state, path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    key = state["extra"]["numpy"]["state"]["key"]
    assert isinstance(key, np.ndarray) and key.dtype == np.uint32
    assert np.array_equal(key, np_state["state"]["key"])


def test_corrupt_checkpoint_raises_checkpoint_error_naming_the_file(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError) as err:
        ckpt.load_checkpoint(path)
    assert err.value.file == str(path)


def test_missing_checkpoint_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "nothing.pt")


def test_checkpoint_of_another_network_does_not_load(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "c.pt", TinyNet(3), None, None, 0, CONFIG, CMAP.to_dict())
    with pytest.raises(CheckpointError, match="does not fit"):
        ckpt.load_weights(TinyNet(5), ckpt.load_checkpoint(path), path)


def test_interrupted_save_keeps_the_old_checkpoint_and_leaves_no_partial_file(tmp_path, monkeypatch):
    path = ckpt.save_checkpoint(tmp_path / "c.pt", tiny_net(), None, None, 1, CONFIG, CMAP.to_dict())

    def half_write(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", half_write)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, tiny_net(), None, None, 2, CONFIG, CMAP.to_dict())
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


# --- training ----------------------------------------------------------------------------

def test_training_decreases_the_loss_on_a_learnable_toy(tmp_path):
    losses = run(tmp_path, 20, lr=0.1).losses
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1


def test_training_writes_final_checkpoint_and_loss_table(tmp_path):
    result = run(tmp_path, 3)
    assert result.path == tmp_path / "final.pt" and result.path.exists()
    assert (tmp_path / "last.pt").exists()
    table = pd.read_csv(tmp_path / "losses.csv")
    assert list(table["loss"]) == pytest.approx(result.losses)
    assert ckpt.load_checkpoint(result.path)["config"]["in_channels"] == 3


def test_learning_rate_drops_tenfold_at_lr_drop_step(tmp_path):
    run(tmp_path / "a", 2, lr=1e-3, lr_drop_step=2)
    run(tmp_path / "b", 3, lr=1e-3, lr_drop_step=2)

    def lr_of(out_dir):
        return ckpt.load_checkpoint(out_dir / "final.pt")["optimizer"]["param_groups"][0]["lr"]

    assert lr_of(tmp_path / "a") == pytest.approx(1e-3)  # steps 0, 1
    assert lr_of(tmp_path / "b") == pytest.approx(1e-4)  # step 2
    assert list(pd.read_csv(tmp_path / "b" / "losses.csv")["lr"]) == pytest.approx([1e-3, 1e-3, 1e-4])


def _same_parameters(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    straight = tiny_net()
    straight_losses = run(tmp_path / "straight", 6, model=straight, lr_drop_step=4).losses

    run(tmp_path / "split", 3, lr_drop_step=4)
    resumed = tiny_net(seed=99)  # different init: the weights must come from the checkpoint
    resumed_losses = run(tmp_path / "split", 6, model=resumed, lr_drop_step=4).losses
    assert resumed_losses == straight_losses
    assert _same_parameters(straight, resumed)


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    straight = tiny_net()
    run(tmp_path / "straight", 5, model=straight, checkpoint_every=2)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", 5, batches=ToyBatches(interrupt_at=3), checkpoint_every=2)
    assert ckpt.load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 3
    resumed = tiny_net(seed=99)
    run(tmp_path / "cut", 5, model=resumed, checkpoint_every=2)
    assert _same_parameters(straight, resumed)


def joint_batches(seed: int = 0, **kw) -> JointBatches:
    cases = [toy_case(f"c{i}", i) for i in range(3)]
    args = dict(crop=16, batch_per_database=2, drop=True, rotate_p=0.5, lesion_crop_p=0.5, seed=seed)
    return JointBatches({"TOY": cases}, CMAP, **{**args, **kw})


class InterruptedBatches(JointBatches):
    """JointBatches that raise KeyboardInterrupt when asked for batch `interrupt_at` (once)."""

    interrupt_at = None

    def batch(self, step, rank=0, world_size=1):
        if step == self.interrupt_at:
            self.interrupt_at = None
            raise KeyboardInterrupt
        return super().batch(step, rank, world_size)


def test_resume_with_joint_batches_needs_only_the_step_and_equals_an_uninterrupted_run(tmp_path):
    straight = tiny_net()
    want = run(tmp_path / "straight", 6, model=straight, batches=joint_batches(), lr_drop_step=4).losses

    run(tmp_path / "split", 3, batches=joint_batches(), lr_drop_step=4)
    assert ckpt.load_checkpoint(tmp_path / "split" / "last.pt")["extra"]["batches"] == {"step": 3}
    resumed = tiny_net(seed=99)
    got = run(tmp_path / "split", 6, model=resumed, batches=joint_batches(), lr_drop_step=4).losses
    assert got == want and _same_parameters(straight, resumed)


def test_ctrl_c_with_joint_batches_resumes_exactly(tmp_path):
    straight = tiny_net()
    run(tmp_path / "straight", 5, model=straight, batches=joint_batches())

    cut = InterruptedBatches({"TOY": joint_batches().sets["TOY"]}, CMAP, crop=16, batch_per_database=2,
                             drop=True, rotate_p=0.5, lesion_crop_p=0.5, seed=0)
    cut.interrupt_at = 3
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", 5, batches=cut, log_every=2)
    state = ckpt.load_checkpoint(tmp_path / "cut" / "last.pt")
    assert state["step"] == 3 and len(state["extra"]["losses"]) == 3
    resumed = tiny_net(seed=99)
    run(tmp_path / "cut", 5, model=resumed, batches=joint_batches())
    assert _same_parameters(straight, resumed)


def test_train_seeds_torch_itself_so_the_global_rng_before_does_not_matter(tmp_path):
    a, b = tiny_net(), tiny_net()
    torch.manual_seed(123)
    la = run(tmp_path / "a", 3, model=a, batches=joint_batches(), seed=5).losses
    torch.manual_seed(456)
    torch.rand(10)
    lb = run(tmp_path / "b", 3, model=b, batches=joint_batches(), seed=5).losses
    assert la == lb and _same_parameters(a, b)


def test_losses_are_read_back_every_log_every_steps_not_every_step(tmp_path, monkeypatch):
    import traceback

    want = run(tmp_path / "each", 7, log_every=1).losses
    reads = []  # host reads of tensors by mmlib's engine (each one waits for a GPU)
    item, tolist = torch.Tensor.item, torch.Tensor.tolist

    def counted(fn):
        def wrapper(self, *args, **kwargs):
            if "mmlib/engine" in traceback.extract_stack()[-2].filename:
                reads.append(self.numel())
            return fn(self, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(torch.Tensor, "item", counted(item))
    monkeypatch.setattr(torch.Tensor, "tolist", counted(tolist))
    got = run(tmp_path / "every3", 7, log_every=3).losses
    monkeypatch.undo()
    assert got == want and len(got) == 7
    assert reads == [3, 3, 1]  # after steps 3 and 6, and at the end


def test_checkpoints_are_written_by_the_clock_and_at_the_end(tmp_path, monkeypatch):
    train_module = importlib.import_module("mmlib.engine.train")

    saved = []
    monkeypatch.setattr(train_module, "save_checkpoint",
                        lambda path, *args, **kw: saved.append((path.name, args[3])))

    class Clock:  # every reading is 100 s after the previous one: the start, then one per step
        now = 0.0

        @classmethod
        def monotonic(cls):
            cls.now += 100.0
            return cls.now

    import mmlib.engine.checkpoint as checkpoint_module

    monkeypatch.setattr(checkpoint_module, "time", Clock)
    run(tmp_path / "a", 4, checkpoint_seconds=250)
    assert saved == [("last.pt", 3), ("last.pt", 4), ("final.pt", 4)]  # 300 s after the start
    saved.clear()
    run(tmp_path / "b", 4, checkpoint_seconds=1e9)
    assert saved == [("last.pt", 4), ("final.pt", 4)]


class DtypeNet(TinyNet):
    """Records the dtype its first conv computes in."""

    def forward(self, x, present=None):
        h = self.conv(x)
        self.seen_dtype = h.dtype
        return self.head(torch.relu(h))


@pytest.mark.skipif(not cpu_bf16_native(), reason="this CPU has no native bf16")
def test_amp_on_cpu_runs_the_network_in_bf16_and_the_loss_in_fp32(tmp_path):
    torch.manual_seed(0)
    net = DtypeNet()
    losses = run(tmp_path / "bf16", 3, model=net, amp=True).losses
    assert net.seen_dtype == torch.bfloat16 and all(np.isfinite(losses))
    assert all(p.dtype == torch.float32 for p in net.parameters())
    run(tmp_path / "fp32", 1, model=net, amp=False)
    assert net.seen_dtype == torch.float32


def test_amp_on_a_cpu_without_bf16_warns_and_trains_in_fp32(tmp_path, monkeypatch):
    from mmlib.engine import device as device_module

    monkeypatch.setattr(device_module, "cpu_bf16_native", lambda: False)
    torch.manual_seed(0)
    net = DtypeNet()
    with pytest.warns(UserWarning, match="float32"):
        run(tmp_path, 1, model=net, amp=True)
    assert net.seen_dtype == torch.float32


class MixedDtypeNet(TinyNet):
    """Writes its features into a float32 tensor with index_put, which fails under autocast."""

    def forward(self, x, present=None):
        h = torch.relu(self.conv(x))
        z = x.new_zeros((x.shape[0], *h.shape[1:]))
        z = z.index_put((torch.arange(x.shape[0]),), self.drop(h))
        return self.head(z)


@pytest.mark.skipif(not cpu_bf16_native(), reason="this CPU has no native bf16")
def test_a_model_that_fails_under_autocast_warns_and_trains_like_fp32(tmp_path):
    torch.manual_seed(0)
    fp32, amp = MixedDtypeNet(), MixedDtypeNet()
    amp.load_state_dict(fp32.state_dict())
    want = run(tmp_path / "fp32", 3, model=fp32, batches=joint_batches()).losses
    with pytest.warns(UserWarning, match="fails under autocast"):
        got = run(tmp_path / "amp", 3, model=amp, batches=joint_batches(), amp=True).losses
    assert got == want and _same_parameters(fp32, amp)


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_is_an_option(tmp_path, channels_last):
    net = tiny_net()
    run(tmp_path, 1, model=net, channels_last=channels_last)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    assert net.conv.weight.is_contiguous(memory_format=fmt)


def test_compiled_forward_trains_like_the_plain_one(tmp_path):
    plain, compiled = tiny_net(), tiny_net()
    want = run(tmp_path / "plain", 3, model=plain, batches=joint_batches()).losses
    got = run(tmp_path / "compiled", 3, model=compiled, batches=joint_batches(),
              compile={"backend": "eager"}).losses
    assert got == want and _same_parameters(plain, compiled)
    assert "_orig_mod" not in "".join(ckpt.load_checkpoint(tmp_path / "compiled" / "final.pt")["model"])


def test_batches_drawn_on_the_device_train_and_resume(tmp_path):
    straight = tiny_net()
    want = run(tmp_path / "straight", 4, model=straight, batches=joint_batches(), data_on_device=True).losses
    run(tmp_path / "split", 2, batches=joint_batches(), data_on_device=True)
    resumed = tiny_net(seed=3)
    got = run(tmp_path / "split", 4, model=resumed, batches=joint_batches(), data_on_device=True).losses
    assert got == want and _same_parameters(straight, resumed)


# --- inference and evaluation -------------------------------------------------------------

def test_predict_case_returns_the_input_shape_for_sizes_not_divisible_by_16():
    model = TinyNet(2, needs_multiple_of_16=True)
    pred = predict_case(model, np.zeros((2, 20, 17, 13), np.float32), SlidingWindow(16, 0.25, "cpu"))
    assert pred.shape == (20, 17, 13) and pred.dtype == bool


def test_evaluate_cases_scores_a_perfect_model_with_dice_one():
    cases = [toy_case("c0", 0), toy_case("c1", 1)]
    rows = evaluate_cases(ThresholdNet(), cases, CMAP, EvalSettings(16, 0.25, "cpu", progress=False),
                          model_name="perfect", extra={"seed": 0})
    assert list(rows["case_id"]) == ["c0", "c1"]
    assert set(rows["subset"]) == {"FLAIR+T1"} and set(rows["n_modalities"]) == {2}
    assert rows["dice"].tolist() == [1.0, 1.0] and rows["assd"].tolist() == [0.0, 0.0]
    assert set(rows["model"]) == {"perfect"} and set(rows["seed"]) == {0}
    assert rows["lesion_ml"].iloc[0] == pytest.approx(125 * 1.5 / 1000)


def test_evaluate_cases_feeds_only_the_subset_and_marks_its_channels_present():
    model = TinyNet(3)
    rows = evaluate_cases(model, [toy_case("c0", 0)], CMAP, EvalSettings(16, 0.0, "cpu", progress=False),
                          subset=["T1"])
    assert rows["subset"].tolist() == ["T1"] and rows["n_modalities"].tolist() == [1]
    # (on CPU a single window is run as a batch of two identical ones, for speed)
    assert all(row == [False, True, False] for row in model.seen_present[-1].tolist())


def test_evaluate_all_combinations_gives_one_row_per_case_and_non_empty_subset():
    cases = [toy_case("c0", 0, ("FLAIR", "T1", "T2")), toy_case("c1", 1, ("FLAIR", "T1", "T2"))]
    rows = evaluate_all_combinations(TinyNet(3), cases, CMAP, EvalSettings(16, 0.0, "cpu", progress=False),
                                     model_name="tiny", extra={"training": "drop"})
    assert len(rows) == 2 * (2**3 - 1)
    assert sorted(rows.groupby("case_id").size()) == [7, 7]
    assert {"FLAIR", "T1+T2", "FLAIR+T1+T2"} <= set(rows["subset"])
    assert rows.groupby("subset")["n_modalities"].first()["FLAIR+T2"] == 2
    assert set(rows["training"]) == {"drop"}


class PresenceNet(nn.Module):
    """Checks every window against its `present` row: absent channels all zero, present ones
    not (the toy images below are non-zero everywhere). Records the batch sizes it sees."""

    def __init__(self):
        super().__init__()
        self.batch_sizes, self.rows = [], set()

    def forward(self, x, present=None):
        self.batch_sizes.append(x.shape[0])
        nonzero = x.flatten(2).abs().amax(-1) > 0
        assert torch.equal(nonzero, present), (nonzero, present)
        self.rows.update(tuple(r) for r in present.tolist())
        return x[:, :1] * 0.0


def dense_case(case_id="d0", modalities=("FLAIR", "T1", "T2"), shape=(20, 17, 13)) -> PreparedCase:
    case = toy_case(case_id, 0, modalities, shape)
    case.image[:] = np.abs(case.image) + 0.1  # no zero voxel: a channel's absence shows
    return case


def test_batched_evaluation_feeds_each_window_its_own_subsets_present_mask():
    net = PresenceNet()
    rows = evaluate_all_combinations(net, [dense_case()], CMAP,
                                     EvalSettings(16, 0.5, "cpu", sw_batch=16, progress=False))
    assert len(rows) == 7 and len(net.rows) == 7
    assert max(net.batch_sizes) == 16  # 4 windows a subset: windows of 4 subsets in one pass


def test_cpu_inference_never_runs_a_batch_of_one():
    net = PresenceNet()
    evaluate_cases(net, [dense_case(shape=(16, 16, 16))], CMAP, EvalSettings(16, 0.0, "cpu", progress=False))
    assert net.batch_sizes == [2]  # one window, run twice
    net.batch_sizes.clear()
    # 17 windows per subset: the last pass of SW_BATCH_SUBSETS = 16 would hold one
    predict_subsets(net, dense_case(shape=(16, 16, 16 * 17)).image[:1].repeat(3, 0),
                    np.array([[True, True, True]]), SlidingWindow(16, 0.0, "cpu", sw_batch=16))
    assert net.batch_sizes == [16, 2]


def real_multiunet(in_channels: int = 3):
    from mmlib.models import build_model

    torch.manual_seed(0)
    return build_model("multiunet", in_channels, 0.25).eval()


@pytest.mark.skipif(importlib.util.find_spec("mmlib.models") is None, reason="mmlib.models not written yet")
def test_batched_evaluation_gives_bit_for_bit_the_masks_of_one_pass_per_subset():
    model = real_multiunet()
    cases = [toy_case("c0", 0, ("FLAIR", "T1", "T2"), shape=(40, 36, 20)),
             toy_case("c1", 1, ("FLAIR", "T2"), shape=(33, 32, 34))]
    # the masks themselves (rows only carry their metrics)
    image = CMAP.assemble(cases[0])
    presents = np.array([[s in sub for s in CMAP.modalities] for sub in
                         [("FLAIR",), ("T1", "T2"), ("FLAIR", "T1", "T2")]])
    together = predict_subsets(model, image, presents, SlidingWindow(32, 0.25, "cpu"))
    for pres, mask in zip(presents, together):
        alone = predict_case(model, np.where(pres[:, None, None, None], image, 0.0), SlidingWindow(32, 0.25, "cpu"),
                             pres)
        assert np.array_equal(mask, alone)
    assert 0.02 < together.mean() < 0.98  # a mix of lesion and background: the test can fail
    settings = EvalSettings(32, 0.25, "cpu", progress=False)
    batched = evaluate_all_combinations(model, cases, CMAP, settings)
    one_by_one = evaluate_all_combinations(model, cases, CMAP, replace(settings, batched=False))
    pd.testing.assert_frame_equal(batched, one_by_one)
    assert len(batched) == 7 + 3


def test_evaluate_cases_with_several_subsets_equals_one_call_per_subset():
    cases = [toy_case("c0", 0, ("FLAIR", "T1", "T2")), toy_case("c1", 1, ("FLAIR", "T1", "T2"))]
    subsets = [("T1",), ("FLAIR", "T2"), ("FLAIR",)]
    settings, kw = EvalSettings(16, 0.25, "cpu", progress=False), dict(extra={"seed": 1})
    together = evaluate_cases(ThresholdNet(), cases, CMAP, settings, subsets=subsets, **kw)
    apart = pd.concat([evaluate_cases(ThresholdNet(), cases, CMAP, settings, subset=s, **kw) for s in subsets],
                      ignore_index=True)
    pd.testing.assert_frame_equal(together, apart)
    assert together["subset"].tolist() == ["T1", "T1", "FLAIR+T2", "FLAIR+T2", "FLAIR", "FLAIR"]
    with pytest.raises(ValueError):
        evaluate_cases(ThresholdNet(), cases, CMAP, settings, subset=("T1",), subsets=subsets, **kw)


def test_max_subsets_bounds_a_pass_without_changing_the_rows():
    case, settings = toy_case("c0", 0, ("FLAIR", "T1", "T2")), EvalSettings(16, 0.0, "cpu", progress=False)
    whole = evaluate_all_combinations(ThresholdNet(), [case], CMAP, settings)
    net = PresenceNet()
    evaluate_all_combinations(net, [dense_case(shape=(16, 16, 16))], CMAP, replace(settings, max_subsets=2))
    assert max(net.batch_sizes) == 2 and len(net.rows) == 7  # one window, two subsets per pass
    pd.testing.assert_frame_equal(evaluate_all_combinations(ThresholdNet(), [case], CMAP,
                                                            replace(settings, max_subsets=3)), whole)


def test_predict_case_autocasts_only_when_asked():
    net = DtypeNet()
    predict_case(net, np.ones((3, 16, 16, 16), np.float32), SlidingWindow(16, 0.0, "cpu"))
    assert net.seen_dtype == torch.float32
    predict_case(net, np.ones((3, 16, 16, 16), np.float32), SlidingWindow(16, 0.0, "cpu", amp=True))
    assert net.seen_dtype == (torch.bfloat16 if cpu_bf16_native() else torch.float32)


# --- baseline -------------------------------------------------------------------------------

def test_threshold_baseline_finds_the_modality_that_separates_the_lesion():
    train_cases = [toy_case(f"t{i}", i, ("T1", "FLAIR")[::-1]) for i in range(3)]
    test_cases = [toy_case("x0", 10), toy_case("x1", 11)]
    rows = threshold_baseline(train_cases, test_cases)
    assert len(rows) == 2 and set(rows["model"]) == {"threshold"}
    assert set(rows["modality"]) == {"FLAIR"} and set(rows["direction"]) == {"above"}
    assert 0.4 <= rows["threshold"].iloc[0] <= 2.0
    assert rows["dice"].tolist() == [1.0, 1.0]


def test_threshold_baseline_finds_a_dark_lesion_rule():
    def dark(case):
        case.image[1] = np.where(case.label == 1, -3.0, case.image[1])
        case.image[0] = np.random.default_rng(0).normal(size=case.shape)
        return case

    rows = threshold_baseline([dark(toy_case(f"t{i}", i)) for i in range(2)], [dark(toy_case("x", 9))])
    assert rows[["modality", "direction"]].values.tolist() == [["T1", "below"]]
    assert rows["dice"].iloc[0] == 1.0


# --- the real networks, once they exist ------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("mmlib.models") is None or
                    not hasattr(importlib.import_module("mmlib.models"), "build_model"),
                    reason="mmlib.models not written yet")
def test_real_multiunet_trains_saves_reloads_and_predicts(tmp_path):
    from mmlib.data.loaders import JointBatches
    from mmlib.engine.checkpoint import load_model
    from mmlib.models import build_model

    cases = [toy_case("c0", 0, shape=(32, 32, 32)), toy_case("c1", 1, shape=(32, 32, 32))]
    cmap = ChannelMap(("FLAIR", "T1"))
    batches = JointBatches({"TOY": cases}, cmap, crop=32, batch_per_database=1, drop=True,
                           rotate_p=0.1, lesion_crop_p=0.5, seed=0)
    torch.manual_seed(0)
    model = build_model("multiunet", 2, 0.25)
    result = train(model, batches, TrainSettings(2, 1e-3, 1, device="cpu", progress=False), tmp_path,
                   {"arch": "multiunet", "width": 0.25}, cmap)
    reloaded, cmap_dict, config = load_model(result.path, "cpu")
    assert cmap_dict == cmap.to_dict() and config["arch"] == "multiunet"
    rows = evaluate_cases(reloaded, cases[:1], cmap, EvalSettings(32, 0.0, "cpu", progress=False))
    assert len(rows) == 1 and 0.0 <= rows["dice"].iloc[0] <= 1.0
