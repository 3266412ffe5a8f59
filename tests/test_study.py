"""The study's bookkeeping: model configs, Appendix B channel assignment, limited-label counts."""

from __future__ import annotations

from mmlib.data.loaders import ChannelMap
from mmlib.data.manifest import load_manifest
from mmlib.experiments.common import Database, config_key
from mmlib.experiments.study import (_held_out_map, describe_cuts, limited_label_count, md_config,
                                     parse_variant, sd_config)
from mmlib.presets import load_preset


def test_variants_parse_architecture_and_drop():
    assert parse_variant("multiunet+drop") == ("multiunet", True)
    assert parse_variant("mafunet") == ("mafunet", False)


def test_a_one_modality_database_trains_one_model_for_drop_and_no_drop():
    with_drop = sd_config("ATLAS", "multiunet", True, 0, ("T1",))
    without = sd_config("ATLAS", "multiunet", False, 0, ("T1",))
    assert config_key(with_drop) == config_key(without)
    assert config_key(sd_config("WMH", "multiunet", True, 0, ("FLAIR", "T1"))) != \
        config_key(sd_config("WMH", "multiunet", False, 0, ("FLAIR", "T1")))


def test_joint_and_leave_one_out_models_are_named_apart():
    assert md_config("multiunet", True, 0)["name"] == "MD-multiunet-drop"
    loo = md_config("multiunet", True, 0, ["ATLAS", "MSSEG", "TBI", "WMH"])
    assert loo["name"].startswith("LOO-") and "BR" in loo["name"]


def test_held_out_tbi_maps_swi_to_the_pd_channel():
    cmap = ChannelMap.from_databases([("FLAIR", "T1", "T1c", "T2"), ("T1",), ("FLAIR", "T1", "T1c", "T2", "PD"),
                                      ("FLAIR", "T1")])
    tbi = Database(load_manifest("TBI"), [], [])
    mapped = _held_out_map(cmap, tbi)
    assert mapped.index("SWI") == cmap.index("PD")
    assert mapped.index("FLAIR") == cmap.index("FLAIR")


def test_limited_labels_scale_with_the_twin_and_stay_the_papers_on_real_sizes():
    brats = load_manifest("BRATS")
    assert limited_label_count(Database(brats, list(range(444)), [])) == 20
    small = limited_label_count(Database(brats, list(range(44)), []))
    assert small == 2
    tbi = load_manifest("TBI")
    assert limited_label_count(Database(tbi, list(range(16)), [])) == max(2, round(50 * 16 / 156))


def test_the_cuts_line_names_what_the_preset_changes():
    line = describe_cuts(load_preset("quick"))
    assert "3 mm" in line and "width x0.5" in line and "leave-one-out on WMH" in line
    assert "1 crop(s) per database per step (single-database: 2)" in line
    assert "joint: multiunet+drop, multiunet" in line and "single-database MAFUnet on WMH" in line


def test_a_batch_holds_at_least_min_batch_crops():
    from mmlib.experiments.common import batch_per_database

    quick = load_preset("quick")
    assert (quick.batch_per_database, quick.min_batch) == (1, 2)
    assert batch_per_database(quick, 1) == 2   # a single-database model: 2 crops, not 1
    assert batch_per_database(quick, 5) == 1   # joint: one from each of five
    assert batch_per_database(load_preset("standard"), 1) == 2


def test_models_trained_side_by_side_are_the_grid_and_are_reused(tmp_path):
    import pytest

    from mmlib.errors import MMLibError
    from mmlib.experiments.study import Study, TrainJob, single_database

    study = Study(tmp_path, "smoke", progress=False, processes=2)
    rows = single_database(study, ["WMH", "ATLAS"], drops=(False, True))
    finals = sorted((tmp_path / "models").glob("*/final.pt"))
    # ATLAS has one modality, so its drop model is its no-drop model: 3 models, not 4.
    assert sorted(p.parent.name.rsplit("-", 1)[0] for p in finals) == [
        "SD-ATLAS-multiunet-nodrop", "SD-WMH-multiunet-drop", "SD-WMH-multiunet-nodrop"]
    assert rows.model.nunique() == 3 and set(rows.database) == {"WMH", "ATLAS"}
    stamps = {p: p.stat().st_mtime_ns for p in finals}
    again = single_database(Study(tmp_path, "smoke", progress=False, processes=2), ["WMH", "ATLAS"])
    assert {p: p.stat().st_mtime_ns for p in finals} == stamps  # found, not retrained
    assert again.dice.tolist() == rows.dice.tolist()

    # Notebook 02 takes 01's saved rows instead of evaluating the same models again...
    from mmlib.experiments.study import save_results, saved_single_database

    save_results(rows, tmp_path, "01_single_database")
    calls = []
    study.evaluate = lambda *a, **k: calls.append(a) or rows.iloc[:0]
    reused = saved_single_database(study, ["WMH", "ATLAS"])
    assert not calls and len(reused) == len(rows) and sorted(reused.model.unique()) == sorted(rows.model.unique())
    # ...but evaluates when the saved rows lack a model it needs (here: MSSEG's).
    saved_single_database(study, ["WMH", "MSSEG"])
    assert calls

    bad = TrainJob(md_config("multiunet", True, 0, ["WMH"]) | {"name": "bad-start"}, steps=2,
                   init=("bogus", str(finals[0])))
    good = TrainJob(md_config("multiunet", True, 0, ["ATLAS"]) | {"name": "good"}, steps=2)
    with pytest.raises(MMLibError, match="bad-start.*unknown way to start"):
        study.train_all([bad, good])
    assert not list((tmp_path / "models").glob("bad-start-*/final.pt"))


def test_a_worker_keeps_its_share_of_the_cores(tmp_path):
    """Training calls pick_device, which hands torch every core unless OMP_NUM_THREADS is set;
    a worker of Study.train_all must keep the one thread it was given."""
    import os

    import torch

    from mmlib.experiments.study import Study, TrainJob, _job_dir, _run_job

    env = os.environ.pop("OMP_NUM_THREADS", None)
    before = torch.get_num_threads()
    study = Study(tmp_path, "smoke", progress=False)
    job = TrainJob(md_config("multiunet", False, 0, ["ATLAS"]) | {"name": "one-thread"}, steps=1)
    state = {"out_dir": str(tmp_path), "preset": study.preset, "data_root": None, "device": "cpu",
             "seeds": (0,), "threads": 1}
    try:
        assert _run_job(state, job) is None
        assert torch.get_num_threads() == 1
        assert (_job_dir(study, job) / "final.pt").is_file()
    finally:
        torch.set_num_threads(before)
        os.environ.pop("OMP_NUM_THREADS", None)
        if env is not None:
            os.environ["OMP_NUM_THREADS"] = env
