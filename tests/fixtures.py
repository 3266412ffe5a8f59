"""Tiny releases in each database's release layout, for tests (reusable: `from fixtures import ...`).

Case folders follow the real releases (ATLAS sub-rXXXsYYY sessions, MSSEG centres, WMH
sites, ISLES SMIR ids); other pattern layouts fill each '*' of `layout.cases` with a number.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import numpy as np

from mmlib.data.manifest import DatabaseManifest
from mmlib.data.nifti import save_volume

_WMH_SITES = (("Utrecht", 0), ("Singapore", 50), ("Amsterdam/GE3T", 100))


def tiny_affine(shape=(8, 8, 8)) -> np.ndarray:
    """1 mm voxels, centred on the world origin."""
    affine = np.eye(4)
    affine[:3, 3] = -np.asarray(shape[:3]) / 2
    return affine


def tiny_label(manifest: DatabaseManifest, shape=(8, 8, 8)) -> np.ndarray:
    """uint8 label holding a small slab of every lesion and ignore value of the manifest."""
    label = np.zeros(shape, np.uint8)
    for j, value in enumerate((*manifest.lesion_values, *manifest.ignore_values)):
        label[1:3, 1:3, (1 + j) % shape[2]] = value
    return label


def _case_folder(manifest: DatabaseManifest, i: int) -> str:
    """The i-th case folder (relative to root) in the database's release layout."""
    if manifest.name == "ATLAS":
        site = i % 2 + 1
        return f"ATLAS_2/Training/R{site:03d}/sub-r{site:03d}s{i + 1:03d}/ses-1/anat"
    if manifest.name == "WMH":
        site, base = _WMH_SITES[i % 3]
        return f"training/{site}/{base + i}"
    if manifest.name == "ISLES":
        return f"Training/{i + 1}"
    if manifest.name == "MSSEG":
        center = (1, 3, 7, 8)[i % 4]
        return f"Center_{center:02d}/Patient_{i // 4 + 1:02d}"
    pattern = manifest.layout.cases[i % len(manifest.layout.cases)]
    return pattern.replace("*", f"{i + 1:03d}").replace("?", "0")


def _star(manifest: DatabaseManifest, folder: str, i: int, counter: list[int]) -> str:
    """What a '*' in a file pattern stands for in this release."""
    if manifest.name == "ATLAS":
        return re.search(r"sub-r\d+s\d+", folder).group(0) + "_ses-1"
    counter[0] += 1
    return str(50000 + counter[0])  # ISLES: each file has its own SMIR id


def _case_id(manifest: DatabaseManifest, folder: str) -> str:
    m = re.search(manifest.layout.id, folder) if manifest.layout.id else None
    return m.group(0) if m else folder


def case_file(manifest: DatabaseManifest, pattern: str, folder: str, star: str) -> str:
    """A file path (relative to root) that `pattern` matches for the case folder."""
    name = PurePosixPath(folder).name
    return pattern.replace("{case}", folder).replace("{name}", name).replace("*", star)


def write_tiny_release(manifest: DatabaseManifest, root: str | Path, n_cases: int = 3,
                       shape=(8, 8, 8), seed: int = 0) -> list[str]:
    """Write a clean release of `n_cases` tiny cases under `root`; return their case ids, sorted.

    Images are float32 noise in [50, 150); labels hold every lesion and ignore value.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    affine = tiny_affine(shape)
    ids = []
    if manifest.layout.kind == "msd4d":
        release_names = manifest.raw.get("layout", {}).get("channels", list(manifest.layout.channels))
        root.mkdir(parents=True, exist_ok=True)
        (root / "dataset.json").write_text(json.dumps({
            "name": manifest.name, "modality": {str(k): n for k, n in enumerate(release_names)},
            "labels": {"0": "background", **{str(v): f"lesion {v}" for v in manifest.lesion_values}}}))
        for i in range(n_cases):
            cid = f"{manifest.name}_{i + 1:03d}"
            image = rng.uniform(50, 150, (*shape, len(manifest.layout.channels))).astype(np.float32)
            save_volume(image, affine, root / manifest.layout.images_dir / f"{cid}.nii.gz")
            save_volume(tiny_label(manifest, shape), affine, root / manifest.layout.labels_dir / f"{cid}.nii.gz")
            ids.append(cid)
        return sorted(ids)
    counter = [0]
    for i in range(n_cases):
        folder = _case_folder(manifest, i)
        (root / folder).mkdir(parents=True, exist_ok=True)
        for mod in manifest.modalities:
            rel = case_file(manifest, manifest.layout.images[mod], folder, _star(manifest, folder, i, counter))
            save_volume(rng.uniform(50, 150, shape).astype(np.float32), affine, root / rel)
        if manifest.layout.label:
            rel = case_file(manifest, manifest.layout.label, folder, _star(manifest, folder, i, counter))
            save_volume(tiny_label(manifest, shape), affine, root / rel)
        ids.append(_case_id(manifest, folder))
    return sorted(ids)


def lock_folder(monkeypatch, locked: Path) -> None:
    """Make `locked` behave as a folder without read and search permission (for tests run as root,
    whom real permissions do not stop): listing it, and stat'ing anything inside it, fail."""
    import os

    real = {name: getattr(os, name) for name in ("scandir", "stat", "lstat")}

    def deny(name, inside):
        def call(path=".", *args, **kwargs):
            full = os.path.abspath(path)
            if full.startswith(str(locked) + os.sep) if inside else full == str(locked):
                raise PermissionError(13, "Permission denied", str(path))
            return real[name](path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "scandir", deny("scandir", inside=False))
    monkeypatch.setattr(os, "stat", deny("stat", inside=True))
    monkeypatch.setattr(os, "lstat", deny("lstat", inside=True))
