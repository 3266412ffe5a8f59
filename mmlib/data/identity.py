"""What a database's data is, cheaply: the resolved root and each input file's size and mtime.

Anything made from the data (a prepared case, a trained model) records this identity, so a
changed, replaced or moved input is noticed by its stats, without reading the files again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from mmlib.data.cases import CaseFiles
from mmlib.data.readers import find_cases


def file_stat(path: str | Path) -> list[int] | None:
    """[size in bytes, mtime in ns] of a file, or None if it cannot be reached."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def _key(path: Path, root: Path | None) -> str:
    """A file's name in an identity: relative to the root when inside it (posix separators)."""
    if root is not None:
        try:
            return Path(os.path.normpath(path)).relative_to(root).as_posix()
        except ValueError:
            pass
    return str(path)


def case_sources(files: CaseFiles, root: str | Path | None = None) -> dict[str, list[int] | None]:
    """{file: [size, mtime_ns]} of a case's inputs (images and label; a 4D file once)."""
    root = None if root is None else Path(os.path.normpath(Path(root).absolute()))
    paths = [p for p in (*files.images.values(), files.label) if p is not None]
    out = {}
    for p in paths:
        p = Path(p)
        full = p if p.is_absolute() or root is None else root / p
        out[_key(Path(os.path.normpath(full.absolute())), root)] = file_stat(full)
    return dict(sorted(out.items()))


def changed_files(old: dict | None, new: dict) -> list[str]:
    """Files whose stats differ between two `case_sources` (added and removed ones too)."""
    old = old or {}
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def manifest_content(manifest) -> dict:
    """The manifest as data (its YAML mapping, or its fields when built in code)."""
    return manifest.raw or {k: v for k, v in vars(manifest).items() if k not in ("raw", "path")}


def short_hash(obj, n: int = 12) -> str:
    """The identity hash of mmlib: `n` hex digits of the SHA-256 of JSON-able data (sorted keys),
    for data, prepared caches, models and evaluations alike."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def data_identity(manifest, root: str | Path | None = None) -> str:
    """A short hash of a database's data: resolved root, manifest, and every case's input files
    with their size and mtime (and any file the layout could not find). Cheap: no file is read,
    only listed and stat'ed. `root` None resolves through the manifest ($MMLIB_<NAME>_ROOT, ...).
    """
    root = Path(manifest.resolve_root(root)).resolve()
    cases = {c.case_id: {"files": case_sources(c, root),
                         "problems": {k: list(v) for k, v in sorted(c.problems.items())}}
             for c in find_cases(manifest, root, check_json=False)}
    extra = {"dataset.json": file_stat(root / "dataset.json")} if manifest.layout.kind == "msd4d" else {}
    return short_hash({"root": str(root), "manifest": manifest_content(manifest), "cases": cases, **extra}, 16)


def cases_identity(cases, root: str | Path | None = None) -> str:
    """A short hash of prepared cases' inputs (PreparedCase.sources, recorded by
    prepare_database) and the resolved `root` they came from: the data identity of what a model
    was trained on, without a new stat. A case without recorded sources raises ValueError."""
    missing = [c.case_id for c in cases if c.sources is None]
    if missing:
        raise ValueError(f"cases without recorded input files (not from prepare_database): {missing[:3]}")
    where = None if root is None else str(Path(root).resolve())
    return short_hash([where, sorted([c.database, c.case_id, c.sources] for c in cases)], 16)


__all__ = ["short_hash", "file_stat", "case_sources", "changed_files", "manifest_content", "data_identity",
           "cases_identity"]
