"""The two shapes a case takes: its files in a release, and its preprocessed arrays."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Label value for voxels left out of loss and metrics (e.g. WMH's 'other pathology').
IGNORE = 255


@dataclass(frozen=True)
class CaseFiles:
    """Where one case's files lie. For 4D releases (MSD) every modality points at the same
    file and `channel_index` says which index of the last axis holds it. A modality (or the
    label) whose pattern matched no file or several has None and an entry in `problems`:
    key ('label' for the label) -> (expected path pattern, problem)."""

    database: str
    case_id: str
    images: dict[str, Path | None]
    label: Path | None
    channel_index: dict[str, int] | None = None
    problems: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass
class PreparedCase:
    """One preprocessed case, ready for training or evaluation.

    image: float32 (M, X, Y, Z) in `modalities` order, z-scored inside the brain, 0 outside.
    label: uint8 (X, Y, Z): 0 background, 1 lesion, IGNORE (255) left out of loss and metrics.
    brain: bool (X, Y, Z). spacing: voxel size in mm. Arrays are RAS-oriented. sources: the
    input files' {file: [size, mtime_ns]} it was made from (mmlib.data.identity), when known.
    affine: the 4x4 world affine of the arrays' (cropped) grid, when known.
    """

    database: str
    case_id: str
    modalities: tuple[str, ...]
    image: np.ndarray
    label: np.ndarray
    brain: np.ndarray
    spacing: tuple[float, float, float]
    sources: dict | None = None
    affine: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.label.shape)

    def lesion_volume_ml(self) -> float:
        return float((self.label == 1).sum() * np.prod(self.spacing) / 1000.0)


@dataclass
class RawCase:
    """One case as read from its release, before preprocessing.

    images: canonical modality -> 3D float32 nibabel image (own affine; modalities may differ
    in orientation and voxel size). label: the label image as released (values not merged yet),
    or None for a case without label.
    """

    files: CaseFiles
    images: dict  # str -> nib.Nifti1Image
    label: object | None  # nib.Nifti1Image | None
