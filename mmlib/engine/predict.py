"""Segment new scans with a trained model: `mmlib predict` and `mmlib export` stand on this.

A model is a `Predictor`: the network, its channel map and the preprocessing it was trained
with. mmlib's checkpoints record all three; the authors' released state dicts are recognised by
their tensor names (mmlib.models.authors) and get the authors' preprocessing. A case goes through
the study's own preprocessing (mmlib.data.preprocess: RAS grid, brain mask, z-score, crop), the
study's sliding window (mmlib.engine.evaluate), and back onto the first image's grid: nearest
neighbour for the mask, linear for the probabilities. Modalities the model lacks are placed on a
free channel as the paper's Appendix B does (DWI -> PD), only where the user says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from mmlib.atomic_files import atomic_path, read_json
from mmlib.data.cases import PreparedCase
from mmlib.data.loaders import ChannelMap
from mmlib.data.modalities import canonical_modality, sort_modalities
from mmlib.data.nifti import load_channels, load_volume, save_volume
from mmlib.data.preprocess import (AUTHORS_NORMALISATION, STUDY_NORMALISATION, Normalisation, brain_box,
                                   cropped_affine, derived_brain_mask, normalise, prepare_case, resample,
                                   resample_images, safe_name)
from mmlib.data.readers import find_cases, read_case
from mmlib.engine.checkpoint import load_model
from mmlib.engine.device import pick_device
from mmlib.engine.evaluate import ROW_COLUMNS, SlidingWindow, case_row, predict_probabilities
from mmlib.errors import CheckpointError, ImageReadError, MMLibError, ModalityError
from mmlib.models.authors import AUTHORS_CHANNELS, authors_multiunet, in_mmlib_order, is_authors_state_dict
from mmlib.presets import load_preset

#: An image holding at most this many distinct integer values is a label map, not an MRI scan.
LABEL_MAX_VALUES = 10
#: A first image with at least this share of exact zeros is taken as skull-stripped (the brain:
#: its non-zero voxels); otherwise the brain is the Otsu foreground of a head (mmlib.data.preprocess).
STRIPPED_ZERO_SHARE = 0.1
#: The per-case metrics summarised in summary.csv (the paper's Dice, and Tables 7-10's others).
SUMMARY_METRICS = ("dice", "sensitivity", "precision", "assd")
#: Windows per forward pass by device type: a 128^3 window of the paper's network takes ~1.5 GB
#: on CPU, and two at once are no faster there (evaluate.LARGE_WINDOW).
SW_BATCH_PREDICT = {"cpu": 1, "cuda": 4}
#: Grids whose affines differ by less than this (mm) are the same grid.
GRID_TOLERANCE = 1e-3


class GridWarning(UserWarning):
    """An image lies on another grid than the first one: it is resampled onto the first's."""


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects of its input: the voxel spacing (mm), the sliding window's edge and
    overlap, and how intensities are normalised (mmlib.data.preprocess.Normalisation)."""

    spacing_mm: float
    roi: int
    overlap: float
    normalisation: Normalisation = STUDY_NORMALISATION

    def to_dict(self) -> dict:
        return {"spacing_mm": float(self.spacing_mm), "roi": int(self.roi), "overlap": float(self.overlap),
                "background": self.normalisation.background, "crop": bool(self.normalisation.crop)}

    @classmethod
    def from_dict(cls, d, path: str | Path | None = None) -> "Preprocessing":
        """The settings `to_dict` wrote; CheckpointError naming `path` when they are not usable."""
        try:
            prep = cls(float(d["spacing_mm"]), int(d["roi"]), float(d["overlap"]),
                       Normalisation(str(d.get("background", "zero")), bool(d.get("crop", True))))
        except (KeyError, TypeError, ValueError, MMLibError) as err:
            raise CheckpointError(f"unusable preprocessing settings {d!r}: {err}", path) from None
        if not (prep.spacing_mm > 0 and prep.roi >= 32 and prep.roi % 16 == 0 and 0 <= prep.overlap < 1):
            raise CheckpointError(f"unusable preprocessing settings {d!r}", path)
        return prep


#: The authors' inference (the paper, Methods): 1 mm, 128^3 windows (MONAI's default overlap),
#: the whole volume z-scored with the brain's statistics.
AUTHORS_PREPROCESSING = Preprocessing(1.0, 128, 0.25, AUTHORS_NORMALISATION)


def study_preprocessing(preset) -> dict:
    """What a study's model records in its checkpoint config under 'preprocessing'."""
    return Preprocessing(preset.spacing_mm, preset.crop, preset.sw_overlap).to_dict()


