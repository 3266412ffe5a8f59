"""Safe writing shared by every module: atomic files, temporary-file cleanup, output folders, locks.

Every file mmlib writes goes through a temporary file beside its target (named
`.<name>.<pid>-<token>.tmp`, so a later run can tell whose it was) and an atomic rename, so a
reader or a crash never sees half a file. Files are created with mode 0o666 and the process
umask applies (tempfile.mkstemp would make them 0600).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import IO, Iterator

from mmlib.errors import MMLibError

#: A temporary file of `atomic_*`: hidden name, writer's pid, random token, '.tmp', kept suffixes.
_TMP_RE = re.compile(r"^\..+\.(\d+)-[0-9a-f]{8}\.tmp(\.[A-Za-z0-9.]+)?$")
#: A temporary file of mmlib before this module (tempfile.mkstemp: 8 random characters).
_LEGACY_TMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), else set back."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_name(path: Path, keep_suffix: bool) -> Path:
    suffix = "".join(path.suffixes) if keep_suffix else ""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}")


def _fsync_dir(folder: Path) -> None:
    # A rename is durable only once its folder is flushed; not every platform can open a folder.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace(tmp: Path, path: Path, durable: bool) -> None:
    """Rename the finished temporary file over `path` (and make the rename itself durable)."""
    os.replace(tmp, path)
    if durable:
        _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | Path, keep_suffix: bool = True, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that wants a file name (savefig,
    nib.save, to_csv); on success it is renamed over `path`, on any error or interrupt removed.

    keep_suffix: the temporary name ends in `path`'s suffixes, for writers that read the format
    from the name. The writer creates the file, so its mode follows the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path, keep_suffix)
    try:
        yield tmp
        if not tmp.exists():
            raise MMLibError("the writer created no file", tmp)
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        _replace(tmp, path, durable)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", durable: bool = False,
                encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing ('wb' or 'w'); on leaving the block it
    replaces `path` atomically, on any error or interrupt it is removed and `path` is untouched."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes only ('wb' or 'w'), not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path, keep_suffix=False)
    # O_EXCL on a fresh random name; 0o666 lets the kernel apply the umask, as open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        _replace(tmp, path, durable)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = False) -> Path:
    """Write `data` to `path` atomically (old content or new, never half); returns `path`."""
    with atomic_open(path, "wb", durable=durable) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, durable: bool = False) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns `path`."""
    return atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_json(path: str | Path, obj, durable: bool = False, **dumps_kwargs) -> Path:
    """Write `obj` as JSON to `path` atomically (indent=2 unless given); returns `path`.

    The JSON is built before the file is touched, so an unserialisable object changes nothing.
    """
    dumps_kwargs.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(obj, **dumps_kwargs) + "\n", durable=durable)


def read_json(path: str | Path, default=None):
    """The JSON in `path`, or `default` when it is missing, truncated or not JSON (a stamp or
    marker that cannot be read means 'not done', never a traceback)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, UnicodeDecodeError, json.JSONDecodeError):
        return default


def pid_alive(pid: int) -> bool:
    """True if a process `pid` exists on this machine (one owned by another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), which tells a reused pid from the original."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def is_temp_file(name: str) -> bool:
    """True for the name of a temporary file of mmlib's atomic writers (or of older mmlib)."""
    return bool(_TMP_RE.match(name) or _LEGACY_TMP_RE.match(name))


def clean_stale_temps(folder: str | Path, recursive: bool = True, legacy_age_s: float = 3600.0) -> list[Path]:
    """Remove temporary files left in `folder` by killed mmlib processes; returns what was removed.

    A temporary file names its writer's pid: it is removed when that process is gone. Files of
    older mmlib (no pid) are removed once `legacy_age_s` old. Others' files are never touched.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    walker = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    now = time.time()
    for dirpath, _, files in walker:
        for name in files:
            if not is_temp_file(name):
                continue
            path = Path(dirpath) / name
            m = _TMP_RE.match(name)
            try:
                if m:
                    pid = int(m.group(1))
                    if pid == os.getpid() or pid_alive(pid):
                        continue
                elif not (_LEGACY_TMP_RE.match(name) and now - path.stat().st_mtime > legacy_age_s):
                    continue
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                continue
    return removed


def _os_problem(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return exc.strerror or type(exc).__name__


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
        raise MMLibError(f"{what}: cannot create the folder: {_os_problem(exc)}", p) from None
    probe = p / f".mmlib-write-test.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        probe.unlink()
    except OSError as exc:
        raise MMLibError(f"{what}: cannot write in this folder: {_os_problem(exc)}", p) from None
    return p


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
        tmp = _temp_name(self.path, keep_suffix=False)
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


__all__ = ["atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "read_json", "clean_stale_temps", "is_temp_file", "current_umask", "prepare_out_dir",
           "OutLock", "LockedError", "pid_alive"]
