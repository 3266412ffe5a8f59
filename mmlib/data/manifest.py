"""Database manifests: one YAML file per database says how to read its release.

A manifest serves the real release and its synthetic twin alike; only the root folder differs.
The schema (every key is checked on load, every mistake named):

    name: BRATS                         # short name, also the twin's folder name
    pathology: glioma
    release: "..."                      # free text: where the release comes from
    modalities: [FLAIR, T1, T1c, T2]    # channel order of this database (aliases allowed)
    skull_stripped: true
    brain_mask: derived | template      # 'template': MNI152 2009 brain mask (ATLAS)
    layout:
      kind: pattern | msd4d
      # pattern: globs relative to the root (never absolute, never '..'); {case} = the case
      #          folder (relative to root), {name} = its last component; every file pattern
      #          needs one of them (a file shared by every case is not a case's file).
      cases: "Center_*/Patient_*"       # a glob or a list of globs, each match one case folder
      id: "sub-r\\d+s\\d+"              # optional regex; the case id is its first match in {case}
      images: {FLAIR: "{case}/Preprocessed_Data/FLAIR_preprocessed.nii.gz", ...}
      label: "{case}/Masks/Consensus.nii.gz"
      # msd4d: images: imagesTr, labels: labelsTr, channels: [FLAIR, T1w, t1gd, T2w]
    labels: {lesion: [1, 2, 3], ignore: []}   # label values merged to lesion / ignored
    split: {cases: 484, train: 444}  # the paper's counts (test: the last cases by name); train 0 = evaluation only
    synth: {...}                        # parameters of the synthetic twin (mmlib.data.synth)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmlib.errors import ManifestError, MMLibError
from mmlib.data.modalities import canonical_modality

_TOP_KEYS = {"name", "pathology", "release", "modalities", "skull_stripped", "brain_mask",
             "layout", "labels", "split", "synth", "notes"}
_REQUIRED = ("name", "pathology", "modalities", "layout", "labels", "split")


@dataclass(frozen=True)
class Layout:
    """Where cases and their files lie in a release (see the module docstring)."""

    kind: str
    cases: tuple[str, ...] = ()
    id: str | None = None
    images: dict[str, str] = field(default_factory=dict)
    label: str | None = None
    images_dir: str = "imagesTr"
    labels_dir: str = "labelsTr"
    channels: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatabaseManifest:
    """A validated database manifest; `path` is the YAML it came from (None if built in code)."""

    name: str
    pathology: str
    modalities: tuple[str, ...]
    layout: Layout
    lesion_values: tuple[int, ...]
    ignore_values: tuple[int, ...]
    split_cases: int
    split_train: int
    skull_stripped: bool = True
    brain_mask: str = "derived"
    release: str = ""
    synth: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def evaluation_only(self) -> bool:
        return self.split_train == 0

    def train_count(self, n_found: int) -> int:
        """Training cases out of `n_found`: the paper's count, or its proportion for a twin."""
        if self.split_train == 0 or n_found < 2:
            return 0
        if n_found == self.split_cases:
            return self.split_train
        return min(n_found - 1, max(1, round(n_found * self.split_train / self.split_cases)))

    def resolve_root(self, root: str | Path | None = None) -> Path:
        """The release folder: `root`, else $MMLIB_<NAME>_ROOT, else $MMLIB_DATA_ROOT/<name>."""
        if root is not None:
            return Path(root)
        env = os.environ.get(f"MMLIB_{self.name.upper()}_ROOT")
        if env:
            return Path(env)
        base = os.environ.get("MMLIB_DATA_ROOT")
        if base:
            return Path(base) / self.name
        raise MMLibError(f"no root folder for database {self.name}: pass --root, or set "
                         f"MMLIB_{self.name.upper()}_ROOT or MMLIB_DATA_ROOT")


def data_root_from_env(data_root: str | Path | None = None) -> Path | None:
    """The folder holding the databases as <DIR>/<NAME>/: `data_root`, else $MMLIB_DATA_ROOT,
    else None. A folder given either way must exist: MMLibError names it (and the variable)."""
    source = "--data-root"
    if data_root is None or str(data_root) == "":
        data_root, source = os.environ.get("MMLIB_DATA_ROOT") or None, "MMLIB_DATA_ROOT"
    if data_root is None:
        return None
    root = Path(data_root).expanduser()
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise MMLibError(f"{source} {what}; it must be the folder holding the databases as <NAME>/", root)
    return root