@dataclass(frozen=True)
class Predictor:
    """A network ready to segment: its channel map, preprocessing, name and where it came from.
    `model` takes its input in the channel map's (mmlib's) order; `network_channels` is the order
    the bare network reads (the authors': PD, FLAIR, SWI, T1, T1c, T2)."""

    model: nn.Module
    channel_map: ChannelMap
    preprocessing: Preprocessing
    name: str
    provenance: dict
    network_channels: tuple[str, ...] = ()

    @property
    def network(self) -> nn.Module:
        """The bare network (without the channel permutation in front)."""
        return getattr(self.model, "net", self.model)


def read_weights(path: str | Path) -> object:
    """The checkpoint file's content, read weights-only (a pickle carrying code is refused)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint file does not exist" if not path.exists() else "not a file", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise CheckpointError("permission denied: cannot read the checkpoint", path) from None
    except Exception as err:  # a pickle with code, a truncated zip, another format
        why = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"not a checkpoint mmlib can read weights-only (a pickle or another format; "
                              f"{why})", path) from None


def _mmlib_preprocessing(config: dict, path: Path) -> Preprocessing:
    """The checkpoint's own preprocessing, else its study's preset (study.json beside models/)."""
    if config.get("preprocessing") is not None:
        return Preprocessing.from_dict(config["preprocessing"], path)
    stamp = read_json(path.resolve().parent.parent.parent / "study.json") or {}
    if isinstance(stamp, dict) and isinstance(stamp.get("preset"), str):
        preset = load_preset(stamp["preset"])
        return Preprocessing(preset.spacing_mm, preset.crop, preset.sw_overlap)
    raise CheckpointError("the checkpoint does not record its preprocessing and lies in no study folder "
                          "(study.json names the preset); keep it in its study's models/ folder", path)


def load_predictor(path: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """The model of an mmlib checkpoint or of the authors' released state dict, on `device`."""
    path = Path(path)
    state = read_weights(path)
    if is_authors_state_dict(state):
        model = in_mmlib_order(authors_multiunet(state, path), AUTHORS_CHANNELS).to(pick_device(device))
        provenance = {"source": "the authors' released Multi-Unet (Xu et al., MIDL 2024)", "file": path.name,
                      "arch": "multiunet", "width": 1.0}
        return Predictor(model, ChannelMap(AUTHORS_CHANNELS), AUTHORS_PREPROCESSING, "authors-multiunet", provenance,
                         AUTHORS_CHANNELS)
    if isinstance(state, dict) and "format_version" in state and "model" in state:
        model, cmap, config = load_model(path, device)
        keep = ("arch", "width", "name", "identity", "steps", "seed", "in_channels")
        provenance = {"source": "mmlib", "file": path.name, **{k: config[k] for k in keep if k in config}}
        cmap = ChannelMap.from_dict(cmap)
        return Predictor(model, cmap, _mmlib_preprocessing(config, path), str(config.get("name") or config.get("arch")),
                         provenance, cmap.modalities)
    raise CheckpointError("neither an mmlib checkpoint (keys format_version, model, config, channel_map) nor "
                          "the authors' released Multi-Unet state dict (conv_1 ... up_stage_4)", path)


def place_modalities(cmap: ChannelMap, modalities, channels: dict | None = None) -> ChannelMap:
    """The channel map that reads `modalities`: each one the model lacks goes on the channel of a
    modality it has, as `channels` ({'DWI': 'PD'}) says (Appendix B); otherwise ModalityError
    naming the free channels."""
    given = [canonical_modality(m) for m in modalities]
    assignments = {}
    for new, target in (channels or {}).items():
        new, target = canonical_modality(new), canonical_modality(target)
        if new in cmap.modalities:
            raise ModalityError(f"--channel {new}={target}: the model has a channel of its own for {new}")
        if target not in cmap.modalities:
            raise ModalityError(f"--channel {new}={target}: the model has no {target} channel; "
                                f"its channels: {', '.join(cmap.modalities)}")
        assignments[new] = cmap.modalities.index(target)
    free = [m for m in cmap.modalities if m not in given]
    for mod in given:
        if mod not in cmap.modalities and mod not in assignments:
            raise ModalityError(f"the model has no channel for {mod}; place it on a free channel as in the "
                                f"paper's Appendix B with --channel {mod}=<one of {', '.join(free) or 'none'}>")
    placed = cmap.with_assignments(assignments)
    placed.channels(given)  # two modalities on one channel are refused
    return placed


