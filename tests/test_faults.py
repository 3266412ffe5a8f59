"""Faults a new user met on the smoke twins, injected again: each test is named after the
fault it covers (numbered as filed) and fails without its fix. Faults of the command line are
observed through the command line: a subprocess where the process itself matters (a kill, an
exit without traceback), else `mmlib.cli.main` in this process, whose synthetic-twin template is
then built once (each new process spends ~10 s on it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from fixtures import lock_folder, tiny_affine, tiny_label, write_tiny_release
from mmlib.data.manifest import load_manifest
from mmlib.data.nifti import load_volume, save_volume
from mmlib.data.readers import find_cases
from mmlib.errors import CheckpointError, ImageReadError, MMLibError

REPO = Path(__file__).resolve().parents[1]
AFFINE = tiny_affine()
SYNTH = ["synth", "--preset", "smoke", "--databases", "TUMOR2", "--quiet"]


def cli(*args, module: str = "mmlib.cli", **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, **kwargs)


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones too) by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _temp_files(root: Path) -> list[str]:
    """Hidden files other than mmlib's markers: what an atomic write leaves when killed."""
    markers = {".mmlib_synth.json", ".mmlib-twins.json", ".mmlib.lock"}
    return [p.name for p in root.rglob(".*") if p.is_file() and p.name not in markers]


# A synth run stopped after `after` cases by SIGKILL ('kill') or Ctrl-C ('ctrl-c'), or killed
# while a file is half-way through its atomic rename ('replace'): a temporary file is left.
_INTERRUPTED = r"""
import os, signal, sys
import mmlib.data.synth.twins as twins
how, after = sys.argv[1], int(sys.argv[2])
count = [0]
if how == "replace":
    real_replace = os.replace
    def replace(*args, **kwargs):
        count[0] += 1
        if count[0] == after:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(*args, **kwargs)
    os.replace = replace
else:
    real_write = twins.write_case
    def write_case(*args, **kwargs):
        real_write(*args, **kwargs)
        count[0] += 1
        if count[0] == after:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise KeyboardInterrupt
    twins.write_case = write_case
from mmlib.cli import main
sys.exit(main(sys.argv[3:]))
"""


def interrupted_synth(how: str, after: int, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _INTERRUPTED, how, str(after), *map(str, args)],
                          capture_output=True, text=True, **kwargs)


def main(*args) -> int:
    from mmlib.cli import main as cli_main

    return cli_main([str(a) for a in args])


@pytest.fixture(scope="module")
def clean_twin(tmp_path_factory) -> dict[str, bytes]:
    """The files of an uninterrupted smoke twin of TUMOR2."""
    out = tmp_path_factory.mktemp("clean")
    assert main(*SYNTH, "--out", out) == 0
    return _files(out / "TUMOR2")


# --------------------------------------------------------------------------- 2: interrupted synth

