"""Real data as a user outside the paper's institutions has it: the public releases (BRATS, ATLAS,
MSSEG, WMH, ISLES) without the private TBI and Tumor 2. The releases here are smoke-sized copies in
each release's layout (the synthetic twins are written in exactly that layout); what a database is
(release or twin) is recorded from how the study got it."""

from __future__ import annotations

import json
import shutil

import pytest

from mmlib.data.manifest import TRAINING_DATABASES
from mmlib.data.sources import find_sources
from mmlib.data.synth import make_twins
from mmlib.errors import MMLibError
from mmlib.experiments.plan.deviations import deviation_note, deviations_frame
from mmlib.experiments.plan.specs import joint_spec
from mmlib.experiments.results.availability import computable, mark_findings, mark_table
from mmlib.experiments.results.findings import evaluate_findings
from mmlib.experiments.results.report import write_report
from mmlib.experiments.results.tables import table_by_name
from mmlib.experiments.run.study import Study
from mmlib.presets import load_preset

PUBLIC = ("BRATS", "ATLAS", "MSSEG", "WMH", "ISLES")
SMOKE = load_preset("smoke")
PRIVATE = {"TBI": "TBI is private", "TUMOR2": "TUMOR2 is private"}


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """Release-layout copies of the public databases (and a TBI one, for a user who later gets it)."""
    folder = tmp_path_factory.mktemp("releases")
    return make_twins(folder, "smoke", seed=3, databases=[*PUBLIC, "TBI"], progress=False)


@pytest.fixture
def public_user(releases, monkeypatch):
    """The environment of a user holding the public releases only."""
    monkeypatch.delenv("MMLIB_DATA_ROOT", raising=False)
    for name in ("BRATS", "ATLAS", "MSSEG", "WMH", "ISLES", "TBI", "TUMOR2"):
        monkeypatch.delenv(f"MMLIB_{name}_ROOT", raising=False)
    for name in PUBLIC:
        monkeypatch.setenv(f"MMLIB_{name}_ROOT", str(releases[name]))
    return monkeypatch


def _bids(folder, source, second="T1w"):
    """A BIDS folder of FLAIR and T1 (or another second modality) with lesion masks, made from a
    release-layout WMH copy."""
    cases = sorted(p for p in source.glob("training/*/*") if (p / "wmh.nii.gz").is_file()) + \
        sorted(p for p in source.glob("training/*/*/*") if (p / "wmh.nii.gz").is_file())
    for i, case in enumerate(cases, 1):
        anat = folder / f"sub-{i:02d}" / "anat"
        anat.mkdir(parents=True)
        shutil.copy(case / "pre" / "FLAIR.nii.gz", anat / f"sub-{i:02d}_FLAIR.nii.gz")
        shutil.copy(case / "pre" / "T1.nii.gz", anat / f"sub-{i:02d}_{second}.nii.gz")
        masks = folder / "derivatives" / "lesions" / f"sub-{i:02d}" / "anat"
        masks.mkdir(parents=True)
        shutil.copy(case / "wmh.nii.gz", masks / f"sub-{i:02d}_label-lesion_mask.nii.gz")
    return len(cases)


def _models(rows):
    """The trained models' rows (not the threshold rule's)."""
    return rows[rows["training"] != "rule"]


def _manifest(path, name, cases, train, second="T1w"):
    path.write_text(f"""name: {name}
pathology: white matter lesions
release: "a BIDS folder of FLAIR and {second} with lesion masks"
modalities: [FLAIR, {second}]
layout:
  kind: pattern
  cases: "sub-*"
  images:
    FLAIR: "{{case}}/anat/{{name}}_FLAIR.nii.gz"
    {second}: "{{case}}/anat/{{name}}_{second}.nii.gz"
  label: "derivatives/lesions/{{name}}/anat/{{name}}_label-lesion_mask.nii.gz"
labels: {{lesion: [1], ignore: [2]}}
split: {{cases: {cases}, train: {train}}}
""")
    return path


def test_a_public_user_has_four_training_databases_and_is_told_why_the_others_are_missing(public_user, tmp_path):
    sources = find_sources()
    assert [n for n, s in sources.items() if s.kind == "release"] == list(PUBLIC)
    assert {n: s.why for n, s in sources.items() if not s.available} == PRIVATE
    study = Study(tmp_path, "smoke", progress=False)
    assert study.training_names() == ["BRATS", "ATLAS", "MSSEG", "WMH"]
    assert study.unavailable() == PRIVATE
    with pytest.raises(MMLibError, match=r"TBI is not available \(TBI is private\)"):
        study.databases(["TBI"])
    stamp = json.loads((tmp_path / "study.json").read_text())
    assert stamp["sources"]["TBI"]["kind"] == "missing" and stamp["sources"]["BRATS"]["kind"] == "release"


