"""mmlib.atomic_files and mmlib.out_folder: atomic writes, the umask, temporary-file cleanup, output
folders and locks."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from mmlib import atomic_files as af
from mmlib import out_folder as of
from mmlib.errors import MMLibError


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_current_umask_reads_the_umask_without_changing_it(umask_027):
    assert af.current_umask() == 0o027
    assert af.current_umask() == 0o027


def test_atomic_writers_write_whole_files_with_the_umask_and_leave_no_temp(tmp_path, umask_027):
    af.atomic_write_json(tmp_path / "a" / "x.json", {"k": [1, 2]})
    af.atomic_write_text(tmp_path / "t.txt", "hé")
    with af.atomic_path(tmp_path / "p.csv") as tmp:
        assert tmp.name.endswith(".csv") and tmp.name.startswith(".p.csv.")
        tmp.write_text("a,b\n")
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"k": [1, 2]}
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "hé"
    assert (tmp_path / "p.csv").read_text() == "a,b\n"
    assert {_mode(p) for p in (tmp_path / "a" / "x.json", tmp_path / "t.txt", tmp_path / "p.csv")} == {0o640}
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["p.csv", "t.txt", "x.json"]


def test_an_interrupted_atomic_write_keeps_the_old_content_and_removes_its_temp(tmp_path):
    path = af.atomic_write_json(tmp_path / "stamp.json", {"done": 1})
    with pytest.raises(KeyboardInterrupt):
        with af.atomic_open(path, "w") as fh:
            fh.write('{"done": ')
            raise KeyboardInterrupt
    with pytest.raises(RuntimeError):
        with af.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert json.loads(path.read_text()) == {"done": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["stamp.json"]


def test_read_json_gives_the_default_for_a_truncated_or_missing_file(tmp_path):
    (tmp_path / "t.json").write_text('{"preset": "qu')
    assert af.read_json(tmp_path / "t.json", default="x") == "x"
    assert af.read_json(tmp_path / "missing.json") is None


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = tmp_path / "sub" / f".model.pt.{_dead_pid()}-0123abcd.tmp"
    live = tmp_path / f".results.csv.{os.getpid()}-89abcdef.tmp.csv"
    other = tmp_path / ".notes.tmp"  # not an mmlib name: never touched
    legacy = tmp_path / ".c.npz.a1B2c3D4.tmp"  # mkstemp name of older mmlib, fresh: kept for now
    for p in (dead, live, other, legacy):
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
    assert af.clean_stale_temps(tmp_path) == [dead]
    assert live.exists() and other.exists() and legacy.exists()
    assert af.clean_stale_temps(tmp_path, legacy_age_s=-1) == [legacy]


def test_prepare_out_dir_names_a_file_and_a_path_through_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(MMLibError, match="existing file") as err:
        of.prepare_out_dir(tmp_path / "f")
    assert err.value.file == str(tmp_path / "f")
    with pytest.raises(MMLibError, match="a part of its path is a file"):
        of.prepare_out_dir(tmp_path / "f" / "sub")
    assert of.prepare_out_dir(tmp_path / "new" / "deep").is_dir()


def test_lock_refuses_a_second_holder_naming_the_folder_and_the_pid(tmp_path, monkeypatch):
    with of.OutLock(tmp_path) as lock:
        info = json.loads(lock.path.read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        monkeypatch.delenv("MMLIB_HELD_LOCKS")  # as another run would see it
        with pytest.raises(of.LockedError, match=f"pid {os.getpid()}") as err:
            of.OutLock(tmp_path).acquire()
        assert err.value.file == str(tmp_path)
        monkeypatch.undo()
    assert not (tmp_path / ".mmlib.lock").exists() and "MMLIB_HELD_LOCKS" not in os.environ


def test_lock_of_a_dead_process_is_recovered(tmp_path):
    (tmp_path / ".mmlib.lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                                      "started": "earlier", "token": "t"}))
    with of.OutLock(tmp_path) as lock:
        assert lock.owned and json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_lock_on_another_host_is_not_taken_over(tmp_path):
    (tmp_path / ".mmlib.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x", "token": "t"}))
    with pytest.raises(of.LockedError, match="elsewhere"):
        of.OutLock(tmp_path).acquire()


def test_a_child_process_works_under_its_parents_lock_but_a_stranger_does_not(tmp_path):
    code = "import sys; from mmlib.out_folder import OutLock; OutLock(sys.argv[1]).acquire(); print('ok')"
    with of.OutLock(tmp_path):
        child = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
        env = {k: v for k, v in os.environ.items() if k != "MMLIB_HELD_LOCKS"}
        stranger = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env)
    assert child.returncode == 0 and child.stdout.strip() == "ok"
    assert stranger.returncode != 0 and "in use by another mmlib run" in stranger.stderr
    assert "MMLIB_HELD_LOCKS" not in os.environ


@pytest.mark.parametrize("read, name", [
    ("mmlib.engine.checkpoint:checkpoint_seconds", "MMLIB_CHECKPOINT_SECONDS"),
    ("mmlib.engine.distributed:timeout_minutes", "MMLIB_DIST_TIMEOUT_MIN"),
    ("mmlib.data.nifti:max_voxels", "MMLIB_MAX_VOXELS")])
def test_numeric_settings_refuse_what_is_not_a_finite_positive_number(monkeypatch, read, name):
    import importlib

    from mmlib.errors import MMLibError

    module, func = read.split(":")
    setting = getattr(importlib.import_module(module), func)
    monkeypatch.setenv(name, "250")
    assert setting() == 250
    for bad in ("often", "0", "-3", "nan", "inf"):
        monkeypatch.setenv(name, bad)
        with pytest.raises(MMLibError, match=f"{name} must be a positive number"):
            setting()
