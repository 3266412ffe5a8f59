"""The study's protocol and bookkeeping: model specs and identities, seeds owning the weights, one
joint model for `mmlib joint` and notebook 02, results that never mix, deviations stated."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mmlib.data.loaders import ChannelMap
from mmlib.data.manifest import TRAINING_DATABASES
from mmlib.errors import MMLibError
from mmlib.experiments.plan.deviations import deviation_note, deviations
from mmlib.experiments.plan.schedule import batch_per_database, schedule
from mmlib.experiments.plan.specs import (Evaluation, Job, ModelSpec, finetune_spec, joint_spec, limited_label_count,
                                          loo_spec, sd_spec)
from mmlib.experiments.run.study import Study, eval_channel_map
from mmlib.presets import JointVariant, StudyPlan, load_preset

QUICK = load_preset("quick")
DATA = {d: "data" for d in (*TRAINING_DATABASES, "ISLES", "TUMOR2")}


def test_joint_variants_parse_architecture_and_drop():
    assert JointVariant.parse("multiunet+drop") == JointVariant("multiunet", True)
    assert JointVariant.parse("mafunet") == JointVariant("mafunet", False)
    with pytest.raises(MMLibError):
        JointVariant.parse("mafunet+dropout")


def test_the_study_plan_has_one_set_of_defaults_the_papers():
    plan = StudyPlan()
    assert plan.loo_targets == TRAINING_DATABASES and plan.fusion_databases == TRAINING_DATABASES
    assert set(map(str, plan.joint_variants)) == {"multiunet+drop", "multiunet", "mafunet+drop"}
    assert load_preset("full").study == plan  # the full preset cuts nothing
    with pytest.raises(MMLibError, match="unknown study setting"):
        StudyPlan.from_dict({"loo_target": ["WMH"]}, "x")


def test_a_one_modality_database_trains_one_model_for_drop_and_no_drop():
    with_drop = sd_spec("ATLAS", "multiunet", True, 0, 1, 1.0)
    without = sd_spec("ATLAS", "multiunet", False, 0, 1, 1.0)
    assert with_drop.identity(QUICK, DATA) == without.identity(QUICK, DATA)
    wmh = [sd_spec("WMH", "multiunet", d, 0, 2, 1.0).identity(QUICK, DATA) for d in (True, False)]
    assert wmh[0] != wmh[1]


def test_specs_know_their_role_name_and_row_columns():
    assert joint_spec("multiunet", True, 0).training == "MD"
    loo = loo_spec("WMH", 0)
    assert (loo.training, loo.held_out, loo.name) == ("LOO", "WMH", "LOO-WMH-multiunet-drop")
    ft = finetune_spec(loo, "WMH", "progressive", 4, 0.5)
    assert (ft.training, ft.net, ft.row_columns()["method"], ft.labels) == ("finetune", "progressive", "progressive", "limited")
    limited = sd_spec("WMH", "multiunet", False, 0, 2, 1.0, n_cases=4)
    assert limited.name == "SD-WMH-multiunet-nodrop-4cases" and limited.row_columns()["labels"] == "limited"


def test_identity_holds_what_changes_the_weights_and_nothing_else():
    spec = joint_spec("multiunet", True, 0)
    same = [QUICK.with_(sw_overlap=0.5), QUICK.with_(train_processes=7), QUICK.with_(seeds=(0, 1, 2)),
            QUICK.with_(study=StudyPlan(loo_targets=("BRATS",)))]
    assert {spec.identity(p, DATA) for p in same} == {spec.identity(QUICK, DATA)}
    other = [QUICK.with_(width=1.0), QUICK.with_(steps=900), QUICK.with_(lesion_crop_p=0.0), QUICK.with_(amp=False)]
    assert len({spec.identity(p, DATA) for p in other} | {spec.identity(QUICK, DATA)}) == 5
    assert spec.identity(QUICK, {**DATA, "WMH": "changed"}) != spec.identity(QUICK, DATA)
    assert joint_spec("multiunet", True, 1).identity(QUICK, DATA) != spec.identity(QUICK, DATA)


def test_a_fine_tuned_model_is_keyed_by_its_parent():
    a, b = loo_spec("WMH", 0), loo_spec("WMH", 1)
    ft = [finetune_spec(p, "WMH", "finetune", None, 1.0) for p in (a, b)]
    assert ft[0].identity(QUICK, DATA) != ft[1].identity(QUICK, DATA)


def test_held_out_tbi_maps_swi_to_the_pd_channel():
    cmap = ChannelMap(("FLAIR", "T1", "T1c", "T2", "PD"))
    mapped = eval_channel_map(cmap, ("FLAIR", "T1", "T2", "SWI"))
    assert mapped.index("SWI") == cmap.index("PD") and mapped.index("FLAIR") == cmap.index("FLAIR")
    assert eval_channel_map(ChannelMap(("T1",)), ("FLAIR", "T1")) == ChannelMap(("T1",))  # no free channel


def test_limited_labels_scale_with_the_twin_and_stay_the_papers_on_real_sizes():
    assert limited_label_count("BRATS", 444, 444) == 20
    assert limited_label_count("BRATS", 44, 444) == 2
    assert limited_label_count("TBI", 16, 156) == max(2, round(50 * 16 / 156))


def test_a_batch_holds_at_least_min_batch_crops_and_the_lr_drops_at_its_fraction():
    assert (QUICK.batch_per_database, QUICK.min_batch) == (1, 2)
    assert batch_per_database(QUICK, 1) == 2 and batch_per_database(QUICK, 5) == 1
    plan = schedule(sd_spec("WMH", "multiunet", True, 0, 2, 0.5), QUICK)
    assert plan.steps == round(QUICK.steps * 0.5) and plan.lr_drop_step == round(plan.steps * QUICK.lr_drop_fraction)
    full = load_preset("full")
    assert schedule(joint_spec("multiunet", True, 0), full, epoch_length=229).steps == 600 * 229


def test_every_deviation_of_a_preset_is_stated_and_the_full_preset_has_few():
    quick = {d.aspect: d for d in deviations(QUICK)}
    for aspect in ("voxel spacing", "training crop and sliding window", "crop sampling", "network width", "schedule",
                   "crops seen per database by one model", "precision", "rotation", "seeds per model",
                   "train/test split", "background outside the brain", "models trained"):
        assert aspect in quick
    assert quick["crop sampling"].differs and "0.67 of crops centred on a lesion" in quick["crop sampling"].ours
    assert "cosine decay" in quick["schedule"].ours and "0.25" in quick["schedule"].paper  # the CPU recipe
    assert quick["loss"].differs and "cross-entropy" in quick["loss"].ours
    assert "leave-one-out on WMH only" in quick["models trained"].ours
    line = deviation_note(QUICK, 5)  # under a table: a count, and this table's models left out
    assert "deviations table above" in line and "leave-one-out on WMH only" in line and "3 mm" not in line
    assert "LFUnet" in deviation_note(QUICK, 2) and "LFUnet" not in line
    full = {d.aspect: d for d in deviations(load_preset("full"))}
    assert not full["voxel spacing"].differs and not full["models trained"].differs


# -- a study folder ---------------------------------------------------------------------------------
def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.glob("models/*/final.pt"))}


def test_settings_that_do_not_change_the_weights_retrain_nothing(tmp_path):
    from mmlib.experiments.run.experiments import joint_training

    smoke = load_preset("smoke")
    study = Study(tmp_path, smoke, progress=False, processes=1, device="cpu")
    rows = joint_training(study, [JointVariant("multiunet", True)])
    before = _mtimes(tmp_path)
    assert len(before) == 1
    again = Study(tmp_path, smoke.with_(sw_overlap=0.5, train_processes=2), progress=True, processes=2, device="cpu")
    rows2 = joint_training(again, [JointVariant("multiunet", True)])
    assert _mtimes(tmp_path) == before  # the model was found, not trained again
    assert len(rows2) == len(rows)  # re-evaluated at the new overlap
    # A setting that does change the weights trains a new model beside the old one.
    Study(tmp_path, smoke.with_(width=0.125), progress=False, device="cpu").train(joint_spec("multiunet", True, 0))
    assert len(_mtimes(tmp_path)) == 2


def test_results_read_back_only_rows_of_the_current_protocol(tmp_path):
    from mmlib.experiments.run.experiments import joint_training

    smoke = load_preset("smoke")
    joint_training(Study(tmp_path, smoke, progress=False, device="cpu"), [JointVariant("multiunet", True)])
    narrower = Study(tmp_path, smoke.with_(width=0.125), progress=False, device="cpu")
    assert narrower.results().empty  # the old model's rows stay on disk, but are not this protocol's
    assert len(Study(tmp_path, smoke, progress=False, device="cpu").results()) > 0
    assert Study(tmp_path, smoke.with_(sw_overlap=0.5), progress=False, device="cpu").results().empty


def test_identities_that_look_like_numbers_are_read_back_as_written(tmp_path, monkeypatch):
    """A data identity of decimal digits (one hash in 300 or so) was read back as a number, and
    the rows of that database left the results as if evaluated on other data."""
    from mmlib.experiments.run import study as study_module
    from mmlib.experiments.run.experiments import joint_training

    monkeypatch.setattr(study_module, "prepared_identity", lambda *a: "000000001234")
    smoke = load_preset("smoke")
    joint_training(Study(tmp_path, smoke, progress=False, device="cpu"), [JointVariant("multiunet", True)])
    rows = Study(tmp_path, smoke, progress=False, device="cpu").results()
    assert set(rows["database"]) >= set(TRAINING_DATABASES)
    assert set(rows["eval_data_id"]) == {"000000001234"}


def test_a_folder_of_another_layout_preset_or_data_is_refused_naming_it(tmp_path):
    old = tmp_path / "old"
    (old / "results").mkdir(parents=True)
    (old / "results" / "01_single_database.csv").write_text("database,dice\nWMH,0.5\n")
    with pytest.raises(MMLibError, match="older mmlib layout") as err:
        Study(old, "smoke")
    assert str(old) in str(err.value)
    Study(tmp_path / "new", "smoke")
    with pytest.raises(MMLibError, match="preset 'smoke'"):
        Study(tmp_path / "new", "quick")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(MMLibError, match="data_root"):
        Study(tmp_path / "new", "smoke", data_root=tmp_path / "elsewhere")


def test_a_per_database_root_is_honoured_and_twins_never_stand_in_for_the_others(tmp_path, monkeypatch):
    monkeypatch.delenv("MMLIB_DATA_ROOT", raising=False)
    monkeypatch.setenv("MMLIB_WMH_ROOT", str(tmp_path / "wmh"))
    study = Study(tmp_path / "s", "smoke", progress=False)
    assert not study.twins
    with pytest.raises(MMLibError, match="no root folder for database BRATS"):
        study.databases(["BRATS"])
    assert not (tmp_path / "s" / "data").exists()


def test_mmlib_joint_and_the_studys_joint_model_are_one_model(tmp_path):
    from mmlib.experiments.run.experiments import joint_training
    from mmlib.experiments.run.joint import run_joint

    summary = run_joint(tmp_path, preset="smoke", device="cpu", progress=False)
    assert list(summary["database"]) == [*TRAINING_DATABASES, "mean"]
    models = _mtimes(tmp_path)
    assert len(models) == 1
    study = Study(tmp_path, "smoke", progress=False, device="cpu")
    rows = joint_training(study, [JointVariant("multiunet", True)])
    assert _mtimes(tmp_path) == models  # notebook 02 found the model mmlib joint trained
    assert set(rows["model"]) == {"MD-multiunet-drop"}
    folder = next(iter(models)).parent.name
    assert (tmp_path / "joint" / folder / "summary.json").is_file()
    # Without drop: another model, written beside the first, nothing overwritten.
    run_joint(tmp_path, preset="smoke", device="cpu", drop=False, progress=False)
    assert len(list((tmp_path / "joint").iterdir())) == 2 and set(models) <= set(_mtimes(tmp_path))


def test_models_trained_side_by_side_are_the_grid_and_are_reused(tmp_path):
    from mmlib.experiments.run.experiments import single_database

    study = Study(tmp_path, "smoke", progress=False, processes=2)
    rows = single_database(study, ["WMH", "ATLAS"], fusion=False)
    finals = _mtimes(tmp_path)
    # ATLAS has one modality, so its drop model is its no-drop model: 3 models, not 4.
    assert sorted(p.parent.name.rsplit("-", 2)[0] for p in finals) == [
        "SD-ATLAS-multiunet-nodrop", "SD-WMH-multiunet-drop", "SD-WMH-multiunet-nodrop"]
    assert rows.model.nunique() == 3 and set(rows.database) == {"WMH", "ATLAS"}
    again = single_database(Study(tmp_path, "smoke", progress=False, processes=2), ["WMH", "ATLAS"], fusion=False)
    assert _mtimes(tmp_path) == finals
    assert again.dice.tolist() == rows.dice.tolist()


def test_a_failing_model_is_named_and_the_others_are_kept(tmp_path):
    study = Study(tmp_path, "smoke", progress=False, processes=2)
    good = Job(sd_spec("ATLAS", "multiunet", False, 0, 1, 1.0), (Evaluation("ATLAS"),))
    # The WMH model trains, then fails in its worker: ATLAS cases have no FLAIR to give it.
    bad = Job(sd_spec("WMH", "multiunet", False, 0, 2, 1.0), (Evaluation("ATLAS", (("FLAIR",),)),))
    with pytest.raises(MMLibError, match="SD-WMH-multiunet-nodrop.*has no FLAIR"):
        study.run([bad, good])
    assert study.is_trained(bad.spec) and not list((tmp_path / "evaluations").glob("SD-WMH*/*.csv"))


def test_a_worker_keeps_its_share_of_the_cores(tmp_path):
    """Training calls pick_device, which hands torch every core unless OMP_NUM_THREADS is set;
    a worker of Study.run must keep the one thread it was given."""
    from mmlib.experiments.run.executors import run_job

    env = os.environ.pop("OMP_NUM_THREADS", None)
    before = torch.get_num_threads()
    study = Study(tmp_path, "smoke", progress=False)
    job = Job(sd_spec("ATLAS", "multiunet", False, 0, 1, 1.0))
    try:
        assert run_job(study.reopener(), 1, job) is None
        assert torch.get_num_threads() == 1 and study.is_trained(job.spec)
    finally:
        torch.set_num_threads(before)
        os.environ.pop("OMP_NUM_THREADS", None)
        if env is not None:
            os.environ["OMP_NUM_THREADS"] = env


_TRAIN_ONE = textwrap.dedent("""
    import sys, torch
    from mmlib.experiments.plan.specs import joint_spec
    from mmlib.experiments.run.study import Study
    study = Study(sys.argv[1], "smoke", progress=False, device="cpu")
    model, _ = study.train(joint_spec("multiunet", True, int(sys.argv[2])))
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, sys.argv[3])
""")


def test_one_seed_gives_identical_weights_in_two_fresh_processes(tmp_path):
    """The seed owns the initial weights, data order, drop and dropout: two processes that share
    nothing give bit-identical weights (CPU, at the default thread count, in the precision the
    machine's self-check allows). torch.equal is False for NaN: a diverged model fails here too."""
    script = tmp_path / "train_one.py"
    script.write_text(_TRAIN_ONE)
    weights = []
    for run, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = tmp_path / f"{run}.pt"
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        subprocess.run([sys.executable, str(script), str(tmp_path / run), str(seed), str(out)], check=True, env=env)
        weights.append(torch.load(out))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_a_spec_refuses_inconsistent_fields():
    with pytest.raises(ValueError):
        ModelSpec("multiunet", ("WMH",), True, start="finetune")  # no parent
    with pytest.raises(ValueError):
        ModelSpec("multiunet", ("WMH",), True, labels="limited")  # no budget
    with pytest.raises(ValueError):
        ModelSpec("unet3000", ("WMH",), True)