def _check_image(data: np.ndarray, path: Path) -> None:
    """Refuse a label map given as an image: a few integer values only (a sample decides first)."""
    flat = data.ravel()
    sample = flat[:: max(1, flat.size // 1_000_000)]
    if len(np.unique(sample)) <= LABEL_MAX_VALUES and np.array_equal(flat, np.rint(flat)):
        values = np.unique(flat)
        if len(values) <= LABEL_MAX_VALUES:
            shown = ", ".join(f"{v:g}" for v in values)
            raise ImageReadError(f"holds only the values {shown}: a label map, not an MRI image", path)


def _overlaps(img: nib.Nifti1Image, ref: nib.Nifti1Image) -> bool:
    """Whether `img`'s field of view meets `ref`'s (its corners' box, in ref's voxels)."""
    corners = np.array([[i, j, k, 1] for i in (0, img.shape[0] - 1) for j in (0, img.shape[1] - 1)
                        for k in (0, img.shape[2] - 1)], float).T
    vox = (np.linalg.inv(ref.affine) @ img.affine @ corners)[:3]
    return bool(np.all(vox.max(axis=1) >= -0.5) and np.all(vox.min(axis=1) <= np.array(ref.shape[:3]) - 0.5))


def read_images(images: dict) -> dict[str, nib.Nifti1Image]:
    """{modality: file} -> {canonical modality: 3D image}, in the given order; each refused with a
    one-line ImageReadError naming its file (4D, NaN, a label map, no overlap with the first)."""
    out, first = {}, None
    for mod, path in images.items():
        path = Path(path)
        volumes = load_channels(path)  # refuses unreadable files and NaN / inf voxels
        if len(volumes) > 1:
            raise ImageReadError(f"a 4D image ({len(volumes)} volumes): give one 3D volume per modality", path)
        img = volumes[0]
        _check_image(np.asarray(img.dataobj), path)
        if first is None:
            first = (img, path)
        elif img.shape != first[0].shape or not np.allclose(img.affine, first[0].affine, atol=GRID_TOLERANCE):
            if not _overlaps(img, first[0]):
                raise ImageReadError(f"does not overlap the first image ({first[1]}) in world space", path)
            warnings.warn(GridWarning(f"{path}: another grid than {first[1]} (shape or affine); "
                                      f"resampled onto the first image's grid"), stacklevel=2)
        out[canonical_modality(mod)] = img
    if not out:
        raise MMLibError("give at least one image (--image MOD=FILE)")
    return out


def _brain(images: np.ndarray, affine: np.ndarray, spacing: float, mask: Path | None, first: np.ndarray):
    """The brain on the grid: the given mask (resampled, nearest), else derived from the images."""
    if mask is None:
        share = float(np.mean(first == 0))
        return derived_brain_mask("stripped" if share >= STRIPPED_ZERO_SHARE else "head", images, affine, spacing)
    img = load_volume(mask)
    data = (np.asarray(img.dataobj) > 0.5).astype(np.float32)
    brain = resample(data, img.affine, images.shape[1:], affine, order=0, antialias=False) > 0.5
    if not brain.any():
        raise ImageReadError("the brain mask is empty (no voxel > 0.5 inside the images' field of view)", mask)
    return brain


def prepare_images(images: dict[str, nib.Nifti1Image], prep: Preprocessing, brain_mask: Path | None = None,
                   files: dict | None = None) -> PreparedCase:
    """Images (modality -> image, the first one's grid leads) -> a PreparedCase without label,
    prepared as the model's `prep` says (the study's functions: mmlib.data.preprocess)."""
    data, affine = resample_images(images, files or {}, prep.spacing_mm)
    first = np.asarray(next(iter(images.values())).dataobj)
    brain = _brain(data, affine, prep.spacing_mm, brain_mask, first)
    if not brain.any():
        raise ImageReadError("empty brain mask derived from the images (all zero or constant?)",
                             next(iter((files or {}).values()), None))
    normalise(data, brain, prep.normalisation.background)
    box = brain_box(brain, prep.normalisation.crop)
    return PreparedCase(database="", case_id="case", modalities=tuple(images),
                        image=np.ascontiguousarray(data[(slice(None), *box)]),
                        label=np.zeros(brain[box].shape, np.uint8), brain=np.ascontiguousarray(brain[box]),
                        spacing=(float(prep.spacing_mm),) * 3, affine=cropped_affine(affine, box))


def segment(predictor: Predictor, case: PreparedCase, cmap: ChannelMap,
            device: str | torch.device = "cpu") -> np.ndarray:
    """Lesion probabilities (X, Y, Z) float32 of a prepared case on its grid; channels the case
    lacks are zeros, as in training."""
    present = np.zeros((1, len(cmap)), bool)
    present[0, cmap.channels(case.modalities)] = True
    prep, device = predictor.preprocessing, pick_device(device)
    window = SlidingWindow(prep.roi, prep.overlap, device, sw_batch=SW_BATCH_PREDICT.get(device.type, 1))
    return predict_probabilities(predictor.model, cmap.assemble(case), present, window)[0]


def to_input_grid(probs: np.ndarray, case: PreparedCase, ref: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """(mask uint8, probabilities float32) on `ref`'s grid: nearest neighbour for the mask
    (thresholded at 0.5 first), linear for the probabilities; 0 outside the prepared box."""
    shape = ref.shape[:3]
    mask = resample((probs > 0.5).astype(np.float32), case.affine, shape, ref.affine, order=0, antialias=False)
    prob = resample(probs, case.affine, shape, ref.affine, order=1, antialias=False)
    return (mask > 0.5).astype(np.uint8), np.clip(prob, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class CaseRequest:
    """One case to segment: {modality: file} (the first one's grid is the output's), the outputs,
    an optional brain mask and Appendix-B placements ({'DWI': 'PD'})."""

    images: dict
    out: Path
    probabilities: Path | None = None
    brain_mask: Path | None = None
    channels: dict | None = None


def predict_files(predictor: Predictor, request: CaseRequest, device: str | torch.device = "cpu") -> Path:
    """Segment one case from its files and write the mask (and probabilities) atomically."""
    images = read_images(request.images)
    cmap = place_modalities(predictor.channel_map, list(images), request.channels)
    files = {canonical_modality(m): Path(p) for m, p in request.images.items()}
    case = prepare_images(images, predictor.preprocessing, request.brain_mask, files)
    mask, prob = to_input_grid(segment(predictor, case, cmap, device), case, next(iter(images.values())))
    ref = next(iter(images.values()))
    if request.probabilities is not None:
        save_volume(prob, ref.affine, request.probabilities)
    return save_volume(mask, ref.affine, request.out)


def predict_database(predictor: Predictor, manifest, root, out_dir: Path, channels: dict | None = None,
                     device: str | torch.device = "cpu") -> pd.DataFrame:
    """Segment every case of a database (its manifest's modalities and brain rule) into
    out_dir/<case>.nii.gz; where labels exist, write metrics.csv (the study's row columns,
    scored on the model's grid as the study scores) and summary.csv (their means per subset)."""
    cmap = place_modalities(predictor.channel_map, manifest.modalities, channels)
    subset = sort_modalities(manifest.modalities)
    prep, rows = predictor.preprocessing, []
    for files in tqdm(find_cases(manifest, root), desc=f"predict {manifest.name}", unit="case"):
        raw = read_case(manifest, files)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a case without label: segmented, not scored
            case = prepare_case(manifest, raw, prep.spacing_mm, prep.normalisation)
        probs = segment(predictor, case, cmap, device)
        ref = raw.images[manifest.modalities[0]]
        mask, _ = to_input_grid(probs, case, ref)
        save_volume(mask, ref.affine, out_dir / f"{safe_name(files.case_id)}.nii.gz")
        if raw.label is not None:
            rows.append(case_row(case, probs > 0.5, subset, predictor.name))
    metrics = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
    if len(metrics):
        with atomic_path(out_dir / "metrics.csv") as tmp:
            metrics.to_csv(tmp, index=False)
        summary = (metrics.groupby(["database", "model", "subset"])[list(SUMMARY_METRICS)]
                   .agg(["mean", "std", "count"]))
        summary.columns = [f"{m}_{stat}" for m, stat in summary.columns]
        with atomic_path(out_dir / "summary.csv") as tmp:
            summary.reset_index().to_csv(tmp, index=False)
    return metrics


def parse_pairs(values, what: str) -> dict[str, str]:
    """['FLAIR=a.nii.gz', ...] -> {'FLAIR': 'a.nii.gz', ...} in order; MMLibError naming `what`."""
    out = {}
    for value in values or ():
        key, eq, rest = str(value).partition("=")
        if not eq or not key.strip() or not rest.strip():
            raise MMLibError(f"{what} {value!r}: write NAME=VALUE")
        canon = canonical_modality(key.strip())
        if canon in out:
            raise MMLibError(f"{what}: {canon} given twice")
        out[canon] = rest.strip()
    return out


__all__ = ["AUTHORS_PREPROCESSING", "CaseRequest", "GridWarning", "Predictor", "Preprocessing", "load_predictor",
           "parse_pairs", "place_modalities", "predict_files", "prepare_images", "read_images", "read_weights",
           "predict_database", "segment", "study_preprocessing", "to_input_grid"]