def test_naming_a_missing_database_is_refused_with_what_to_do(public_user, tmp_path):
    with pytest.raises(MMLibError, match="TBI, which is not available .*--fill-with-twins"):
        Study(tmp_path, "smoke", databases_asked="BRATS,TBI")


def test_a_four_database_joint_model_is_its_own_model_and_keeps_the_five_database_identity_apart():
    five = joint_spec("multiunet", True, 0)
    four = joint_spec("multiunet", True, 0, pool=("BRATS", "ATLAS", "MSSEG", "WMH"))
    assert five.pool == () and five.name == "MD-multiunet-drop"
    assert four.training == "MD" and four.name == "MD-BRATS+ATLAS+MSSEG+WMH-multiunet-drop"
    ids = {d: "x" for d in TRAINING_DATABASES}
    assert four.identity(SMOKE, ids) != five.identity(SMOKE, ids)
    loo = joint_spec("multiunet", True, 0, ["ATLAS", "MSSEG", "WMH"], pool=four.databases)
    assert loo.training == "LOO" and loo.held_out == "BRATS"


def test_mmlib_joint_trains_and_evaluates_a_four_database_model(public_user, tmp_path, capsys):
    import pandas as pd

    from mmlib.cli import main

    assert main(["joint", "--preset", "smoke", "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert "TBI: not available (TBI is private)" in capsys.readouterr().out  # the missing ones, named
    summary = pd.read_csv(next((tmp_path / "joint").iterdir()) / "summary.csv")
    assert list(summary["database"][:4]) == ["BRATS", "ATLAS", "MSSEG", "WMH"]
    assert summary["database"].iloc[-1].startswith("mean over 4 (BRATS+ATLAS+MSSEG+WMH; the paper's over five)")
    study = Study(tmp_path, "smoke", progress=False, device="cpu")
    rows = _models(study.results())
    assert set(rows["model"]) == {"MD-BRATS+ATLAS+MSSEG+WMH-multiunet-drop"}
    assert set(rows["synthetic_databases"]) == {""}  # every database a release


def test_fill_with_twins_gives_a_five_database_model_that_states_the_substitution(public_user, releases, tmp_path):
    from mmlib.experiments.run.joint import run_joint

    summary = run_joint(tmp_path, preset="smoke", device="cpu", progress=False, fill_with_twins="TBI")
    assert list(summary["database"]) == [*TRAINING_DATABASES, "mean"]
    study = Study(tmp_path, "smoke", progress=False, device="cpu")
    assert study.sources["TBI"].kind == "twin" and study.fill_with_twins == ("TBI",)  # kept in study.json
    rows = _models(study.results())
    assert set(rows["model"]) == {"MD-multiunet-drop"} and set(rows["synthetic_databases"]) == {"TBI"}
    protocol = deviations_frame(study.preset, sources=study.sources)
    assert "TBI's synthetic twin stands in for its release" in protocol.loc["synthetic twins"].iloc[1]
    assert "Synthetic twins stand in for TBI" in deviation_note(study.preset, 3, study.sources)
    report = write_report(study).read_text()
    assert "TBI's synthetic twin stands in for its release" in report and "| TBI | twin |" in report
    recorded = json.loads((tmp_path / "databases" / "TBI.json").read_text())
    assert recorded["kind"] == "twin" and recorded["train_id"].startswith("twin-")  # in the model's identity
    assert recorded["train_id"] in report
    twin_model = {p.name for p in (tmp_path / "models").iterdir()}
    # Later the user gets the TBI release: the same folder trains a new model, the twin's rows leave.
    public_user.setenv("MMLIB_TBI_ROOT", str(releases["TBI"]))
    run_joint(tmp_path, preset="smoke", device="cpu", progress=False)
    models = {p.name for p in (tmp_path / "models").iterdir()}
    assert twin_model < models and len(models) == 2
    later = Study(tmp_path, "smoke", progress=False, device="cpu")
    assert later.sources["TBI"].kind == "release"
    assert set(_models(later.results())["synthetic_databases"]) == {""}
    stamp = json.loads((tmp_path / "study.json").read_text())
    assert stamp["earlier_sources"][-1]["TBI"]["kind"] == "twin"


def test_a_users_own_database_is_checked_trained_on_and_evaluated(public_user, releases, tmp_path):
    from mmlib.cli import main
    from mmlib.experiments.run.joint import run_joint

    n = _bids(tmp_path / "mydb", releases["WMH"])
    _bids(tmp_path / "myeval", releases["WMH"], "SWI")  # a modality no training database has
    mine = _manifest(tmp_path / "MYDB.yaml", "MYDB", n, n - 1)
    evaluation = _manifest(tmp_path / "MYEVAL.yaml", "MYEVAL", n, 0, "SWI")
    public_user.setenv("MMLIB_MYDB_ROOT", str(tmp_path / "mydb"))
    public_user.setenv("MMLIB_MYEVAL_ROOT", str(tmp_path / "myeval"))
    assert main(["check", str(mine)]) == 0
    summary = run_joint(tmp_path / "out", preset="smoke", device="cpu", progress=False,
                        databases=f"BRATS,WMH,{mine},{evaluation}")
    assert set(summary["database"]) >= {"BRATS", "WMH", "MYDB", "MYEVAL"}
    rows = _models(Study(tmp_path / "out", "smoke", progress=False, device="cpu").results())
    assert set(rows["train_databases"]) == {"BRATS+WMH+MYDB"}
    assert set(rows["database"]) == {"BRATS", "WMH", "MYDB", "MYEVAL"}
    assert set(rows.loc[rows["database"] == "MYEVAL", "subset"]) == {"FLAIR+SWI"}  # SWI on a free channel (App. B)
    # A broken case is named before anything trains.
    (tmp_path / "mydb" / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(MMLibError, match="fails `mmlib check`"):
        run_joint(tmp_path / "out2", preset="smoke", device="cpu", progress=False, databases=f"WMH,{mine}")


def test_every_cell_and_clause_needing_tbi_or_tumor2_reads_not_available():
    import pandas as pd

    empty = pd.DataFrame(columns=["database", "case_id", "subset", "seed", "dice"])
    table3 = mark_table(3, table_by_name(3).side_by_side(empty), PRIVATE, empty)
    ours = table3.xs("ours", level="source")
    assert (ours["TBI"] == "not available (TBI is private)").all() and (ours["Avg"] == ours["TBI"]).all()
    assert any(c.startswith("Avg over 4 (BRATS, ATLAS, MSSEG, WMH") for c in table3.columns)
    assert (table3.xs("paper", level="source")["TBI"] != "not available (TBI is private)").all()
    table7 = mark_table(7, table_by_name(7).side_by_side(empty), PRIVATE, empty)  # Table 3's models, other metrics
    over4 = [c for c in table7.columns if c[0].startswith("Avg over 4 (BRATS, ATLAS, MSSEG, WMH")]
    assert [m for _, m in over4] == ["sensitivity", "precision", "assd"]
    row = "MultiUnet-MD (drop)"
    paper = table7.loc[(row, "paper")]
    assert paper[over4[2]] == pytest.approx(sum(paper[(d, "assd")] for d in ("BRATS", "ATLAS", "MSSEG", "WMH")) / 4)
    assert (table7.xs("ours", level="source")[("Avg", "assd")] == "not available (TBI is private)").all()
    findings = mark_findings(evaluate_findings(empty, n_bootstrap=10), PRIVATE)
    assert findings["F4"]["verdict"] == "not available (TUMOR2 is private)"
    f2 = {j.clause.key: j.verdict for j in findings["F2"]["clauses"]}
    assert f2["F2 about as well (TBI)"] == "not available (TBI is private)"
    assert f2["F2 about as well (BRATS)"] == "untested"
    can = computable(PRIVATE)
    assert can.loc["F4", "computable"] == "no" and can.loc["F1", "computable"] == "yes"


@pytest.mark.slow
def test_mmlib_study_on_the_public_databases_marks_what_needs_tbi_or_tumor2(public_user, tmp_path):
    from mmlib.cli import main

    assert main(["study", "--preset", "smoke", "--out", str(tmp_path), "--device", "cpu"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "| TBI | missing | not available (TBI is private) |" in report
    table3 = report[report.index("## Table 3"):report.index("## Table 4")]
    ours = [line for line in table3.splitlines() if "| ours |" in line]
    assert ours and all(line.count("not available (TBI is private)") == 2 for line in ours)  # TBI and Avg
    assert "Avg over 4 (BRATS, ATLAS, MSSEG, WMH" in table3
    table4 = report[report.index("## Table 4"):report.index("## Table 5")]
    assert all("not available (TUMOR2 is private)" in line for line in table4.splitlines() if "| ours |" in line)
    assert "Table 2 averages those 4" in report
    findings = json.loads((tmp_path / "findings.json").read_text())["findings"]
    assert findings["F4"]["verdict"] == "not available (TUMOR2 is private)"
    tbi = [c for f in findings.values() for c in f["clauses"] if "TBI" in c["clause"]]
    assert tbi and all(c["verdict"] == "not available (TBI is private)" for c in tbi)
    rows = _models(Study(tmp_path, "smoke").results())
    assert not set(rows["database"]) & {"TBI", "TUMOR2"} and set(rows["synthetic_databases"]) == {""}
