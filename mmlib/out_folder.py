"""An output folder: made and checked writable before a run starts (`prepare_out_dir`), and claimed
by one run at a time (`OutLock`, inherited by the run's notebook kernels and workers)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path

from mmlib.atomic_files import pid_alive, read_json, temp_name
from mmlib.errors import MMLibError


#: What an operating-system error means, in a phrase, by errno (the one table of them).
OS_PROBLEMS = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
               errno.ENOTDIR: "not a folder (a part of the path is a file)", errno.EISDIR: "is a folder",
               errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on the device",
               errno.ENOENT: "no such file or folder", errno.EEXIST: "already exists"}


def os_problem(exc: OSError) -> str:
    """An operating-system error in a phrase ('permission denied', 'no space left on the device')."""
    return OS_PROBLEMS.get(exc.errno) or exc.strerror or str(exc) or type(exc).__name__


def os_message(exc: OSError) -> str:
    """`os_problem`, after the path(s) it concerns."""
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)
    return f"{where}: {os_problem(exc)}" if where else os_problem(exc)


def prepare_out_dir(path: str | Path, what: str = "--out") -> Path:
    """Create output folder `path` (and its parents) and make sure files can be written there.

    Raises MMLibError naming the path when it is an existing file, a parent is a file, or the
    folder cannot be created or written (permission, read-only file system). Returns the path.
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise MMLibError(f"{what} names an existing file, not a folder; give a folder", p)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise MMLibError(f"{what}: cannot create the folder: a part of its path is a file", p) from None
    except OSError as exc:
        raise MMLibError(f"{what}: cannot create the folder: {os_problem(exc)}", p) from None
    probe = p / f".mmlib-write-test.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        probe.unlink()
    except OSError as exc:
        raise MMLibError(f"{what}: cannot write in this folder: {os_problem(exc)}", p) from None
    return p


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), which tells a reused pid from the original."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class LockedError(MMLibError):
    """An output folder is in use by another mmlib run."""


#: Locks held by this process and its ancestors ('<lock file>=<token>', os.pathsep-separated),
#: inherited by child processes (notebook kernels, training workers) so they may work inside.
_LOCKS_ENV = "MMLIB_HELD_LOCKS"


def _held_locks() -> dict[str, str]:
    entries = [e for e in os.environ.get(_LOCKS_ENV, "").split(os.pathsep) if "=" in e]
    return dict(e.rsplit("=", 1) for e in entries)


def _set_held_locks(locks: dict[str, str]) -> None:
    if locks:
        os.environ[_LOCKS_ENV] = os.pathsep.join(f"{k}={v}" for k, v in locks.items())
    else:
        os.environ.pop(_LOCKS_ENV, None)


class OutLock:
    """A run's claim on an output folder: `<folder>/.mmlib.lock` holding pid, host and start time.

    `with OutLock(folder):` creates the lock file atomically (it never exists half-written) or
    raises LockedError naming the folder and the run holding it. A lock whose process is gone
    (same host) is recovered. Child processes inherit the claim through the environment, so a
    notebook kernel or worker started by the holder may take the same lock (a no-op).
    """

    NAME = ".mmlib.lock"

    def __init__(self, folder: str | Path, what: str = "--out"):
        self.folder = Path(folder)
        self.what = what
        self.path = self.folder / self.NAME
        self.token: str | None = None
        self.owned = False

    def _info(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300],
                "token": self.token}

    def _stale(self, info) -> bool:
        """True when the holder is known to be gone: same host and its pid dead (or reused)."""
        if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
            # Unreadable: a lock file is written whole (link of a complete file), so this is
            # not a lock of ours being created; a minute's grace covers the O_EXCL fallback.
            try:
                return time.time() - self.path.stat().st_mtime > 60
            except FileNotFoundError:
                return True
        if info.get("host") != socket.gethostname():
            return False
        if not pid_alive(info["pid"]):
            return True
        start = info.get("process_start")
        return start is not None and _process_start(info["pid"]) not in (None, start)

    def _create(self) -> bool:
        """Try to create the lock file whole; False if one exists."""
        payload = (json.dumps(self._info(), indent=2) + "\n").encode()
        tmp = temp_name(self.path, keep_suffix=False)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            try:
                os.link(tmp, self.path)  # atomic, and fails if the lock exists
                return True
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links: exclusive create instead
                try:
                    fd2 = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                except FileExistsError:
                    return False
                with os.fdopen(fd2, "wb") as fh:
                    fh.write(payload)
                return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def acquire(self) -> "OutLock":
        prepare_out_dir(self.folder, self.what)
        key = str(self.path.resolve())
        inherited = _held_locks().get(key)
        if inherited is not None and (read_json(self.path) or {}).get("token") == inherited:
            self.token, self.owned = inherited, False  # our parent's claim: work under it
            return self
        self.token = secrets.token_hex(8)
        for _ in range(5):
            if self._create():
                self.owned = True
                _set_held_locks({**_held_locks(), key: self.token})
                return self
            info = read_json(self.path)
            if self._stale(info):
                # Remove only the lock we judged stale: another run may have replaced it since.
                if read_json(self.path) == info:
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                continue
            if isinstance(info, dict):
                who = (f"pid {info.get('pid')} on {info.get('host')}, since {info.get('started')}"
                       + (f": {info['command']}" if info.get("command") else ""))
            else:
                who = "a run that is starting"
            raise LockedError(f"{self.what} is in use by another mmlib run ({who}); wait for it to "
                              f"finish or choose another folder (if that run is gone, delete {self.path})",
                              self.folder)
        raise LockedError(f"{self.what}: could not take the lock {self.path}; try again", self.folder)

    def release(self) -> None:
        if not self.owned:
            return
        if (read_json(self.path) or {}).get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        locks = _held_locks()
        locks.pop(str(self.path.resolve()), None)
        _set_held_locks(locks)
        self.owned = False

    def __enter__(self) -> "OutLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["OS_PROBLEMS", "os_problem", "os_message", "prepare_out_dir", "LockedError", "OutLock"]
