"""The validation of a loaded case, shared by `mmlib check` and the reading for training.

What the integrity check reports as a problem, `read_case` and `prepare_case` refuse: empty
images, non-invertible affines, modalities disagreeing on one affine, label values the manifest
does not name, labels on no image's grid. Each problem names the file it concerns.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import nibabel as nib
import numpy as np

# Affines come from float32 header fields, so grids are compared to a hundredth of a voxel.
_GRID_TOL = 1e-2


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a release: the file (or expected path) and what is wrong with it."""

    file: str
    problem: str


def allowed_label_values(manifest) -> list[int]:
    """Label values a release may hold: background 0 and the manifest's lesion and ignore values."""
    return sorted({0, *manifest.lesion_values, *manifest.ignore_values})


def label_value_problem(manifest, values) -> str | None:
    """The problem with label `values` (any array) if some are not the manifest's, else None."""
    allowed = allowed_label_values(manifest)
    values = np.rint(np.asarray(values))
    bad = values[~np.isin(values, allowed)]  # isin on a short list: no sort of the whole label
    if not bad.size:
        return None
    unexpected = [int(v) for v in np.unique(bad)]
    return f"unexpected label value(s) {unexpected}; the manifest allows {allowed}"


def invertible(affine: np.ndarray) -> bool:
    m = np.asarray(affine, dtype=np.float64)
    return bool(np.isfinite(m).all() and abs(np.linalg.det(m[:3, :3])) > 1e-8)


def same_grid(shape_a, affine_a, shape_b, affine_b) -> bool:
    """True if two grids hold the same voxel centres in world space (axis order and flips may differ)."""
    try:
        t = np.linalg.solve(np.asarray(affine_b, float), np.asarray(affine_a, float))  # a's indices -> b's
    except np.linalg.LinAlgError:
        return False
    rot, shift = t[:3, :3], t[:3, 3]
    if not (np.allclose(rot, np.rint(rot), atol=_GRID_TOL) and np.allclose(shift, np.rint(shift), atol=_GRID_TOL)):
        return False
    rot, shift = np.rint(rot), np.rint(shift)
    if not ((np.abs(rot).sum(0) == 1).all() and (np.abs(rot).sum(1) == 1).all()):
        return False
    # Map the two extreme corners of a's box; the mapped box must be exactly b's box.
    hi_a = np.asarray(shape_a[:3], float) - 1
    ends = np.stack([rot @ np.zeros(3) + shift, rot @ hi_a + shift])
    return bool(np.array_equal(ends.min(0), np.zeros(3)) and
                np.array_equal(ends.max(0), np.asarray(shape_b[:3], float) - 1))


def _describe(img: nib.Nifti1Image) -> str:
    zooms = np.sqrt((np.asarray(img.affine)[:3, :3] ** 2).sum(0))
    return f"shape {tuple(img.shape)}, voxel {tuple(round(float(z), 3) for z in zooms)} mm"


def image_problems(images: dict) -> tuple[list[Problem], dict]:
    """Problems of a case's loaded modalities {mod: (image, file, tag)} and the grids usable
    for comparing the label: {mod: (image, file)} of those with an invertible affine."""
    problems, grids = [], {}
    for mod, (img, path, tag) in images.items():
        data = np.asarray(img.dataobj)
        if data.size == 0 or data.min() == data.max():
            value = f"{float(data.flat[0]):g}" if data.size else "none"
            problems.append(Problem(str(path), f"{tag}: empty image: every voxel is {value}"))
        if invertible(img.affine):
            grids[mod] = (img, path)
        else:
            problems.append(Problem(str(path), f"{tag}: affine is not invertible:\n{np.asarray(img.affine)}"))
    for (m1, (i1, _)), (m2, (i2, p2)) in combinations(grids.items(), 2):
        if np.allclose(i1.affine, i2.affine, atol=1e-4) and i1.shape != i2.shape:
            problems.append(Problem(str(p2), f"{m2} shape {i2.shape} differs from {m1} shape {i1.shape} on the same affine"))
    return problems, grids


def label_problems(manifest, label: nib.Nifti1Image, path, grids: dict) -> list[Problem]:
    """Problems of a loaded label: values the manifest does not name, a singular affine, a grid
    that is none of the case's images' (`grids` from image_problems)."""
    problems = []
    values = label_value_problem(manifest, np.asarray(label.dataobj))
    if values:
        problems.append(Problem(str(path), values))
    if not invertible(label.affine):
        problems.append(Problem(str(path), f"label affine is not invertible:\n{np.asarray(label.affine)}"))
        return problems
    if not grids or any(same_grid(label.shape, label.affine, i.shape, i.affine) for i, _ in grids.values()):
        return problems
    same_affine = [m for m, (i, _) in grids.items() if np.allclose(i.affine, label.affine, atol=1e-4)]
    if same_affine:
        m = same_affine[0]
        problems.append(Problem(str(path), f"label shape {label.shape} differs from {m} shape "
                                           f"{grids[m][0].shape} on the same affine"))
    else:
        others = "; ".join(f"{m}: {_describe(i)}" for m, (i, _) in grids.items())
        problems.append(Problem(str(path), f"label grid ({_describe(label)}) matches no image of the case ({others})"))
    return problems


def case_problems(manifest, raw) -> list[Problem]:
    """Every problem of a case read by `read_case` (a RawCase), as `mmlib check` reports them."""
    files = raw.files
    images = {}
    for mod in manifest.modalities:
        if mod in raw.images:
            index = None if files.channel_index is None else files.channel_index.get(mod)
            tag = mod if index is None else f"{mod} (channel {index})"
            images[mod] = (raw.images[mod], Path(files.images[mod]) if files.images.get(mod) else None, tag)
    problems, grids = image_problems(images)
    if raw.label is not None:
        problems += label_problems(manifest, raw.label, files.label, grids)
    return problems
