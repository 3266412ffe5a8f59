"""Reading and writing NIfTI volumes as released: every failure becomes an ImageReadError naming the file.

Real releases hold int16 and float files, scale factors in headers, 4D files with a trailing
singleton axis, labels stored as floats, NaNs and truncated downloads; this module absorbs that.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from mmlib.errors import ImageReadError

# nibabel surfaces a damaged file through many exception types, depending on where the damage is.
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError,
                struct.error, MemoryError)

#: How far a float label value may lie from an integer before the label is refused.
LABEL_TOLERANCE = 0.01


def _read_array(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The file's scaled float32 data (3D or 4D, trailing singleton axes squeezed) and affine."""
    p = Path(path)
    if not p.is_file():
        raise ImageReadError("file not found", p)
    try:
        img = nib.load(str(p))
        # get_fdata applies scl_slope/scl_inter; float32 halves the memory of float64.
        data = np.asarray(img.get_fdata(dtype=np.float32))
        affine = np.asarray(img.affine, dtype=np.float64)
    except _READ_ERRORS as exc:
        raise ImageReadError(f"cannot read image (corrupt or truncated?): {type(exc).__name__}: {exc}", p) from None
    # (X, Y, Z, 1) and (X, Y, Z, 1, 1) are 3D volumes saved by tools that always write a time axis.
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (3, 4):
        raise ImageReadError(f"expected a 3D or 4D image, got shape {tuple(data.shape)}", p)
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise ImageReadError(f"{bad} voxel(s) are NaN or infinite", p)
    return data, affine


def _image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    data = np.ascontiguousarray(data)
    try:
        # nibabel divides by zero voxel sizes while trying a singular affine; the fallback handles it.
        with np.errstate(invalid="ignore", divide="ignore"):
            return nib.Nifti1Image(data, affine)
    except HeaderDataError:
        # A singular affine has no qform; keep it as the sform so the integrity check can report it.
        img = nib.Nifti1Image(data, None)
        img.set_sform(affine, code="scanner")
        return img


def load_volume(path: str | Path, channel: int | None = None) -> nib.Nifti1Image:
    """Read one 3D float32 volume with the file's affine; `channel` picks a 4D file's last-axis index.

    Raises ImageReadError (naming the file) for a missing, corrupt or truncated file, a shape that
    is not 3D/4D, a channel out of range, or NaN/Inf values.
    """
    data, affine = _read_array(path)
    if data.ndim == 4:
        if channel is None:
            raise ImageReadError(f"4D image of shape {tuple(data.shape)}: say which channel to read", path)
        if not 0 <= channel < data.shape[3]:
            raise ImageReadError(f"channel {channel} out of range: the file has {data.shape[3]} channel(s)", path)
        data = data[..., channel]
    elif channel not in (None, 0):
        raise ImageReadError(f"channel {channel} asked of a 3D image (one channel)", path)
    return _image(data, affine)


def load_channels(path: str | Path) -> list[nib.Nifti1Image]:
    """Every channel of a 4D file as 3D float32 images (a 3D file gives one); reads the file once."""
    data, affine = _read_array(path)
    if data.ndim == 3:
        return [_image(data, affine)]
    return [_image(data[..., c], affine) for c in range(data.shape[3])]


def load_label(path: str | Path) -> nib.Nifti1Image:
    """Read a 3D label as int32, rounding float values (0.999999 -> 1); refuse values far from integers."""
    img = load_volume(path)
    data = np.asarray(img.dataobj)
    rounded = np.rint(data)
    off = np.abs(data - rounded) > LABEL_TOLERANCE
    if off.any():
        examples = ", ".join(f"{v:g}" for v in np.unique(data[off])[:5])
        raise ImageReadError(f"{int(off.sum())} label voxel(s) are not integers (e.g. {examples})", path)
    if rounded.size and np.abs(rounded).max() >= 2**31:
        raise ImageReadError("label values too large for integer labels", path)
    return _image(rounded.astype(np.int32), img.affine)


def save_volume(array: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write `array` as NIfTI (.nii or .nii.gz by suffix) atomically: a reader never sees half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if p.name.endswith(".nii.gz") else ".nii"
    # The temporary file sits in the same folder so os.replace stays an atomic rename.
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix, dir=p.parent)
    os.close(fd)
    try:
        nib.save(nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64)), tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