def use_twins(names, data_root: str | Path | None = None) -> bool:
    """True when no real data is asked for `names`: no data_root, no $MMLIB_DATA_ROOT and no
    $MMLIB_<NAME>_ROOT; the experiments then run on synthetic twins."""
    if data_root is not None or os.environ.get("MMLIB_DATA_ROOT"):
        return False
    return not any(os.environ.get(f"MMLIB_{n.upper()}_ROOT") for n in names)


def _fail(path, msg):
    raise ManifestError(msg, path)


def _int_list(value, what, path) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        _fail(path, f"{what} must be a list of integers, got {value!r}")
    return tuple(value)


def _confined(pattern: str, what: str, path, per_case: bool = False) -> str:
    """`pattern` if it stays inside the root folder (relative, no '..'), else ManifestError."""
    text = pattern.strip()
    if not text:
        _fail(path, f"{what} is empty")
    if text.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", text):
        _fail(path, f"{what} {pattern!r} is absolute; patterns are relative to the database's root folder")
    if ".." in re.split(r"[/\\]+", text):
        _fail(path, f"{what} {pattern!r} climbs out of the root folder with '..'")
    if per_case and "{case}" not in text and "{name}" not in text:
        _fail(path, f"{what} {pattern!r} names the same file for every case; use {{case}} or {{name}}")
    return pattern


def _parse_layout(raw, path, n_modalities) -> Layout:
    if not isinstance(raw, dict):
        _fail(path, "layout must be a mapping with a 'kind'")
    kind = raw.get("kind")
    if kind == "msd4d":
        unknown = set(raw) - {"kind", "images", "labels", "channels"}
        if unknown:
            _fail(path, f"layout: unknown key(s) {sorted(unknown)} for kind msd4d")
        channels = raw.get("channels")
        if not isinstance(channels, list) or len(channels) != n_modalities:
            _fail(path, f"layout.channels must list the {n_modalities} channels of the 4D images in order")
        try:
            canon = [canonical_modality(c) for c in channels]
        except MMLibError as exc:
            _fail(path, f"layout.channels: {exc.problem}")
        images_dir = _confined(str(raw.get("images", "imagesTr")), "layout.images", path)
        labels_dir = _confined(str(raw.get("labels", "labelsTr")), "layout.labels", path)
        return Layout(kind="msd4d", images_dir=images_dir, labels_dir=labels_dir, channels=tuple(canon))
    if kind == "pattern":
        unknown = set(raw) - {"kind", "cases", "id", "images", "label"}
        if unknown:
            _fail(path, f"layout: unknown key(s) {sorted(unknown)} for kind pattern")
        cases = raw.get("cases")
        if isinstance(cases, str):
            cases = [cases]
        if not isinstance(cases, list) or not cases or not all(isinstance(c, str) for c in cases):
            _fail(path, "layout.cases must be a glob or a list of globs")
        for glob_ in cases:
            _confined(glob_, "layout.cases", path)
        images = raw.get("images")
        if not isinstance(images, dict) or not images:
            _fail(path, "layout.images must map each modality to a file pattern")
        canon_images = {}
        for mod, pattern in images.items():
            try:
                canon = canonical_modality(str(mod))
            except MMLibError as exc:
                _fail(path, f"layout.images: {exc.problem}")
            if canon in canon_images:
                _fail(path, f"layout.images: modality {canon} given twice")
            if not isinstance(pattern, str):
                _fail(path, f"layout.images.{mod} must be a file pattern string")
            canon_images[canon] = _confined(pattern, f"layout.images.{mod}", path, per_case=True)
        label = raw.get("label")
        if label is not None and not isinstance(label, str):
            _fail(path, "layout.label must be a file pattern string")
        if label is not None:
            _confined(label, "layout.label", path, per_case=True)
        id_re = raw.get("id")
        if id_re is not None and not isinstance(id_re, str):
            _fail(path, "layout.id must be a regular expression string")
        if id_re is not None:
            try:
                re.compile(id_re)
            except re.error as exc:
                _fail(path, f"layout.id is not a valid regular expression: {exc}")
        return Layout(kind="pattern", cases=tuple(cases), id=id_re, images=canon_images, label=label)
    _fail(path, f"layout.kind must be 'pattern' or 'msd4d', got {kind!r}")


