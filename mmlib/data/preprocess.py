"""Preprocessing: one RAS grid, a brain mask, z-scores inside the brain, merged labels, a cache.

Every case of every database ends the same way (the paper, Methods): all modalities and the
label on one isotropic grid, intensities z-scored inside the brain and 0 outside, the volume
cropped to the brain, labels merged to 0 / 1 / IGNORE. Label values the manifest does not name
are refused, as `mmlib check` reports them. `prepare_database` caches each case as a compressed
.npz in a folder keyed by the manifest, the spacing, the resolved root and PREPROCESS_VERSION; each
entry records its input files' size and mtime, and a case whose inputs changed is prepared again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from mmlib.atomic_files import atomic_open, clean_stale_temps
from mmlib.data.cases import IGNORE, PreparedCase, RawCase
from mmlib.data.identity import case_sources, cases_identity, changed_files, manifest_content, short_hash
from mmlib.data.readers import find_cases, read_case
from mmlib.data.validate import label_value_problem
from mmlib.errors import ImageReadError, MMLibError

#: Bump whenever the output of `prepare_case` changes: it invalidates every cache entry.
PREPROCESS_VERSION = 1
#: Voxels kept around the brain's bounding box when cropping.
CROP_MARGIN = 2


class PreprocessError(MMLibError):
    """A case cannot be preprocessed (empty brain mask, non-finite values) or a cache entry is bad."""


class DataChangedWarning(UserWarning):
    """A cached case's input files changed since it was prepared: it is prepared again."""


# --------------------------------------------------------------------------- grid and resampling

def _as_3d(img, file, what: str) -> nib.Nifti1Image:
    """The image reoriented to RAS (closest canonical) with trailing singleton axes dropped."""
    img = nib.as_closest_canonical(img)
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ImageReadError(f"{what} must be a 3D volume, got shape {data.shape}", file)
    return nib.Nifti1Image(data, img.affine)


def reference_grid(img: nib.Nifti1Image, spacing_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and 4x4 affine of the isotropic grid covering `img`'s field of view.

    The grid keeps the (RAS) axis directions of `img` and is centred on its field of view.
    """
    affine = img.affine
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    n_old = np.array(img.shape[:3])
    n_new = np.maximum(1, np.round(n_old * zooms / spacing_mm)).astype(int)
    new = np.eye(4)
    new[:3, :3] = affine[:3, :3] / zooms * spacing_mm
    centre = affine[:3, :3] @ ((n_old - 1) / 2) + affine[:3, 3]
    new[:3, 3] = centre - new[:3, :3] @ ((n_new - 1) / 2)
    return tuple(int(n) for n in n_new), new


def resample(data: np.ndarray, src_affine: np.ndarray, shape, affine: np.ndarray,
              order: int = 1, antialias: bool = True) -> np.ndarray:
    """`data` (on `src_affine`) resampled into the grid (`shape`, `affine`) through world space.

    Zero outside the source's field of view. Downsampling first blurs with a Gaussian
    (sigma = (factor - 1) / 2 source voxels) so coarse grids average rather than alias.
    """
    data = np.asarray(data, dtype=np.float32)
    if antialias and order > 0:
        src_zooms = np.sqrt((src_affine[:3, :3] ** 2).sum(axis=0))
        new_zoom = float(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).mean())
        sigma = np.maximum(0.0, (new_zoom / src_zooms - 1) / 2)
        if sigma.max() > 0.05:
            data = ndimage.gaussian_filter(data, sigma, mode="nearest")
    vox = np.linalg.inv(src_affine) @ affine
    return ndimage.affine_transform(data, vox[:3, :3], offset=vox[:3, 3], output_shape=tuple(shape),
                                    order=order, mode="constant", cval=0.0, output=np.float32)


def _merge_labels(values: np.ndarray, manifest) -> np.ndarray:
    """Released label values -> 0 background, 1 lesion, IGNORE (uint8), as the manifest says."""
    values = np.rint(values).astype(np.int64)
    out = np.zeros(values.shape, np.uint8)
    out[np.isin(values, manifest.ignore_values)] = IGNORE
    out[np.isin(values, manifest.lesion_values)] = 1
    return out


def _resample_label(merged: np.ndarray, src_affine, shape, affine) -> np.ndarray:
    """Merged label resampled per class (linear partial volumes, then argmax): keeps thin lesions."""
    fractions = [resample((merged == v).astype(np.float32), src_affine, shape, affine)
                 for v in (1, IGNORE)]
    background = 1.0 - fractions[0] - fractions[1]
    winner = np.argmax(np.stack([background, *fractions]), axis=0)
    return np.array([0, 1, IGNORE], np.uint8)[winner]


# --------------------------------------------------------------------------- brain masks

@functools.lru_cache(maxsize=2)
def _mni_mask(resolution: int) -> nib.Nifti1Image:
    from nilearn.datasets import load_mni152_brain_mask  # slow import: only ATLAS needs it
    return load_mni152_brain_mask(resolution=resolution)


def template_brain_mask(shape, affine: np.ndarray, spacing_mm: float) -> np.ndarray:
    """nilearn's MNI152 2009 brain mask resampled into the grid through world coordinates."""
    mask = _mni_mask(1 if spacing_mm < 2 else 2)
    values = resample(mask.get_fdata(dtype=np.float32), mask.affine, shape, affine)
    return values >= 0.5


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _clean(mask: np.ndarray) -> np.ndarray:
    """Largest connected component with its holes filled."""
    return ndimage.binary_fill_holes(_largest_component(mask))


def stripped_brain_mask(images: np.ndarray) -> np.ndarray:
    """Brain of skull-stripped images (M, X, Y, Z): voxels non-zero in any modality, cleaned."""
    scale = np.abs(images).max()
    return _clean((np.abs(images) > 1e-6 * scale).any(axis=0)) if scale > 0 else np.zeros(images.shape[1:], bool)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between))])


