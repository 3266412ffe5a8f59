"""No verdict from a model that did not learn: non-finite training stopped or sent back to float32,
reduced precision checked on the machine, every model's learning recorded, findings judged only
on models that learnt, a run compared with the reference."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mmlib.engine import precision
from mmlib.engine.checkpoint import load_model, save_checkpoint
from mmlib.engine.convergence import MIN_GAIN, Validation, judge_learning
from mmlib.engine.precision import NonFiniteError, checked_dtype, self_check
from mmlib.engine.train import train
from mmlib.errors import CheckpointError
from mmlib.experiments.results.findings import CLAUSES, evaluate_findings, judge
from mmlib.experiments.results.reference import agreement
from mmlib.models import build_model
from test_engine import CMAP, CONFIG, ToyBatches, settings_and_rest, tiny_net

train_module = importlib.import_module("mmlib.engine.train")


def nan_loss_from(monkeypatch, step: int):
    """Make the training loss NaN from the `step`-th call on (1-based), as a diverging run's."""
    real, calls = train_module.training_loss, [0]

    def loss(*args, **kwargs):
        calls[0] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls[0] >= step else value

    monkeypatch.setattr(train_module, "training_loss", loss)
    return calls


def run(out_dir, steps, **kw):
    settings, rest = settings_and_rest(steps, {"lr": 1e-2, "lr_drop_step": 0, "device": "cpu", "progress": False,
                                               "log_every": 2, "config": CONFIG, **kw})
    return train(rest.pop("model", None) or tiny_net(), ToyBatches(), settings, out_dir, rest.pop("config"), CMAP,
                 **rest)


# -- a non-finite value never becomes a result ------------------------------------------------------------
def test_a_nan_loss_in_float32_stops_the_run_naming_model_step_and_precision(tmp_path, monkeypatch):
    nan_loss_from(monkeypatch, 3)
    with pytest.raises(NonFiniteError, match=r"non-finite loss at step 3 of 6 \(float32\)"):
        run(tmp_path, 6, config={**CONFIG, "name": "toy model"})
    assert not (tmp_path / "final.pt").exists() and not (tmp_path / "training.json").exists()


def test_a_checkpoint_is_never_written_from_non_finite_weights(tmp_path, monkeypatch):
    nan_loss_from(monkeypatch, 3)
    with pytest.raises(NonFiniteError):
        run(tmp_path, 8, checkpoint_every=2)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 2 and precision.state_finite(state["model"])


def test_a_nan_under_autocast_goes_back_to_the_last_finite_state_and_trains_in_float32(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "amp_dtype", lambda device=None: torch.bfloat16)
    passed = precision.PrecisionCheck(True, "passed", "test CPU")
    monkeypatch.setattr(train_module, "checked_dtype", lambda model, dtype, device, crop: (dtype, passed))
    real, calls = train_module.training_loss, [0]

    def nan_only_in_bf16(name, logits, *args, **kwargs):  # from the 3rd step on in bf16; the float32 rerun is finite
        calls[0] += 1
        value = real(name, logits, *args, **kwargs)
        return value * float("nan") if logits.dtype == torch.bfloat16 and calls[0] >= 3 else value

    monkeypatch.setattr(train_module, "training_loss", nan_only_in_bf16)
    with pytest.warns(UserWarning, match="non-finite loss under bf16 autocast by step 3.*float32"):
        result = run(tmp_path, 6, amp=True)
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["precision"] == "float32" and record["fallback"]["step"] == 3
    assert record["fallback"]["resumed_at"] == 0  # no checkpoint yet: back to the start
    assert len(result.losses) == 6 and all(np.isfinite(result.losses))
    assert precision.state_finite(torch.load(tmp_path / "final.pt", weights_only=True)["model"])


def test_a_nan_under_autocast_after_a_checkpoint_goes_back_to_that_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "amp_dtype", lambda device=None: torch.bfloat16)
    passed = precision.PrecisionCheck(True, "passed", "test CPU")
    monkeypatch.setattr(train_module, "checked_dtype", lambda model, dtype, device, crop: (dtype, passed))
    real, calls = train_module.training_loss, [0]

    def nan_in_bf16_from_step_5(name, logits, *args, **kwargs):
        calls[0] += 1
        value = real(name, logits, *args, **kwargs)
        return value * float("nan") if logits.dtype == torch.bfloat16 and calls[0] >= 5 else value

    monkeypatch.setattr(train_module, "training_loss", nan_in_bf16_from_step_5)
    with pytest.warns(UserWarning, match="going back to step 4"):
        result = run(tmp_path, 8, amp=True, checkpoint_every=4)
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["fallback"]["resumed_at"] == 4 and record["precision"] == "float32"
    assert len(result.losses) == 8 and all(np.isfinite(result.losses))


