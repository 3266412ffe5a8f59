"""Integrity check of a release: list every problem, each with the file it concerns.

Like nnU-Net's dataset integrity check, it never stops at the first problem, so one run tells
a user everything to fix. Modalities of one case may lie on different grids (real releases do);
a label must lie on the grid of at least one of its images, compared in world space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import nibabel as nib
import numpy as np

from mmlib.data.cases import CaseFiles
from mmlib.data.manifest import DatabaseManifest
from mmlib.data.nifti import load_channels, load_label, load_volume
from mmlib.data.readers import check_dataset_json, find_cases
from mmlib.errors import ImageReadError, LayoutError

# Affines come from float32 header fields, so grids are compared to a hundredth of a voxel.
_GRID_TOL = 1e-2


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a release: the file (or expected path) and what is wrong with it."""

    file: str
    problem: str


@dataclass
class CheckReport:
    """The outcome of check_database: how many cases were found and every problem seen."""

    database: str
    root: str
    cases: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, file: str | Path | None, problem: str) -> None:
        self.problems.append(Problem(str(file) if file is not None else self.root, problem))

    def to_json(self) -> dict:
        """A JSON-ready dict: {database, root, cases, problems: [{file, problem}, ...]}."""
        return {"database": self.database, "root": self.root, "cases": self.cases,
                "problems": [{"file": p.file, "problem": p.problem} for p in self.problems]}


def _invertible(affine: np.ndarray) -> bool:
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


def _load_images(manifest: DatabaseManifest, case: CaseFiles, report: CheckReport) -> dict:
    """Readable modalities of a case: name -> (image, file, tag); every failure goes to the report."""
    images = {}
    if case.channel_index is not None:
        n_expected = len(manifest.layout.channels)
        loaded: dict[Path, list | None] = {}
        for mod in manifest.modalities:
            path = case.images[mod]
            if path not in loaded:
                try:
                    loaded[path] = load_channels(path)
                except ImageReadError as exc:
                    report.add(exc.file, exc.problem)
                    loaded[path] = None
                    continue
                if len(loaded[path]) != n_expected:
                    report.add(path, f"4D image has {len(loaded[path])} channel(s); the manifest's "
                                     f"layout.channels lists {n_expected}")
            chans, index = loaded[path], case.channel_index[mod]
            if chans is not None and index < len(chans):
                images[mod] = (chans[index], path, f"{mod} (channel {index})")
        return images
    for mod in manifest.modalities:
        path = case.images.get(mod)
        if path is None:
            continue  # already reported from case.problems
        try:
            images[mod] = (load_volume(path), path, mod)
        except ImageReadError as exc:
            report.add(exc.file, exc.problem)
    return images


def _check_case(manifest: DatabaseManifest, case: CaseFiles, report: CheckReport) -> None:
    for key, (expected, problem) in case.problems.items():
        report.add(expected, f"case {case.case_id}: {key}: {problem}")
    images = _load_images(manifest, case, report)
    grids = {}
    for mod, (img, path, tag) in images.items():
        data = np.asarray(img.dataobj)
        if data.size == 0 or data.min() == data.max():
            value = f"{float(data.flat[0]):g}" if data.size else "none"
            report.add(path, f"{tag}: empty image: every voxel is {value}")
        if _invertible(img.affine):
            grids[mod] = (img, path)
        else:
            report.add(path, f"{tag}: affine is not invertible:\n{np.asarray(img.affine)}")
    for (m1, (i1, _)), (m2, (i2, p2)) in combinations(grids.items(), 2):
        if np.allclose(i1.affine, i2.affine, atol=1e-4) and i1.shape != i2.shape:
            report.add(p2, f"{m2} shape {i2.shape} differs from {m1} shape {i1.shape} on the same affine")
    if case.label is None:
        return
    try:
        label = load_label(case.label)
    except ImageReadError as exc:
        report.add(exc.file, exc.problem)
        return
    allowed = {0, *manifest.lesion_values, *manifest.ignore_values}
    values = np.unique(np.asarray(label.dataobj))
    unexpected = sorted(int(v) for v in values if int(v) not in allowed)
    if unexpected:
        report.add(case.label, f"unexpected label value(s) {unexpected}; the manifest allows {sorted(allowed)}")
    if not _invertible(label.affine):
        report.add(case.label, f"label affine is not invertible:\n{np.asarray(label.affine)}")
        return
    if not grids or any(same_grid(label.shape, label.affine, i.shape, i.affine) for i, _ in grids.values()):
        return
    same_affine = [m for m, (i, _) in grids.items() if np.allclose(i.affine, label.affine, atol=1e-4)]
    if same_affine:
        m = same_affine[0]
        report.add(case.label, f"label shape {label.shape} differs from {m} shape {grids[m][0].shape} "
                               f"on the same affine")
    else:
        others = "; ".join(f"{m}: {_describe(i)}" for m, (i, _) in grids.items())
        report.add(case.label, f"label grid ({_describe(label)}) matches no image of the case ({others})")


def check_database(manifest: DatabaseManifest, root: str | Path, progress: bool = False) -> CheckReport:
    """Check a release against its manifest; return every problem found, never stopping at one.

    Reads every file of every case (progress=True shows a tqdm bar). Hidden files are ignored.
    """
    report = CheckReport(database=manifest.name, root=str(root))
    if manifest.layout.kind == "msd4d" and Path(root).is_dir():
        try:
            check_dataset_json(manifest, root)
        except LayoutError as exc:
            report.add(exc.file, exc.problem)
    try:
        cases = find_cases(manifest, root, check_json=False)
    except LayoutError as exc:
        report.add(exc.file, exc.problem)
        return report
    report.cases = len(cases)
    if not cases:
        where = (manifest.layout.images_dir if manifest.layout.kind == "msd4d"
                 else ", ".join(manifest.layout.cases))
        report.add(root, f"no cases found (looked for {where})")
        return report
    if progress:
        from tqdm.auto import tqdm
        cases = tqdm(cases, desc=f"checking {manifest.name}", unit="case")
    for case in cases:
        _check_case(manifest, case, report)
    return report