def head_brain_mask(images: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Rough brain of images with skull (M, X, Y, Z): Otsu threshold on the sum of the modalities
    (each scaled by its 99th percentile), erosion of ~4 mm, largest component, dilation, filling.

    Limits: a head-and-neck field of view, bright scalp fat touching the brain or strong bias
    fields can leave skull or scalp in the mask (or cut cortex); it is a foreground mask for
    normalisation and cropping, not a skull stripping. Erosion is skipped if it empties the mask.
    """
    total = np.zeros(images.shape[1:], np.float32)
    for im in images:
        inside = im[im > 0]
        if inside.size:
            total += np.clip(im / max(float(np.percentile(inside, 99)), 1e-12), 0, None)
    if not (total > 0).any():
        return np.zeros(total.shape, bool)
    fg = total > _otsu(total.ravel())
    radius = max(1, int(round(4.0 / spacing_mm)))
    ball = ndimage.generate_binary_structure(3, 1)
    core = ndimage.binary_erosion(fg, ball, iterations=radius)
    if not core.any():
        return _clean(fg)
    core = _largest_component(core)
    return _clean(ndimage.binary_dilation(core, ball, iterations=radius) & fg)


# --------------------------------------------------------------------------- one case

@dataclass(frozen=True)
class Normalisation:
    """How intensities and the field of view are prepared once on the grid (the paper, Methods).

    background 'zero': z-scored with the brain's mean and std inside the brain, 0 outside (the
    study's models); 'scaled': the whole volume z-scored with the brain's statistics, so the
    background is -mean/std (the authors' released models). crop: cut to the brain's box.
    """

    background: str = "zero"
    crop: bool = True

    def __post_init__(self):
        if self.background not in ("zero", "scaled"):
            raise MMLibError(f"background must be 'zero' or 'scaled', got {self.background!r}")


#: The study's preprocessing, and the authors' (their released checkpoints).
STUDY_NORMALISATION = Normalisation()
AUTHORS_NORMALISATION = Normalisation(background="scaled", crop=False)


def brain_rule(manifest) -> str:
    """How a database's brain mask is derived: 'template' (MNI152), 'stripped' (non-zero voxels
    of skull-stripped images) or 'head' (Otsu foreground of images with skull)."""
    if manifest.brain_mask == "template":
        return "template"
    return "stripped" if manifest.skull_stripped else "head"


_RULE_HINTS = {"template": " (brain_mask: template expects images in MNI152 2009 space)",
               "stripped": " (skull-stripped images are all zero?)", "head": " (images are empty or constant?)"}


def resample_images(images: dict, files: dict, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Modalities (name -> nibabel image, any grids) on the isotropic RAS grid of the first one
    -> (float32 (M, X, Y, Z) in `images`' order, the grid's 4x4 affine). `files` names each
    modality's file for errors; non-finite values are refused."""
    if not spacing_mm or spacing_mm <= 0:
        raise MMLibError(f"spacing_mm must be positive, got {spacing_mm!r}")
    ras = {m: _as_3d(img, files.get(m), m) for m, img in images.items()}
    shape, affine = reference_grid(next(iter(ras.values())), spacing_mm)
    out = np.zeros((len(ras), *shape), np.float32)
    for i, (mod, img) in enumerate(ras.items()):
        data = np.asarray(img.dataobj, dtype=np.float32)
        if not np.isfinite(data).all():
            raise ImageReadError(f"{mod} image holds non-finite values (NaN or inf)", files.get(mod))
        out[i] = resample(data, img.affine, shape, affine)
        if not np.isfinite(out[i]).all():
            raise PreprocessError(f"{mod} image is non-finite after resampling to {spacing_mm} mm", files.get(mod))
    return out, affine


def derived_brain_mask(rule: str, images: np.ndarray, affine: np.ndarray, spacing_mm: float) -> np.ndarray:
    """The brain (X, Y, Z) bool of images (M, X, Y, Z) on grid `affine`, by `brain_rule`."""
    if rule == "template":
        return template_brain_mask(images.shape[1:], affine, spacing_mm)
    if rule == "stripped":
        return stripped_brain_mask(images)
    return head_brain_mask(images, spacing_mm)


def normalise(images: np.ndarray, brain: np.ndarray, background: str = "zero") -> np.ndarray:
    """Each modality z-scored with its mean and std inside `brain`, in place; the outside is 0
    ('zero') or goes through the same z-score ('scaled', the authors')."""
    for i in range(len(images)):
        inside = images[i][brain].astype(np.float64)
        std = inside.std()
        images[i] = (images[i] - inside.mean()) / (std if std > 1e-8 else 1.0)
    if background == "zero":
        images[:, ~brain] = 0.0
    return images


def brain_box(brain: np.ndarray, crop: bool = True) -> tuple[slice, ...]:
    """The brain's bounding box plus CROP_MARGIN voxels (the whole grid when not `crop`)."""
    if not crop:
        return tuple(slice(0, n) for n in brain.shape)
    return tuple(slice(max(0, int(ix.min()) - CROP_MARGIN), min(n, int(ix.max()) + CROP_MARGIN + 1))
                 for ix, n in zip(np.nonzero(brain), brain.shape))


def cropped_affine(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """The affine of a grid cut to `box` (its first voxel moves to the box's corner)."""
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = affine[:3, :3] @ np.array([s.start for s in box], float) + affine[:3, 3]
    return out


def prepare_case(manifest, raw: RawCase, spacing_mm: float,
                 normalisation: Normalisation = STUDY_NORMALISATION) -> PreparedCase:
    """One raw case -> PreparedCase on an isotropic RAS grid of `spacing_mm`, cropped to the brain.

    image float32 (M, X, Y, Z) in manifest.modalities order, z-scored inside the brain and 0
    outside (or as `normalisation` says); label uint8 (X, Y, Z) with 0 / 1 / IGNORE; brain bool.
    """
    files = raw.files
    case = f"{manifest.name} case {files.case_id}"
    missing = [m for m in manifest.modalities if m not in raw.images]
    if missing:
        raise ImageReadError(f"{case} lacks modality(ies) {', '.join(missing)}",
                             next(iter(files.images.values()), None))
    images, affine = resample_images({m: raw.images[m] for m in manifest.modalities}, files.images, spacing_mm)
    shape = images.shape[1:]

    if raw.label is None:
        warnings.warn(f"{case} has no label: its label is all background", stacklevel=2)
        label = np.zeros(shape, np.uint8)
    else:
        lab = _as_3d(raw.label, files.label, "label")
        label_values = np.asarray(lab.dataobj, dtype=np.float32)
        if not np.isfinite(label_values).all():
            raise ImageReadError("label holds non-finite values (NaN or inf)", files.label)
        problem = label_value_problem(manifest, label_values)
        if problem:  # never train on values the manifest does not name as background
            raise ImageReadError(f"{case}: {problem}", files.label)
        label = _resample_label(_merge_labels(label_values, manifest), lab.affine, shape, affine)

    rule = brain_rule(manifest)
    brain = derived_brain_mask(rule, images, affine, spacing_mm)
    if not brain.any():
        raise PreprocessError(f"{case}: empty brain mask{_RULE_HINTS[rule]}", files.images.get(manifest.modalities[0]))
    normalise(images, brain, normalisation.background)

    box = brain_box(brain, normalisation.crop)
    return PreparedCase(
        database=manifest.name, case_id=files.case_id, modalities=tuple(manifest.modalities),
        image=np.ascontiguousarray(images[(slice(None), *box)]),
        label=np.ascontiguousarray(label[box]), brain=np.ascontiguousarray(brain[box]),
        spacing=(float(spacing_mm),) * 3, affine=cropped_affine(affine, box))


# --------------------------------------------------------------------------- cache

def cache_key(manifest, spacing_mm: float, root: str | Path | None = None) -> str:
    """Short hash of the manifest's content, the spacing, PREPROCESS_VERSION and the resolved root."""
    where = None if root is None else str(Path(root).resolve())
    return short_hash([manifest_content(manifest), float(spacing_mm), PREPROCESS_VERSION, where])


def prepared_identity(manifest, root: Path, cases: list) -> str:
    """The identity of prepared cases: their input files' stats and root (recorded when prepared),
    the manifest that read them and the preprocessing version."""
    return short_hash({"cases": cases_identity(cases, root), "manifest": manifest_content(manifest),
                       "preprocess": PREPROCESS_VERSION})


def safe_name(case_id: str) -> str:
    """A file-name-safe form of a case id ('Center_01/Patient_07' -> 'Center_01_Patient_07-<hash>')."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", case_id).lstrip(".") or "case"
    if safe != case_id:  # a hash keeps distinct ids distinct ('a/b' vs 'a_b')
        safe += "-" + hashlib.sha256(case_id.encode()).hexdigest()[:8]
    return safe


def _write_npz(fh, arrays: dict) -> None:
    np.savez_compressed(fh, **arrays)


def save_cached_case(case: PreparedCase, path: str | Path) -> None:
    """Write `case` to `path` (.npz) atomically: a temp file in the same folder, then os.replace."""
    arrays = dict(image=case.image, label=case.label, brain=case.brain,
                  spacing=np.asarray(case.spacing, np.float64), modalities=np.asarray(case.modalities, str),
                  database=np.asarray(case.database), case_id=np.asarray(case.case_id))
    if case.affine is not None:
        arrays["affine"] = np.asarray(case.affine, np.float64)
    if case.sources is not None:
        arrays["sources"] = np.asarray(json.dumps(case.sources, sort_keys=True))
    with atomic_open(path, "wb") as fh:
        _write_npz(fh, arrays)


def load_cached_case(path: str | Path) -> PreparedCase:
    """Read a case written by `save_cached_case`; raise PreprocessError if it is corrupt."""
    try:
        with np.load(path, allow_pickle=False) as z:
            case = PreparedCase(
                database=str(z["database"]), case_id=str(z["case_id"]),
                modalities=tuple(str(m) for m in z["modalities"]), image=z["image"],
                label=z["label"], brain=z["brain"], spacing=tuple(float(s) for s in z["spacing"]),
                sources=json.loads(str(z["sources"])) if "sources" in z.files else None,
                affine=z["affine"] if "affine" in z.files else None)
    except PermissionError:
        raise PreprocessError("permission denied: cannot read the cache entry", path) from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise PreprocessError(f"corrupt cache entry: {exc}", path) from None
    ok = (case.image.ndim == 4 and case.image.shape[0] == len(case.modalities)
          and case.image.shape[1:] == case.label.shape == case.brain.shape
          and case.image.dtype == np.float32 and case.label.dtype == np.uint8 and case.brain.dtype == bool
          and (case.sources is None or isinstance(case.sources, dict))
          and (case.affine is None or case.affine.shape == (4, 4)))
    if not ok:
        raise PreprocessError("corrupt cache entry: arrays do not fit together", path)
    return case


def _readers():
    """The layout readers prepare_database uses (a seam the tests replace)."""
    return find_cases, read_case


def prepare_database(manifest, root, spacing_mm: float, cache_dir, progress: bool = True) -> list[PreparedCase]:
    """Every case of a database, prepared; cached in cache_dir/<NAME>/<key>/<case>.npz.

    A changed manifest, spacing, root or PREPROCESS_VERSION gives a new key; an entry whose
    input files changed (size or mtime) is prepared again (with a DataChangedWarning naming
    them), a corrupt one too. Every case is validated as `mmlib check` would (bad label values
    refused). `root` None resolves through the manifest; `cache_dir` None disables caching.
    """
    find_cases, read_case = _readers()
    # Absolute, so that the files' recorded names and stats do not depend on the working directory.
    root = Path(os.path.normpath(Path(manifest.resolve_root(root)).absolute()))
    folder = None
    if cache_dir is not None:
        folder = Path(cache_dir) / manifest.name / cache_key(manifest, spacing_mm, root)
        clean_stale_temps(folder, recursive=False)  # left by a killed run
    prepared = []
    for files in tqdm(find_cases(manifest, root), desc=f"prepare {manifest.name}", disable=not progress):
        # Stats before reading: a file changed while being read is caught by the next run.
        sources = case_sources(files, root)
        entry = None if folder is None else folder / f"{safe_name(files.case_id)}.npz"
        if entry is not None and entry.is_file():
            try:
                case = load_cached_case(entry)
                if case.case_id == files.case_id and case.modalities == tuple(manifest.modalities):
                    if case.sources == sources:
                        prepared.append(case)
                        continue
                    if case.sources is not None:
                        warnings.warn(DataChangedWarning(
                            f"{manifest.name} case {files.case_id}: {', '.join(changed_files(case.sources, sources))} "
                            f"changed since it was prepared; preparing it again"), stacklevel=2)
            except PreprocessError:
                pass  # recomputed and overwritten below
        case = prepare_case(manifest, read_case(manifest, files), spacing_mm)
        case.sources = sources
        if entry is not None:
            save_cached_case(case, entry)
        prepared.append(case)
    return prepared
