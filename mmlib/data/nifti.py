"""Reading and writing NIfTI volumes as released: every failure becomes an ImageReadError naming the file.

Real releases hold int16 and float files, scale factors in headers, 4D files with a trailing
singleton axis, labels stored as floats, NaNs and truncated downloads; this module absorbs that.
A header's claimed size is checked against the file and a voxel limit before anything is allocated.
"""

from __future__ import annotations

import gzip
import os
import stat
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from mmlib.atomic_files import atomic_write_bytes
from mmlib.env import positive_number
from mmlib.errors import ImageReadError, MMLibError

# nibabel surfaces a damaged file through many exception types, depending on where the damage is.
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError,
                struct.error)

#: How far a float label value may lie from an integer before the label is refused.
LABEL_TOLERANCE = 0.01
#: Voxels one 3D volume may have before a header is believed: 512^3 (0.5 GiB as float32).
#: $MMLIB_MAX_VOXELS raises it for larger images.
MAX_VOXELS = 512 ** 3
#: Volumes (channels, time points) one file may hold beyond its three spatial axes.
MAX_CHANNELS = 64
#: deflate cannot compress more than ~1032:1, so a .gz file of n bytes holds at most this x n bytes.
GZIP_MAX_RATIO = 1032


def max_voxels() -> int:
    """The voxel limit per 3D volume: $MMLIB_MAX_VOXELS if set, else MAX_VOXELS."""
    value = int(positive_number("MMLIB_MAX_VOXELS", MAX_VOXELS, "voxels"))
    if value < 1:  # a fraction of a voxel
        raise MMLibError(f"MMLIB_MAX_VOXELS must be a positive number of voxels, got {os.environ['MMLIB_MAX_VOXELS']!r}")
    return value


def _stat_file(p: Path) -> os.stat_result:
    """The file's stat, or an ImageReadError saying why it cannot be reached."""
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise ImageReadError("file not found", p) from None
    except PermissionError:
        raise ImageReadError("permission denied: a folder on the path cannot be searched", p) from None
    except OSError as exc:
        raise ImageReadError(f"cannot reach the file: {exc.strerror or exc}", p) from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageReadError("not a regular file" + (" (a folder)" if stat.S_ISDIR(st.st_mode) else ""), p)
    return st


def _check_claimed_size(img, p: Path) -> None:
    """Refuse a header whose claimed data cannot be in the file, or is beyond the voxel limit,
    before any array is allocated (a damaged 37 KB file must not claim gigabytes)."""
    shape = tuple(int(d) for d in img.header.get_data_shape())
    dtype = np.dtype(img.header.get_data_dtype())
    spatial = int(np.prod(shape[:3], dtype=object)) if shape else 0
    extra = int(np.prod(shape[3:], dtype=object)) if len(shape) > 3 else 1
    claimed = spatial * extra * dtype.itemsize
    dims = "x".join(str(d) for d in shape)
    limit = max_voxels()
    if spatial > limit:
        raise ImageReadError(f"header claims {dims} voxels ({spatial:,} per volume), more than the limit of "
                             f"{limit:,} (damaged header? set MMLIB_MAX_VOXELS for larger images)", p)
    if extra > MAX_CHANNELS:
        raise ImageReadError(f"header claims {dims} voxels: {extra} volumes beyond the 3 spatial axes, "
                             f"more than the {MAX_CHANNELS} an image of mmlib may have", p)
    image_map = getattr(img, "file_map", {}).get("image")
    data_file = Path(getattr(image_map, "filename", None) or p)
    size = _stat_file(data_file).st_size
    gib = claimed / 2 ** 30
    if data_file.name.endswith(".gz"):
        if claimed > size * GZIP_MAX_RATIO + 4096:
            raise ImageReadError(f"header claims {dims} {dtype} voxels ({gib:.2f} GiB) but a gzip file of "
                                 f"{size:,} bytes cannot hold more than {size * GZIP_MAX_RATIO / 2 ** 30:.2f} GiB "
                                 f"(damaged header or truncated file)", p)
    elif data_file.suffix in (".nii", ".img"):
        offset = int(getattr(img.dataobj, "offset", 0) or 0)
        if offset + claimed > size:
            raise ImageReadError(f"header claims {dims} {dtype} voxels ({claimed:,} bytes from byte {offset}) "
                                 f"but the file has {size:,} bytes (truncated file or damaged header)", p)


def _read_array(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The file's scaled float32 data (3D or 4D, trailing singleton axes squeezed) and affine."""
    p = Path(path)
    _stat_file(p)
    img = None
    try:
        img = nib.load(str(p))
        _check_claimed_size(img, p)
        # get_fdata applies scl_slope/scl_inter; float32 halves the memory of float64.
        data = np.asarray(img.get_fdata(dtype=np.float32))
        affine = np.asarray(img.affine, dtype=np.float64)
    except ImageReadError:
        raise
    except PermissionError:
        raise ImageReadError("permission denied: cannot read the file", p) from None
    except MemoryError:
        shape = "" if img is None else f" of {'x'.join(str(d) for d in img.header.get_data_shape())} voxels"
        raise ImageReadError(f"not enough memory to read the image{shape}", p) from None
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
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    raw = img.to_bytes()
    if p.name.endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=6, mtime=0)
    # Temporary file beside the target, then an atomic rename (mmlib.atomic_files).
    return atomic_write_bytes(p, raw)