def parse_manifest(raw: Any, path: str | Path | None = None) -> DatabaseManifest:
    """Validate a manifest given as a parsed mapping; raise ManifestError naming the mistake."""
    if not isinstance(raw, dict):
        _fail(path, "a manifest must be a YAML mapping of keys to values")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        _fail(path, f"missing key(s): {', '.join(missing)}")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        _fail(path, f"unknown key(s): {', '.join(sorted(unknown))}")
    name = raw["name"]
    if not isinstance(name, str) or not name.replace("_", "").isalnum():
        _fail(path, f"name must be letters, digits and '_', got {name!r}")
    mods = raw["modalities"]
    if not isinstance(mods, list) or not mods:
        _fail(path, "modalities must be a non-empty list")
    canon_mods = []
    for m in mods:
        try:
            c = canonical_modality(str(m))
        except MMLibError as exc:
            _fail(path, f"modalities: {exc.problem}")
        if c in canon_mods:
            _fail(path, f"modalities: duplicate modality {m!r} (= {c})")
        canon_mods.append(c)
    layout = _parse_layout(raw["layout"], path, len(canon_mods))
    if layout.kind == "pattern" and set(layout.images) != set(canon_mods):
        _fail(path, f"layout.images gives {sorted(layout.images)} but modalities are {sorted(canon_mods)}")
    if layout.kind == "msd4d" and set(layout.channels) != set(canon_mods):
        _fail(path, f"layout.channels gives {list(layout.channels)} but modalities are {canon_mods}")
    labels = raw["labels"]
    if not isinstance(labels, dict) or "lesion" not in labels:
        _fail(path, "labels must be a mapping with a 'lesion' list (and optionally 'ignore')")
    if set(labels) - {"lesion", "ignore"}:
        _fail(path, f"labels: unknown key(s) {sorted(set(labels) - {'lesion', 'ignore'})}")
    lesion = _int_list(labels["lesion"], "labels.lesion", path)
    ignore = _int_list(labels.get("ignore"), "labels.ignore", path)
    if not lesion or 0 in lesion:
        _fail(path, "labels.lesion must list the non-zero label values that are lesion")
    if set(lesion) & set(ignore) or 0 in ignore:
        _fail(path, "labels.ignore must not contain 0 or a lesion value")
    split = raw["split"]
    if isinstance(split, dict) and "seed" in split:
        _fail(path, "split: no seed any more: the test cases are the last ones by case name (the authors' rule)")
    if not isinstance(split, dict) or set(split) - {"cases", "train"} or "cases" not in split or "train" not in split:
        _fail(path, "split must be a mapping {cases: N, train: K}")
    n, k = split["cases"], split["train"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, k)) or n < 1 or not 0 <= k < n:
        _fail(path, f"split: need integers with 0 <= train < cases, got cases={n!r} train={k!r}")
    brain_mask = raw.get("brain_mask", "derived")
    if brain_mask not in ("derived", "template"):
        _fail(path, f"brain_mask must be 'derived' or 'template', got {brain_mask!r}")
    stripped = raw.get("skull_stripped", True)
    if not isinstance(stripped, bool):
        _fail(path, "skull_stripped must be true or false")
    synth = raw.get("synth", {}) or {}
    if not isinstance(synth, dict):
        _fail(path, "synth must be a mapping")
    return DatabaseManifest(
        name=name, pathology=str(raw["pathology"]), modalities=tuple(canon_mods), layout=layout,
        lesion_values=lesion, ignore_values=ignore, split_cases=n, split_train=k,
        skull_stripped=stripped, brain_mask=brain_mask, release=str(raw.get("release", "")),
        synth=synth, path=None if path is None else Path(path), raw=raw)


def load_manifest(path: str | Path) -> DatabaseManifest:
    """Read and validate one manifest YAML; a name like 'BRATS' finds the packaged manifest."""
    p = Path(path)
    if not p.suffix and not p.exists():
        p = manifest_dir() / f"{path}.yaml"
    try:
        text = p.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise ManifestError("manifest file not found", p) from None
    except IsADirectoryError:
        raise ManifestError("is a folder, not a manifest file", p) from None
    except PermissionError:
        raise ManifestError("permission denied: cannot read the manifest", p) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read: {exc}", p) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"not valid YAML: {exc}", p) from None
    return parse_manifest(raw, p)


def manifest_dir() -> Path:
    """The folder of manifests: $MMLIB_MANIFESTS, else the repository's data_manifests/."""
    env = os.environ.get("MMLIB_MANIFESTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "data_manifests"


#: The paper's databases, training ones first (in the order of the paper's Table 1).
TRAINING_DATABASES = ("BRATS", "ATLAS", "MSSEG", "TBI", "WMH")
EVALUATION_DATABASES = ("ISLES", "TUMOR2")
ALL_DATABASES = TRAINING_DATABASES + EVALUATION_DATABASES
#: The databases private to the paper's institutions (Section 3): no user outside them has a release.
PRIVATE_DATABASES = ("TBI", "TUMOR2")


def load_all_manifests(names=ALL_DATABASES) -> dict[str, DatabaseManifest]:
    """The packaged manifests by name."""
    return {n: load_manifest(manifest_dir() / f"{n}.yaml") for n in names}