def test_fault2_a_synth_killed_half_way_is_resumed_by_the_next_one(tmp_path, clean_twin):
    killed = interrupted_synth("kill", 2, *SYNTH, "--out", tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (tmp_path / "TUMOR2").is_dir()
    assert main(*SYNTH, "--out", tmp_path) == 0
    assert _files(tmp_path / "TUMOR2") == clean_twin  # the same bytes as an uninterrupted run
    assert not (tmp_path / ".mmlib.lock").exists()


def _ctrl_c_after(monkeypatch, cases: int) -> None:
    from mmlib.data.synth import twins

    real, count = twins.write_case, [0]

    def write_case(*args, **kwargs):
        real(*args, **kwargs)
        count[0] += 1
        if count[0] == cases:
            raise KeyboardInterrupt

    monkeypatch.setattr(twins, "write_case", write_case)


def test_fault2_a_synth_stopped_by_ctrl_c_is_resumed_by_the_next_one(tmp_path, clean_twin, monkeypatch, capsys):
    _ctrl_c_after(monkeypatch, 2)
    assert main(*SYNTH, "--out", tmp_path) == 130
    monkeypatch.undo()
    assert main(*SYNTH, "--out", tmp_path) == 0, capsys.readouterr().err
    assert _files(tmp_path / "TUMOR2") == clean_twin


def test_fault2_a_folder_mmlib_never_wrote_is_still_refused(tmp_path):
    (tmp_path / "TUMOR2").mkdir()
    (tmp_path / "TUMOR2" / "notes.txt").write_text("mine")
    result = cli(*SYNTH, "--out", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is not a synthetic twin written by mmlib" in result.stderr and str(tmp_path / "TUMOR2") in result.stderr
    assert (tmp_path / "TUMOR2" / "notes.txt").read_text() == "mine"


def test_fault2_ensure_twins_resumes_an_interrupted_run_and_keeps_complete_twins(tmp_path, monkeypatch):
    from mmlib.data.synth import ensure_twins, twins

    _ctrl_c_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        ensure_twins(tmp_path, "smoke", progress=False)
    monkeypatch.undo()
    assert twins.twin_state(tmp_path / "BRATS")[0] == "writing"
    monkeypatch.setattr(twins, "ALL_DATABASES", ("BRATS",))
    ensure_twins(tmp_path, "smoke", progress=False)
    assert twins.twin_state(tmp_path / "BRATS")[0] == "complete"
    monkeypatch.setattr(twins, "ALL_DATABASES", ("TUMOR2",))
    ensure_twins(tmp_path, "smoke", progress=False)
    state, info = twins.twin_state(tmp_path / "TUMOR2")
    assert state == "complete" and info["cases"] == 4
    assert len(find_cases(load_manifest("TUMOR2"), tmp_path / "TUMOR2")) == 4
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "TUMOR2").rglob("*.nii.gz")}
    ensure_twins(tmp_path, "smoke", progress=False)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "TUMOR2").rglob("*.nii.gz")} == mtimes


# --------------------------------------------------------------------------- 3: labels check rejects

def test_fault3_label_values_check_flags_are_refused_for_training(tmp_path):
    from mmlib.data.preprocess import prepare_database

    manifest = load_manifest("TBI")
    root = tmp_path / "TBI"
    write_tiny_release(manifest, root, n_cases=3)
    cases = find_cases(manifest, root)
    for case, value in zip(cases, (7, -1)):
        label = tiny_label(manifest).astype(np.int16)
        label[4, 4, 4] = value
        save_volume(label, AFFINE, case.label)
    result = cli("check", "TBI", "--root", root, "--json")
    assert result.returncode == 2
    flagged = {p["file"]: p["problem"] for p in json.loads(result.stdout)["problems"]}
    assert "unexpected label value(s) [7]" in flagged[str(cases[0].label)]
    assert "unexpected label value(s) [-1]" in flagged[str(cases[1].label)]
    with pytest.raises(ImageReadError, match=r"unexpected label value\(s\) \[7\]") as err:
        prepare_database(manifest, root, 2.0, tmp_path / "cache", progress=False)
    assert err.value.file == str(cases[0].label)


# --------------------------------------------------------------------------- 4: headers drive memory