def test_a_checkpoint_with_nan_weights_is_refused_naming_the_file(tmp_path):
    net = build_model("multiunet", 3, 0.25)
    with torch.no_grad():
        next(net.parameters())[0] = float("nan")
    path = save_checkpoint(tmp_path / "final.pt", net, None, None, 1, CONFIG, CMAP.to_dict())
    with pytest.raises(CheckpointError, match="NaN or infinite") as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_injected_nan_in_mmlib_joint_exits_non_zero_without_final_pt_or_rows(tmp_path, monkeypatch, capsys):
    from mmlib.cli import main

    nan_loss_from(monkeypatch, 2)
    code = main(["joint", "--preset", "smoke", "--out", str(tmp_path / "run"), "--device", "cpu"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code != 0 and len(errors) == 1 and "non-finite loss at step 2" in errors[0]
    assert "Traceback" not in errors[0]
    assert not list((tmp_path / "run").rglob("final.pt"))
    assert not list((tmp_path / "run").rglob("evaluations/**/*.csv"))


# -- reduced precision only where it is sound on this machine ----------------------------------------------
class Bf16Breaks(nn.Module):
    """Finite in float32; under bf16 autocast its output overflows (a stand-in for a kernel that fails)."""

    def __init__(self):
        super().__init__()
        self.in_channels = 3
        self.conv = nn.Conv3d(3, 1, 3, padding=1)

    def forward(self, x, present=None):
        h = self.conv(x)
        big = h * 1e38 * 1e38
        return big - big if h.dtype == torch.bfloat16 else h  # inf - inf: NaN


class Sound(nn.Module):
    def __init__(self):
        super().__init__()
        self.in_channels = 3
        self.conv = nn.Conv3d(3, 1, 3, padding=1)

    def forward(self, x, present=None):
        return self.conv(x)


def test_the_self_check_fails_a_network_that_goes_non_finite_in_bf16():
    torch.manual_seed(0)
    check = self_check(Bf16Breaks(), torch.bfloat16, torch.device("cpu"), 8, "test CPU", steps=2)
    assert not check.ok and "non-finite" in check.reason and "test CPU" in check.describe()


def test_the_self_check_passes_a_sound_network_and_says_what_it_measured():
    torch.manual_seed(0)
    check = self_check(Sound(), torch.bfloat16, torch.device("cpu"), 8, "test CPU", steps=3)
    assert check.ok and check.grad_error < precision.GRAD_TOLERANCE and check.loss_difference < 0.05


def test_the_self_check_verdict_is_cached_per_machine_and_torch_version(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLIB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(precision, "_MEMO", {})
    taken = []
    real = precision.self_check
    monkeypatch.setattr(precision, "self_check", lambda *a, **k: taken.append(1) or real(*a, steps=2))
    torch.manual_seed(0)
    assert checked_dtype(Bf16Breaks(), torch.bfloat16, torch.device("cpu"), 8)[0] is None
    monkeypatch.setattr(precision, "_MEMO", {})  # a new process reads the file
    dtype, check = checked_dtype(Bf16Breaks(), torch.bfloat16, torch.device("cpu"), 8)
    assert dtype is None and not check.ok and taken == [1]
    (key,) = json.loads((tmp_path / "precision.json").read_text())
    assert precision.machine_name(torch.device("cpu")) in key and torch.__version__ in key


def test_training_with_amp_uses_float32_where_the_self_check_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "amp_dtype", lambda device=None: torch.bfloat16)
    monkeypatch.setenv("MMLIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "_MEMO", {})
    monkeypatch.setattr(precision, "CHECK_STEPS", 2)
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="bf16 failed its self-check"):
        run(tmp_path / "run", 2, model=Bf16Breaks(), amp=True, channels_last=False)
    record = json.loads((tmp_path / "run" / "training.json").read_text())
    assert record["precision"] == "float32" and "failed its self-check" in record["precision_note"]


# -- every model says whether it learnt ---------------------------------------------------------------------
def _curve(values, floor=0.05):
    return [{"step": 10 * (i + 1), "dice": {"A": v}} for i, v in enumerate(values)]


def test_a_curve_still_rising_in_its_last_quarter_has_not_converged():
    rising = judge_learning(_curve([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]), {"A": 0.05}, [0.5] * 80)
    flat = judge_learning(_curve([0.1, 0.5, 0.6, 0.65, 0.66, 0.7, 0.7, 0.7 + MIN_GAIN / 2]), {"A": 0.05}, [0.5] * 80)
    assert rising.converged is False and "still improving" in rising.reason
    assert flat.converged is True and flat.learnt is True


def test_a_model_at_or_below_the_label_free_floor_did_not_learn():
    zero = judge_learning(_curve([0.0] * 8), {"A": 0.0}, [1.0] * 80)
    assert zero.learnt is False and "not learnt on A 0.000 vs floor 0.000" in zero.reason
    barely = judge_learning(_curve([0.003] * 8), {"A": 0.0}, [0.9] * 80)  # a rule that finds nothing: floor 0
    assert barely.learnt is False
    assert judge_learning(_curve([0.03] * 8), {"A": 0.0}, [0.9] * 80).learnt is True
    nan = judge_learning(_curve([0.5] * 8), {"A": 0.0}, [float("nan")] * 80, finite=True)
    assert nan.finite is False and nan.learnt is False


def test_validation_is_taken_at_evenly_spaced_steps_and_recorded(tmp_path):
    seen = []
    validation = Validation(lambda model: seen.append(model.training) or {"A": 0.5}, {"A": 0.1}, points=4)
    run(tmp_path, 8, validation=validation)
    record = json.loads((tmp_path / "training.json").read_text())
    assert [p["step"] for p in record["validation"]] == [2, 4, 6, 8] and seen == [False] * 4
    assert record["learning"]["learnt"] is True and record["learning"]["converged"] is True


# -- findings judged only on models that learnt -------------------------------------------------------------
def _rows(model_id, training, database, subset, dice, learnt="", converged="", **extra):
    return [dict(model_id=model_id, model=model_id, arch="multiunet", training=training, database=database,
                 case_id=f"c{i}", subset=subset, dice=dice, seed=0, learnt=learnt, converged=converged,
                 all_modalities=True, labels="all", **extra) for i in range(4)]


def _f2_rows(joint_dice, sd_dice, **flags):
    rows = []
    for db, subset in (("BRATS", "FLAIR+T1+T1c+T2"), ("WMH", "FLAIR+T1")):
        rows += _rows("joint", "MD", db, subset, joint_dice, drop=True,
                      train_databases="BRATS+ATLAS+MSSEG+TBI+WMH", **flags)
        rows += _rows(f"sd-{db}", "SD", db, subset, sd_dice, drop=False, train_databases=db, **flags)
    return pd.DataFrame(rows)


def _f2(rows, db="BRATS"):
    clause = next(c for c in CLAUSES if c.key == f"F2 about as well ({db})")
    from mmlib.experiments.results.tables import tidy_results

    return judge(clause, tidy_results(rows), n_bootstrap=200)


def test_all_zero_models_leave_every_clause_that_reads_them_untested():
    zeros = _f2_rows(0.0, 0.0)  # a run whose models predict nothing: 0 - 0 is "within 0.05"
    judged = _f2(zeros)
    assert judged.verdict == "untested" and "predicts no lesion" in judged.notes()
    findings = evaluate_findings(zeros, n_bootstrap=200)
    assert all(j.verdict == "untested" for f in findings.values() for j in f["clauses"])


def test_the_learnt_rule_is_applied_to_the_recorded_numbers_as_it_stands_now():
    rows = _f2_rows(0.6, 0.6, learnt=True, val_dice=0.051, val_floor=0.05)  # recorded 'learnt' by an older rule
    assert _f2(rows).verdict == "untested"


def test_on_a_database_it_never_saw_a_model_is_judged_by_its_own_databases_numbers():
    rows = _f2_rows(0.6, 0.6, learnt=True, val_dice=0.04, val_floor=0.03)  # own databases: not learnt
    unseen = pd.DataFrame(_rows("joint", "MD", "TUMOR2", "T1", 0.5, learnt=True, drop=True,
                                train_databases="BRATS+ATLAS+MSSEG+TBI+WMH"))
    from mmlib.experiments.results.findings import model_states
    from mmlib.experiments.results.tables import tidy_results

    states = model_states(tidy_results(pd.concat([rows, unseen], ignore_index=True)))
    assert states[("joint", "TUMOR2")].learnt is False


def test_a_model_recorded_as_not_learnt_makes_the_clause_untested_with_the_reason():
    rows = _f2_rows(0.6, 0.6, learnt=False, val_dice=0.01, val_floor=0.05)
    judged = _f2(rows)
    assert judged.verdict == "untested" and "0.010 not more than 0.02 above the label-free floor 0.050" in judged.notes()


def test_a_comparison_of_models_that_had_not_converged_keeps_its_verdict_and_says_so():
    judged = _f2(_f2_rows(0.6, 0.6, learnt=True, converged=False))
    assert judged.verdict == "holds" and judged.not_converged == ["joint", "sd-BRATS"]
    assert "not converged: joint, sd-BRATS" in judged.notes()
    assert _f2(_f2_rows(0.6, 0.6, learnt=True, converged=True)).notes() == ""


# -- a run compared with the reference ----------------------------------------------------------------------
def test_a_broken_run_differs_from_the_reference_on_every_model():
    reference = _f2_rows(0.7, 0.6)
    reference["dice"] += np.tile([0.0, 0.02, -0.02, 0.01], len(reference) // 4)
    broken = _f2_rows(0.0, 0.0)
    table = agreement(broken, reference)
    assert len(table) == 4 and not table["agrees"].any()
    same = agreement(_f2_rows(0.7, 0.6), reference)
    assert same["agrees"].all()
