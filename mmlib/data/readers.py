"""Release readers: find a database's cases in its release folder, read them, split them.

Two layout kinds (see mmlib.data.manifest): `pattern` (one folder per case, globs for its files)
and `msd4d` (Medical Segmentation Decathlon: one 4D file per case, labels beside).
Hidden names (macOS `._*` twins, `.DS_Store`, temporary files) are never cases or case files.
One file matched by several cases (or modalities) is a problem of each, like a missing file;
a folder that cannot be listed is reported as a permission problem, not as 'no file matches'.
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Sequence, TypeVar

import numpy as np

from mmlib.data.cases import CaseFiles, RawCase
from mmlib.data.manifest import DatabaseManifest
from mmlib.data.modalities import canonical_modality
from mmlib.data.nifti import load_channels, load_label, load_volume
from mmlib.data.validate import case_problems
from mmlib.errors import ImageReadError, LayoutError, MMLibError

NO_MATCH = "no file matches the pattern"
SEVERAL = "several files match the pattern"
SHARED = "the same file is also"
LABEL = "label"  # key of the label in CaseFiles.problems


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(rel).parts if part not in (".", ".."))


def _glob(root: Path, pattern: str, dirs: bool) -> list[str]:
    """Non-hidden matches of `pattern` under `root`, as sorted posix paths relative to root."""
    found = []
    for rel in glob.glob(pattern, root_dir=root):
        rel = PurePosixPath(Path(rel)).as_posix()
        full = root / rel
        if _hidden(rel) or not (full.is_dir() if dirs else full.is_file()):
            continue
        found.append(rel)
    return sorted(set(found))


def _require_root(manifest: DatabaseManifest, root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        if root.exists():
            raise LayoutError(f"release folder of {manifest.name} is not a folder", root)
        raise LayoutError(f"release folder of {manifest.name} not found", root)
    try:
        with os.scandir(root):
            pass
    except PermissionError:
        raise LayoutError(f"permission denied: cannot list the release folder of {manifest.name}", root) from None
    return root


_MAGIC = re.compile(r"[*?\[]")


def _access_problem(root: Path, rel_pattern: str) -> str | None:
    """Why a pattern may have matched nothing although files exist: a folder on its literal
    path (up to the first wildcard) that cannot be searched or listed; None if there is none."""
    here = root
    for part in PurePosixPath(rel_pattern).parts:
        try:
            with os.scandir(here):
                pass
        except PermissionError:
            return f"permission denied: cannot list {here}"
        except OSError:
            return None
        if _MAGIC.search(part):
            return None
        here = here / part
        try:
            here.stat()
        except PermissionError:
            return f"permission denied: cannot reach {here}"
        except OSError:
            return None
    return None


def _fill(pattern: str, case: str, name: str, escape: bool) -> str:
    # Case folders may contain glob metacharacters ('[', '*'); escaped they match only themselves.
    esc = glob.escape if escape else (lambda s: s)
    return pattern.replace("{case}", esc(case)).replace("{name}", esc(name))


def _match_one(root: Path, pattern: str, case: str, name: str) -> tuple[Path | None, tuple[str, str] | None]:
    """The single file a pattern gives for a case, or None and (expected path, problem)."""
    hits = _glob(root, _fill(pattern, case, name, escape=True), dirs=False)
    if len(hits) == 1:
        return root / hits[0], None
    expected = str(root / _fill(pattern, case, name, escape=False))
    if not hits:
        return None, (expected, _access_problem(root, _fill(pattern, case, name, escape=True)) or NO_MATCH)
    return None, (expected, f"{SEVERAL}: {', '.join(hits)}")


def _flag_shared_files(cases: list[CaseFiles]) -> list[CaseFiles]:
    """The cases with every file that several cases or modalities point at made a problem of
    each (one file cannot be two cases' data: a pattern ignoring {case}, or a duplicated case)."""
    users: dict[str, list[tuple[int, str]]] = {}
    for i, case in enumerate(cases):
        for key, path in (*case.images.items(), (LABEL, case.label)):
            if path is not None:
                users.setdefault(os.path.normpath(path), []).append((i, key))
    out = list(cases)
    for path, uses in users.items():
        if len(uses) < 2:
            continue
        for i, key in uses:
            others = [f"{k} of this case" if j == i else f"{k} of case {cases[j].case_id}"
                      for j, k in uses if (j, k) != (i, key)]
            case = out[i]
            problems = {**case.problems, key: (path, f"{SHARED} {', '.join(others)}")}
            if key == LABEL:
                out[i] = replace(case, label=None, problems=problems)
            else:
                out[i] = replace(case, images={**case.images, key: None}, problems=problems)
    return out


def _pattern_cases(manifest: DatabaseManifest, root: Path) -> list[CaseFiles]:
    layout = manifest.layout
    folders = sorted({rel for g in layout.cases for rel in _glob(root, g, dirs=True)})
    id_re = re.compile(layout.id) if layout.id else None

    def case_id(rel: str) -> str:
        m = id_re.search(rel) if id_re else None
        return m.group(0) if m else rel

    ids = [case_id(rel) for rel in folders]
    cases = []
    for rel, cid in zip(folders, ids):
        # Two folders giving one id (e.g. two sessions of a subject) keep their full paths as ids.
        if ids.count(cid) > 1:
            cid = rel
        name = PurePosixPath(rel).name
        images, problems = {}, {}
        for mod in manifest.modalities:
            images[mod], problem = _match_one(root, layout.images[mod], rel, name)
            if problem:
                problems[mod] = problem
        label = None
        if layout.label:
            label, problem = _match_one(root, layout.label, rel, name)
            if problem:
                problems[LABEL] = problem
        cases.append(CaseFiles(manifest.name, cid, images, label, None, problems))
    return _flag_shared_files(cases)


def check_dataset_json(manifest: DatabaseManifest, root: str | Path) -> None:
    """If the MSD dataset.json lists its channels, they must be the manifest's layout.channels."""
    path = Path(root) / "dataset.json"
    if not path.is_file():
        return
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayoutError(f"cannot read dataset.json: {exc}", path) from None
    declared = meta.get("modality", meta.get("channel_names")) if isinstance(meta, dict) else None
    if declared is None:
        return
    try:
        names = [declared[k] for k in sorted(declared, key=int)]
        canon = tuple(canonical_modality(str(n)) for n in names)
    except (TypeError, ValueError, KeyError, AttributeError, MMLibError) as exc:
        raise LayoutError(f"cannot understand its 'modality' entry {declared!r}: {exc}", path) from None
    if canon != manifest.layout.channels:
        raise LayoutError(f"declares channels {names} = {list(canon)} but the manifest's layout.channels "
                          f"are {list(manifest.layout.channels)}", path)


def _msd_cases(manifest: DatabaseManifest, root: Path) -> list[CaseFiles]:
    layout = manifest.layout
    images_dir = root / layout.images_dir
    if not images_dir.is_dir():
        raise LayoutError(f"folder of images ({layout.images_dir}) not found", images_dir)
    channel_index = {mod: layout.channels.index(mod) for mod in manifest.modalities}
    try:
        listing = sorted(images_dir.iterdir())
    except PermissionError:
        raise LayoutError("permission denied: cannot list the folder of images", images_dir) from None
    cases = []
    for path in listing:
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.name.endswith(".nii.gz"):
            cid = path.name[: -len(".nii.gz")]
        elif path.name.endswith(".nii"):
            cid = path.name[: -len(".nii")]
        else:
            continue
        label = root / layout.labels_dir / path.name
        problems = {}
        if not label.is_file():
            rel = f"{layout.labels_dir}/{glob.escape(path.name)}"
            problems[LABEL] = (str(label), _access_problem(root, rel) or NO_MATCH)
            label = None
        cases.append(CaseFiles(manifest.name, cid, {m: path for m in manifest.modalities}, label,
                               dict(channel_index), problems))
    return cases


def find_cases(manifest: DatabaseManifest, root: str | Path, check_json: bool = True) -> list[CaseFiles]:
    """Every case of the release under `root`, sorted by case_id.

    A modality or label whose pattern matches no file or several is None, with the problem in
    CaseFiles.problems (for the integrity check). Raises LayoutError if root is missing (or an
    MSD dataset.json disagrees with the manifest; check_json=False skips that check).
    """
    root = _require_root(manifest, root)
    if manifest.layout.kind == "msd4d":
        if check_json:
            check_dataset_json(manifest, root)
        cases = _msd_cases(manifest, root)
    else:
        cases = _pattern_cases(manifest, root)
    return sorted(cases, key=lambda c: c.case_id)


def read_case(manifest: DatabaseManifest, case_files: CaseFiles, validate: bool = True) -> RawCase:
    """Load a case's modalities (canonical names, manifest order) as 3D float32 images and its label.

    Raises LayoutError (naming the file and the pattern) if a modality's file was not found
    uniquely, or a label matched several files or is shared with another case; ImageReadError
    for an unreadable file and, with `validate`, for any problem `mmlib check` reports of the
    loaded case (empty image, label values the manifest does not name, ...). No label -> None.
    """
    cid = case_files.case_id
    for key in (*manifest.modalities, LABEL):
        expected, problem = case_files.problems.get(key, (None, None))
        if problem and (key != LABEL or problem != NO_MATCH):
            raise LayoutError(f"case {cid}: {key}: {problem}", expected)
    images = {}
    if case_files.channel_index is not None:
        # A 4D file is decompressed once for all of its channels.
        by_file: dict[Path, list] = {}
        for mod in manifest.modalities:
            path = case_files.images[mod]
            if path not in by_file:
                by_file[path] = load_channels(path)
                n_expected = len(manifest.layout.channels) or len(manifest.modalities)
                if len(by_file[path]) != n_expected:
                    raise ImageReadError(f"has {len(by_file[path])} channel(s); the manifest's "
                                         f"layout.channels lists {n_expected}", path)
            images[mod] = by_file[path][case_files.channel_index[mod]]
    else:
        for mod in manifest.modalities:
            images[mod] = load_volume(case_files.images[mod])
    label = load_label(case_files.label) if case_files.label is not None else None
    raw = RawCase(files=case_files, images=images, label=label)
    if validate:
        problems = case_problems(manifest, raw)
        if problems:
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise ImageReadError(f"case {cid}: {problems[0].problem}{more}; `mmlib check {manifest.name}` "
                                 f"lists every problem of the database", problems[0].file)
    return raw


T = TypeVar("T")


def _item_id(item) -> str:
    if isinstance(item, str):
        return item
    if hasattr(item, "case_id"):
        return item.case_id
    return item.files.case_id  # RawCase


def split_cases(manifest: DatabaseManifest, cases: Sequence[T]) -> tuple[list[T], list[T]]:
    """Deterministic train/test split of case ids (or objects with a case_id), each sorted by id.

    The authors' rule: sort the cases by id; the first manifest.train_count(n) are train, the
    rest (the last ones) are test. The same ids always give the same split.
    """
    ordered = sorted(cases, key=_item_id)
    k = manifest.train_count(len(ordered))
    return list(ordered[:k]), list(ordered[k:])