def _claiming(path: Path, shape, size: int = 37_000) -> Path:
    """A file whose header claims `shape` float32 voxels but which holds `size` bytes of data."""
    header = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), AFFINE).header.copy()
    header.set_data_shape(shape)
    payload = header.binaryblock + b"\0" * 4 + np.random.default_rng(0).bytes(size)
    if path.name.endswith(".gz"):
        import gzip
        payload = gzip.compress(payload, compresslevel=1)
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize("shape,suffix,says", [
    ((1024, 1024, 1024), ".nii.gz", "header claims 1024x1024x1024"),
    ((480, 480, 480), ".nii.gz", "cannot hold more than"),
    ((20000, 20000, 20000), ".nii", "header claims 20000x20000x20000"),
])
def test_fault4_a_header_claiming_more_than_its_file_is_refused_before_allocating(tmp_path, shape, suffix, says):
    manifest = load_manifest("TUMOR2")
    root = tmp_path / "TUMOR2"
    write_tiny_release(manifest, root, n_cases=1)
    image = find_cases(manifest, root)[0].images["T1"]
    image.unlink()
    bad = _claiming(image.with_name(image.name.replace(".nii.gz", suffix)), shape)
    if suffix == ".nii":
        manifest_path = tmp_path / "T.yaml"
        raw = dict(manifest.raw, layout=dict(manifest.raw["layout"], images={"T1": "{case}/anat/{name}_T1w.nii"}))
        manifest_path.write_text(yaml.safe_dump(raw))
    else:
        manifest_path = "TUMOR2"
    result = cli("check", manifest_path, "--root", root, "--json")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    problems = {p["file"]: p["problem"] for p in json.loads(result.stdout)["problems"]}
    assert says in problems[str(bad)]
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError, match=says) as err:
            load_volume(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.file == str(bad)
    assert peak < 32 * 2 ** 20, f"{peak / 2 ** 20:.0f} MiB allocated before refusing"


def _checkpoint(tmp_path, **config) -> Path:
    from mmlib.engine.checkpoint import save_checkpoint
    from mmlib.models import build_model

    model = build_model("multiunet", 2, 0.25)
    full = {"arch": "multiunet", "width": 0.25, "in_channels": 2, **config}
    return save_checkpoint(tmp_path / "final.pt", model, None, None, 10, full,
                           {"modalities": ["FLAIR", "T1"], "aliases": {}})


@pytest.mark.parametrize("config,says", [
    ({"width": 400}, "'width' must be a number in (0, 4]"),
    ({"in_channels": 1e7}, "'in_channels' must be an integer in 1..64"),
    ({"in_channels": 10_000_000}, "'in_channels' must be an integer in 1..64"),
    ({"width": "wide"}, "'width' must be a number"),
    ({"width": True}, "'width' must be a number"),
    ({"arch": 5}, "'arch' must be one of"),
    ({"arch": "resnet152"}, "'arch' must be one of"),
])
def test_fault4_a_tampered_checkpoint_config_is_refused_before_a_model_is_built(tmp_path, monkeypatch, config, says):
    import mmlib.models
    from mmlib.engine.checkpoint import load_model

    path = _checkpoint(tmp_path, **config)

    def no_build(*args, **kwargs):
        raise AssertionError(f"a model was built from a tampered config: {args}")

    monkeypatch.setattr(mmlib.models, "build_model", no_build)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert err.value.file == str(path) and says in err.value.problem


def test_fault4_an_untampered_checkpoint_still_loads(tmp_path):
    from mmlib.engine.checkpoint import load_model

    model, cmap, config = load_model(_checkpoint(tmp_path))
    assert config["width"] == 0.25 and sum(p.numel() for p in model.parameters()) > 0


# --------------------------------------------------------------------------- 5: patterns escape the root

@pytest.mark.parametrize("key,value,says", [
    ("images", "{root}/{{case}}/anat/{{name}}_T1w.nii.gz", "is absolute"),
    ("images", "../TUMOR2/{{case}}/anat/{{name}}_T1w.nii.gz", "climbs out of the root folder"),
    ("cases", "/**", "is absolute"),
    ("label", "derivatives/lesions/sub-001/sub-001_desc-lesion_mask.nii.gz", "names the same file for every case"),
])
def test_fault5_manifest_patterns_leaving_the_root_are_refused_by_check(tmp_path, key, value, says):
    manifest = load_manifest("TUMOR2")
    root = tmp_path / "TUMOR2"
    write_tiny_release(manifest, root, n_cases=3)
    layout = dict(manifest.raw["layout"])
    value = value.format(root=root)
    if key == "images":
        layout["images"] = {"T1": value}
    else:
        layout[key] = value
    path = tmp_path / "escape.yaml"
    path.write_text(yaml.safe_dump(dict(manifest.raw, layout=layout)))
    result = cli("check", path, "--root", root, "--json")
    assert result.returncode == 3 and "Traceback" not in result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["file"] == str(path) and says in error["problem"]


def test_fault5_one_file_shared_by_several_cases_is_flagged_by_check(tmp_path):
    manifest = load_manifest("TUMOR2")
    raw = dict(manifest.raw, layout={"kind": "pattern", "cases": ["site1/sub-*", "site2/sub-*"],
                                     "images": {"T1": "{case}/t1.nii.gz"}, "label": "masks/{name}.nii.gz"})
    path = tmp_path / "two_sites.yaml"
    path.write_text(yaml.safe_dump(raw))
    root = tmp_path / "release"
    rng = np.random.default_rng(0)
    for site in ("site1", "site2"):
        save_volume(rng.uniform(50, 150, (8, 8, 8)).astype(np.float32), AFFINE, root / site / "sub-001" / "t1.nii.gz")
    mask = save_volume(tiny_label(manifest), AFFINE, root / "masks" / "sub-001.nii.gz")
    result = cli("check", path, "--root", root, "--json")
    assert result.returncode == 2
    problems = json.loads(result.stdout)["problems"]
    assert [p["file"] for p in problems] == [str(mask), str(mask)]
    assert all("the same file is also label of case" in p["problem"] for p in problems)


# --------------------------------------------------------------------------- 7: tracebacks instead of messages

def _unwritable_folder(tmp_path) -> Path | None:
    """A folder this process cannot write in (root writes anywhere but in /sys), or None."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    folder = Path("/sys/kernel")
    try:
        os.close(os.open(folder / ".mmlib-probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError:
        return folder
    os.unlink(folder / ".mmlib-probe")
    return None


def test_fault7_an_out_that_is_a_file_or_cannot_be_written_is_a_message(tmp_path):
    (tmp_path / "file").write_text("x")
    for out, says in ((tmp_path / "file", "--out names an existing file"),
                      (tmp_path / "file" / "sub", "a part of its path is a file")):
        result = cli(*SYNTH, "--out", out)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"{out}: " in result.stderr and says in result.stderr
    folder = _unwritable_folder(tmp_path)
    if folder is None:
        pytest.skip("no folder this process cannot write in")
    result = cli(*SYNTH, "--out", folder)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{folder}: --out: cannot write in this folder" in result.stderr


def test_fault7_truncated_twin_markers_mean_make_again_not_a_traceback(tmp_path, monkeypatch):
    from mmlib.data.synth import ensure_twins, twins

    monkeypatch.setattr(twins, "ALL_DATABASES", ("TUMOR2",))
    ensure_twins(tmp_path, "smoke", progress=False)
    top = tmp_path / ".mmlib-twins.json"
    top.write_text(top.read_text()[:12])  # as a kill during a plain write_text left it
    ensure_twins(tmp_path, "smoke", progress=False)
    assert json.loads(top.read_text())["preset"] == "smoke"
    marker = tmp_path / "TUMOR2" / twins.MARKER
    marker.write_text(marker.read_text()[:20])
    assert main(*SYNTH, "--out", tmp_path) == 0
    assert twins.twin_state(tmp_path / "TUMOR2")[0] == "complete"


def test_fault7_an_interrupted_stamp_write_keeps_the_old_stamp(tmp_path):
    from mmlib.atomic_files import atomic_open, atomic_write_json

    stamp = atomic_write_json(tmp_path / "02_joint_training.done.json", {"seconds": 1.0})
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(stamp, "w") as fh:
            fh.write('{"seconds": ')
            raise KeyboardInterrupt
    assert json.loads(stamp.read_text()) == {"seconds": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == [stamp.name]


# --------------------------------------------------------------------------- 8: smaller ones

def test_fault8_written_files_honour_the_umask(tmp_path):
    from mmlib.data.preprocess import prepare_case, save_cached_case
    from mmlib.data.readers import read_case
    from mmlib.engine.checkpoint import atomic_save

    old = os.umask(0o027)
    try:
        assert main(*SYNTH, "--out", tmp_path / "twins") == 0
    finally:
        os.umask(old)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "twins").rglob("*") if p.is_file()}
    assert modes == {0o640}
    manifest = load_manifest("TUMOR2")
    case = prepare_case(manifest, read_case(manifest, find_cases(manifest, tmp_path / "twins" / "TUMOR2")[0]), 6.0)
    old = os.umask(0o022)
    try:
        atomic_save({"step": 1}, tmp_path / "last.pt")
        save_cached_case(case, tmp_path / "case.npz")
    finally:
        os.umask(old)
    assert {stat.S_IMODE((tmp_path / n).stat().st_mode) for n in ("last.pt", "case.npz")} == {0o644}


def test_fault8_temporary_files_of_a_killed_synth_are_cleaned_by_the_next(tmp_path, clean_twin):
    killed = interrupted_synth("replace", 4, *SYNTH, "--out", tmp_path)
    assert killed.returncode == -signal.SIGKILL
    assert _temp_files(tmp_path), "the kill left no temporary file: the fault was not injected"
    assert main(*SYNTH, "--out", tmp_path) == 0
    assert _temp_files(tmp_path) == []
    assert _files(tmp_path / "TUMOR2") == clean_twin


def test_fault8_check_exit_codes_tell_problems_from_could_not_run_and_json_always_comes(tmp_path):
    manifest = load_manifest("TUMOR2")
    write_tiny_release(manifest, tmp_path / "ok", n_cases=2)
    write_tiny_release(manifest, tmp_path / "bad", n_cases=2)
    (tmp_path / "bad" / "sub-001" / "anat" / "sub-001_T1w.nii.gz").unlink()
    (tmp_path / "broken.yaml").write_text("name: [X\n")
    runs = {
        "clean": (("TUMOR2", "--root", tmp_path / "ok"), 0),
        "problems": (("TUMOR2", "--root", tmp_path / "bad"), 2),
        "missing root": (("TUMOR2", "--root", tmp_path / "nowhere"), 3),
        "missing manifest": ((tmp_path / "nope.yaml", "--root", tmp_path / "ok"), 3),
        "broken manifest": ((tmp_path / "broken.yaml", "--root", tmp_path / "ok"), 3),
    }
    for what, (args, code) in runs.items():
        result = cli("check", *args, "--json")
        assert result.returncode == code, (what, result.stderr)
        report = json.loads(result.stdout)  # JSON in every case
        assert "Traceback" not in result.stderr
        assert ("error" in report) == (code == 3), what


def test_fault8_permission_problems_are_reported_as_permission_problems(tmp_path, monkeypatch):
    from mmlib.data.integrity import check_database

    manifest = load_manifest("TUMOR2")
    write_tiny_release(manifest, tmp_path, n_cases=2)
    locked = tmp_path / "sub-001" / "anat"  # as if without read and search permission
    unreadable = tmp_path / "sub-002" / "anat" / "sub-002_T1w.nii.gz"
    real_load = nib.load

    def load(filename, *args, **kwargs):
        if os.path.abspath(filename) == str(unreadable):
            raise PermissionError(13, "Permission denied", str(filename))
        return real_load(filename, *args, **kwargs)

    lock_folder(monkeypatch, locked)
    monkeypatch.setattr(nib, "load", load)
    problems = {p.file: p.problem for p in check_database(manifest, tmp_path).problems}
    assert problems == {str(locked / "sub-001_T1w.nii.gz"): f"case sub-001: T1: permission denied: cannot list {locked}",
                        str(unreadable): "permission denied: cannot read the file"}


def test_fault8_checkpoints_are_written_by_time_with_a_setting(monkeypatch):
    from mmlib.engine.checkpoint import CHECKPOINT_SECONDS, CheckpointSchedule

    now = [0.0]
    schedule = CheckpointSchedule(clock=lambda: now[0])
    assert schedule.seconds == CHECKPOINT_SECONDS <= 300
    now[0] = CHECKPOINT_SECONDS - 1
    assert not schedule.due(199)
    now[0] = CHECKPOINT_SECONDS
    assert schedule.due(7)  # however few steps: a slow step loses no more than the interval
    schedule.saved()
    assert not schedule.due(8)
    monkeypatch.setenv("MMLIB_CHECKPOINT_SECONDS", "30")
    assert CheckpointSchedule().seconds == 30.0
    monkeypatch.setenv("MMLIB_CHECKPOINT_SECONDS", "often")
    with pytest.raises(MMLibError, match="MMLIB_CHECKPOINT_SECONDS"):
        CheckpointSchedule()


def test_fault8_a_dead_runs_lock_is_recovered_and_a_live_one_named(tmp_path):
    lock = tmp_path / ".mmlib.lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "x", "token": "t"}))
    assert main(*SYNTH, "--out", tmp_path) == 0
    assert not lock.exists()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": "x", "token": "t"}))
        result = cli(*SYNTH, "--out", tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"in use by another mmlib run (pid {sleeper.pid}" in result.stderr and str(tmp_path) in result.stderr


# --------------------------------------------------------------------------- 9: a new user's first steps

def test_fault9_python_dash_m_mmlib_runs_the_command(tmp_path):
    assert cli("--help", module="mmlib").returncode == 0
    result = cli("check", "BRATS", "--root", tmp_path / "nowhere", "--json", module="mmlib")
    assert result.returncode == 3 and json.loads(result.stdout)["error"]["problem"] == "release folder not found"


@pytest.mark.slow
def test_fault9_setup_installs_into_a_virtual_environment_not_the_system_python(tmp_path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the repository's git checkout to copy it")
    files = subprocess.run(["git", "-C", REPO, "ls-files", "-co", "--exclude-standard"],
                           capture_output=True, text=True, check=True).stdout.split()
    copy = tmp_path / "clone"
    for rel in files:
        if (REPO / rel).is_file():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, copy / rel)
    # A stand-in for the system Python, so that no fault can touch the real one.
    system = tmp_path / "system"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", system], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHON=str(system / "bin" / "python"), MMLIB_CHROMIUM=sys.executable)
    first = subprocess.run(["bash", "scripts/setup.sh"], cwd=copy, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    where = "import importlib.util as u; s = u.find_spec('mmlib'); print(s.origin if s else '')"
    venv_mmlib = subprocess.run([copy / ".venv" / "bin" / "python", "-c", where], cwd=tmp_path, env=env,
                                capture_output=True, text=True).stdout.strip()
    assert venv_mmlib == str(copy / "mmlib" / "__init__.py")
    system_mmlib = subprocess.run([system / "bin" / "python", "-c", where], cwd=tmp_path, env=env,
                                  capture_output=True, text=True).stdout.strip()
    assert not system_mmlib.startswith(str(copy))
    again = subprocess.run(["bash", "scripts/setup.sh"], cwd=copy, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "already installed" in again.stdout
    assert (copy / ".venv" / "bin" / "mmlib").is_file()


# --------------------------------------------------------------------------- 1, 3, 6, 7: the study commands
JOINT = ["joint", "--preset", "smoke", "--steps", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def twins_root(tmp_path_factory) -> Path:
    """The seven smoke twins, made once: copy it to get a data root to change."""
    out = tmp_path_factory.mktemp("twins")
    assert main("synth", "--preset", "smoke", "--out", out, "--quiet") == 0
    return out


def _copy(root: Path, to: Path) -> Path:
    shutil.copytree(root, to)
    return to


def _models(out: Path) -> set[str]:
    return {p.parent.name for p in out.glob("models/*/final.pt")}


def _a_training_label(root: Path) -> Path:
    return sorted((root / "WMH").rglob("wmh.nii.gz"))[0]


def test_fault1_another_data_root_in_the_same_out_is_refused_not_answered_from_the_old_data(
        tmp_path, twins_root, capsys):
    a, b = _copy(twins_root, tmp_path / "a"), _copy(twins_root, tmp_path / "b")
    out = tmp_path / "run"
    assert main(*JOINT, "--out", out, "--data-root", a) == 0
    summary = (next((out / "joint").iterdir()) / "summary.csv").read_text()
    capsys.readouterr()
    assert main(*JOINT, "--out", out, "--data-root", b) == 2
    err = capsys.readouterr().err
    assert f"{out}: " in err and "use another --out" in err and "Traceback" not in err
    assert (next((out / "joint").iterdir()) / "summary.csv").read_text() == summary  # nothing overwritten


def test_fault1_a_changed_input_file_trains_a_new_model_not_the_old_answer(tmp_path, twins_root):
    root = _copy(twins_root, tmp_path / "data")
    out = tmp_path / "run"
    assert main(*JOINT, "--out", out, "--data-root", root) == 0
    first = _models(out)
    label = _a_training_label(root)
    img = nib.load(label)
    data = np.asarray(img.dataobj).copy()
    data[data == 1] = 0  # a fixed label: this case has no lesion after all
    nib.save(nib.Nifti1Image(data, img.affine, img.header), label)
    with pytest.warns(UserWarning, match="changed"):
        assert main(*JOINT, "--out", out, "--data-root", root) == 0
    assert len(_models(out)) == 2 and first < _models(out)  # retrained beside the old model


def test_fault3_joint_refuses_a_label_check_flags_naming_the_file(tmp_path, twins_root, capsys):
    root = _copy(twins_root, tmp_path / "data")
    label = _a_training_label(root)
    img = nib.load(label)
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 7  # the manifest names 0, 1 and 2
    nib.save(nib.Nifti1Image(data, img.affine, img.header), label)
    assert main(*JOINT, "--out", tmp_path / "run", "--data-root", root) == 2
    err = capsys.readouterr().err
    assert str(label) in err and "7" in err and "Traceback" not in err
    assert not _models(tmp_path / "run")


_HOLD = """
import sys, time
from mmlib.out_folder import OutLock
with OutLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_fault6_a_second_run_on_the_same_out_is_told_who_holds_it(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MMLIB_HELD_LOCKS"}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(*JOINT, "--out", out) == 2
        err = capsys.readouterr().err
        assert str(out) in err and str(holder.pid) in err and "Traceback" not in err
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "models").exists()


def test_fault6_a_rerun_without_drop_writes_beside_and_mmlib_data_root_is_honoured(tmp_path, twins_root,
                                                                                    monkeypatch):
    monkeypatch.setenv("MMLIB_DATA_ROOT", str(_copy(twins_root, tmp_path / "data")))
    out = tmp_path / "run"
    assert main(*JOINT, "--out", out) == 0
    assert main(*JOINT, "--out", out, "--no-drop") == 0
    assert sorted(p.name.split("-s0-")[0] for p in (out / "joint").iterdir()) == ["MD-multiunet-drop",
                                                                                   "MD-multiunet-nodrop"]
    assert json.loads((out / "study.json").read_text())["data_root"] == str((tmp_path / "data").resolve())
    assert not (out / "data").exists()  # no twins were made: the variable's data was used


def test_fault7_joint_over_a_truncated_twin_marker_remakes_the_twins_without_a_traceback(tmp_path):
    out = tmp_path / "run"
    assert main(*JOINT, "--out", out) == 0
    marker = out / "data" / ".mmlib-twins.json"
    marker.write_text(marker.read_text()[:10])
    assert main(*JOINT, "--out", out) == 0
    assert json.loads(marker.read_text())["preset"] == "smoke"


def test_fault7_a_truncated_notebook_stamp_means_run_it_again(tmp_path):
    from mmlib.experiments.run.runner import run_study

    out = tmp_path / "study"
    run_study(out, "smoke", notebooks=["99_findings"], progress=False)
    stamp = out / "notebooks" / "99_findings.done.json"
    first = json.loads(stamp.read_text())["seconds"]
    stamp.write_text(stamp.read_text()[:15])  # as a kill during a plain write left it
    run_study(out, "smoke", notebooks=["99_findings"], progress=False)
    assert json.loads(stamp.read_text())["seconds"] != first and (out / "findings.json").is_file()
