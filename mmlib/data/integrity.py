"""Integrity check of a release: list every problem, each with the file it concerns.

Like nnU-Net's dataset integrity check, it never stops at the first problem, so one run tells
a user everything to fix. Modalities of one case may lie on different grids (real releases do);
a label must lie on the grid of at least one of its images, compared in world space. The
checks of a loaded case live in mmlib.data.validate, which also refuses such cases for training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from mmlib.data.cases import CaseFiles
from mmlib.data.manifest import DatabaseManifest
from mmlib.data.nifti import load_channels, load_label, load_volume
from mmlib.data.readers import check_dataset_json, find_cases
from mmlib.data.validate import Problem, image_problems, label_problems, same_grid
from mmlib.errors import ImageReadError, LayoutError


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
    problems, grids = image_problems(_load_images(manifest, case, report))
    report.problems += problems
    if case.label is None:
        return
    try:
        label = load_label(case.label)
    except ImageReadError as exc:
        report.add(exc.file, exc.problem)
        return
    report.problems += label_problems(manifest, label, case.label, grids)


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
        cases = tqdm(cases, desc=f"checking {manifest.name}", unit="case")
    for case in cases:
        _check_case(manifest, case, report)
    return report


__all__ = ["CheckReport", "Problem", "check_database", "same_grid"]
