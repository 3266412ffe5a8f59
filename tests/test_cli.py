"""The `mmlib` command as a user meets it: exit codes, JSON reports, errors without tracebacks."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest
from fixtures import write_tiny_release

from mmlib.cli import main
from mmlib.data.manifest import load_manifest


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmlib.cli", *args], capture_output=True, text=True)


def test_check_on_a_clean_release_exits_0_and_counts_its_cases(tmp_path, capsys):
    write_tiny_release(load_manifest("MSSEG"), tmp_path, n_cases=3)
    assert main(["check", "MSSEG", "--root", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cases"] == 3 and report["problems"] == []


def test_check_on_a_broken_release_exits_2_and_names_the_file(tmp_path, capsys):
    write_tiny_release(load_manifest("WMH"), tmp_path, n_cases=2)
    flair = sorted(tmp_path.rglob("FLAIR.nii.gz"))[0]
    flair.write_bytes(gzip.compress(b"not a nifti at all"))
    assert main(["check", "WMH", "--root", str(tmp_path), "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert any(p["file"] == str(flair) for p in report["problems"])


def test_a_broken_manifest_is_reported_without_a_traceback_and_exit_3(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: X\nmodalities: [FLAIR, T3]\n")
    result = run_cli("check", str(bad), "--root", str(tmp_path))
    assert result.returncode == 3
    assert "Traceback" not in result.stderr and str(bad) in result.stderr


def test_a_missing_root_is_reported_without_a_traceback_and_json_says_why(tmp_path):
    result = run_cli("check", "BRATS", "--root", str(tmp_path / "nowhere"), "--json")
    assert "Traceback" not in result.stderr
    assert result.returncode == 3
    report = json.loads(result.stdout)
    assert report["error"] == {"file": str(tmp_path / "nowhere"), "problem": "release folder not found"}
    assert report["database"] == "BRATS" and report["cases"] is None


def test_check_json_is_printed_for_bad_arguments_too():
    result = run_cli("check", "--json")
    assert result.returncode == 3
    assert "required: manifest" in json.loads(result.stdout)["error"]["problem"]


def test_synth_refuses_an_out_that_is_a_file_without_a_traceback(tmp_path):
    (tmp_path / "f").write_text("x")
    result = run_cli("synth", "--preset", "smoke", "--out", str(tmp_path / "f"), "--quiet")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{tmp_path / 'f'}: --out names an existing file" in result.stderr


def test_an_os_error_becomes_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    import mmlib.cli as cli

    def full_disk(args):
        raise OSError(28, "No space left on device", str(tmp_path / "x.npz"))

    monkeypatch.setattr(cli, "_cmd_synth", full_disk)  # build_parser binds it when main() runs
    assert main(["synth", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mmlib synth: error: {tmp_path / 'x.npz'}: no space left on the device")
    assert "Traceback" not in err


def test_unknown_preset_is_a_clear_error(tmp_path, capsys):
    assert main(["synth", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err


@pytest.mark.slow
def test_joint_main_job_writes_tables_and_figure_on_smoke(tmp_path):
    out = tmp_path / "run"
    assert main(["joint", "--preset", "smoke", "--out", str(out), "--steps", "2"]) == 0
    [folder] = list((out / "joint").iterdir())
    assert folder.name.startswith("MD-multiunet-drop-s0-") and (out / "models" / folder.name / "final.pt").is_file()
    for name in ("summary.csv", "summary.json", "dice_by_modality_subset.png"):
        assert (folder / name).is_file(), name
    summary = json.loads((folder / "summary.json").read_text())
    assert {r["database"] for r in summary["summary"]} == {"BRATS", "ATLAS", "MSSEG", "TBI", "WMH", "mean"}
