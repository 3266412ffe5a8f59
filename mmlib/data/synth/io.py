"""Deterministic, atomic writing of the twins' files: same arrays -> same bytes.

nibabel's own .nii.gz writer stamps the gzip header with the current time, so two runs with
the same seed would differ; we gzip the NIfTI bytes ourselves with mtime=0.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from mmlib.atomic_files import atomic_write_bytes

# Level 1 is several times faster than the default 9 on noisy images, for a few % more bytes.
GZIP_LEVEL = 1


def _atomic_write(path: Path, payload: bytes) -> Path:
    # A temporary file beside the target, then an atomic rename; the umask applies (mmlib.atomic_files).
    return atomic_write_bytes(path, payload)


def nifti_bytes(array: np.ndarray, affine: np.ndarray, dtype: str = "int16") -> bytes:
    """The bytes of a NIfTI-1 file holding `array` cast to `dtype`, with sform = qform = affine."""
    data = np.asarray(array)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        data = np.clip(np.rint(data), info.min, info.max)
    img = nib.Nifti1Image(np.ascontiguousarray(data.astype(dtype)), np.asarray(affine, np.float64))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return img.to_bytes()


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray, dtype: str = "int16") -> Path:
    """Write .nii or .nii.gz (by suffix) atomically and byte-reproducibly."""
    path = Path(path)
    raw = nifti_bytes(array, affine, dtype)
    if path.name.endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=GZIP_LEVEL, mtime=0)
    return _atomic_write(path, raw)


def write_json(path: str | Path, obj) -> Path:
    """Write JSON atomically with sorted-free, stable formatting."""
    return _atomic_write(Path(path), (json.dumps(obj, indent=4) + "\n").encode())
