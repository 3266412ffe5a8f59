"""Atomic files, shared by every module that writes: a file is whole or absent, never half written;
and the cleanup of temporary files a killed run left behind.

Every file mmlib writes goes through a temporary file beside its target (named
`.<name>.<pid>-<token>.tmp`, so a later run can tell whose it was) and an atomic rename, so a
reader or a crash never sees half a file. Files are created with mode 0o666 and the process
umask applies (tempfile.mkstemp would make them 0600).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
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


def temp_name(path: Path, keep_suffix: bool) -> Path:
    """A fresh temporary name beside `path`: `.<name>.<pid>-<token>.tmp` (+ its suffixes if kept)."""
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
    tmp = temp_name(path, keep_suffix)
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
    tmp = temp_name(path, keep_suffix=False)
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


__all__ = ["current_umask", "temp_name", "atomic_path", "atomic_open", "atomic_write_bytes", "atomic_write_text",
           "atomic_write_json", "read_json", "pid_alive", "is_temp_file", "clean_stale_temps"]
