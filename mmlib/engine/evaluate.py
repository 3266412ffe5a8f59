"""Inference and evaluation: sliding-window prediction, one tidy row per case x modality subset.

Rows have the columns of `ROW_COLUMNS` (plus any `extra` ones such as seed or training), so
every table of the paper is a groupby away (docs/RESULTS_SCHEMA.md). With `across_ranks` (under
torchrun) each rank predicts its share of the cases and every rank gets all rows, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from monai.inferers import sliding_window_inference
from torch import nn
from tqdm.auto import tqdm

from mmlib.data.cases import IGNORE, PreparedCase
from mmlib.data.loaders import ChannelMap, all_subsets
from mmlib.data.modalities import sort_modalities
from mmlib.engine import distributed
from mmlib.engine.device import amp_dtype, pick_device
from mmlib.engine.precision import NonFiniteError, checked_dtype
from mmlib.metrics import segmentation_metrics

#: Windows per forward pass of one subset's prediction (`predict_case`'s default).
SW_BATCH = 4
#: Windows per forward pass when a case's subsets are predicted together, by device type: a GPU
#: is busier with more; on 2 CPU cores 4 beat 16 (benchmarks/bench_engine.py, fp32).
SW_BATCH_SUBSETS = {"cpu": 4, "cuda": 16}

#: Windows of at least this many voxels (128^3, the paper's) run alone on CPU, not doubled: one
#: took 9.5 s and 1.6 GiB, two in one pass 31 s and 2.7 GiB (the paper's network, 2 threads, on
#: a busy 2-core machine).
LARGE_WINDOW = 128 ** 3

ROW_COLUMNS = ("database", "case_id", "model", "subset", "n_modalities",
               "dice", "sensitivity", "precision", "assd", "lesion_ml", "predicted_ml")


@dataclass(frozen=True)
class SlidingWindow:
    """How a volume is predicted: roi^3 windows overlapping by `overlap` on `device`; `amp`: autocast
    where the network passed its self-check; `sw_batch` windows per forward (None: SW_BATCH_SUBSETS
    for a device, SW_BATCH for one subset); `channels_last` also converts the weights (no gain
    measured in CPU inference, unlike training)."""

    roi: int = 128
    overlap: float = 0.25
    device: str | torch.device = "auto"
    amp: bool = False
    sw_batch: int | None = None
    channels_last: bool = False


@dataclass(frozen=True)
class EvalSettings(SlidingWindow):
    """How a model is evaluated: its sliding window (the fields of SlidingWindow); `batched`: a
    case's subsets in one pass (at most `max_subsets` per pass); `across_ranks`: every rank calls,
    each predicts its share of the cases, every rank returns all rows; `progress`: a bar."""

    batched: bool = True
    max_subsets: int | None = None
    across_ranks: bool = False
    progress: bool = True

    @property
    def window(self) -> SlidingWindow:
        return SlidingWindow(self.roi, self.overlap, self.device, self.amp, self.sw_batch, self.channels_last)


def predict_subsets(model: nn.Module, image: np.ndarray, presents: np.ndarray | None,
                    window: SlidingWindow = SlidingWindow()) -> np.ndarray:
    """Binary masks (S, X, Y, Z) of an image (C, X, Y, Z) seen through S channel masks `presents`
    (S, C) bool (None: the image as is, S = 1), in one sliding-window pass: subsets stacked on the
    batch axis, `window.sw_batch` windows of any of them per forward. Windows overhanging the
    volume are zero-padded."""
    return predict_probabilities(model, image, presents, window) > 0.5


def predict_probabilities(model: nn.Module, image: np.ndarray, presents: np.ndarray | None,
                          window: SlidingWindow = SlidingWindow()) -> np.ndarray:
    """Lesion probabilities (S, X, Y, Z) float32: the sigmoid of the sliding-window logits that
    `predict_subsets` thresholds at 0.5 (the paper, Methods); same arguments."""
    roi, overlap = window.roi, window.overlap
    device = pick_device(window.device)
    sw_batch = window.sw_batch or SW_BATCH_SUBSETS.get(device.type, SW_BATCH_SUBSETS["cuda"])
    memory_format = torch.channels_last_3d if window.channels_last else torch.contiguous_format
    # Without channels_last the weights keep their layout (channels-last after CPU training).
    (model.to(device, memory_format=memory_format) if window.channels_last else model.to(device)).eval()
    base = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32, device=device)
    if presents is None:
        x, pres = base[None], None
    else:
        pres = torch.as_tensor(np.asarray(presents, bool), device=device)
        x = torch.where(pres[:, :, None, None, None], base[None], 0.0)  # absent channels: +0.0
    # Reduced precision only where the network passed its self-check on this machine.
    dtype = checked_dtype(model, amp_dtype(device), device, roi)[0] if window.amp else None

    def predictor(window: torch.Tensor, coords) -> torch.Tensor:
        n = window.shape[0]
        # Each window carries its own subset's mask: MONAI names the input row of every window.
        p = None if pres is None else pres[[c[0].start for c in coords]]
        if n == 1 and device.type == "cpu" and window[0, 0].numel() < LARGE_WINDOW:
            # PyTorch's CPU conv falls back to a kernel several times slower for a batch of one
            # small volume; a batch of two (the window twice) is faster than one.
            window = torch.cat([window, window])
            p = None if p is None else torch.cat([p, p])
        window = window.contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(window, present=p).float()[:n]
        if dtype is not None and not bool(torch.isfinite(out).all()):
            out = model(window, present=p).float()[:n]  # the window again in float32
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteError("the network's output holds NaN or infinite values in float32")
        return out

    with torch.inference_mode():
        logits = sliding_window_inference(x, (roi,) * 3, sw_batch, predictor, overlap=overlap, with_coord=True)
        return torch.sigmoid(logits[:, 0]).cpu().numpy()


def predict_case(model: nn.Module, image: np.ndarray, window: SlidingWindow = SlidingWindow(),
                 present: np.ndarray | None = None) -> np.ndarray:
    """Binary lesion mask (X, Y, Z) bool of an image (C, X, Y, Z): sliding roi^3 windows,
    sigmoid > 0.5 (SW_BATCH windows per forward unless `window` says). `present` (C,) bool tells
    fusion models which channels hold a modality (the others are read as zeros). Any volume size."""
    presents = None if present is None else np.asarray(present, bool)[None]
    window = replace(window, sw_batch=window.sw_batch or SW_BATCH)
    return predict_subsets(model, image, presents, window)[0]


def case_row(case: PreparedCase, pred: np.ndarray, subset: Sequence[str], model_name: str) -> dict:
    """One tidy row: the case, the modality subset it was predicted from, and its metrics."""
    metrics = segmentation_metrics(pred, case.label == 1, case.spacing, ignore=case.label == IGNORE)
    voxel_ml = float(np.prod(case.spacing)) / 1000.0
    return {"database": case.database, "case_id": case.case_id, "model": model_name,
            "subset": "+".join(subset), "n_modalities": len(subset), **metrics,
            "lesion_ml": case.lesion_volume_ml(), "predicted_ml": float(pred.sum()) * voxel_ml}


def _evaluate(model: nn.Module, jobs: list[tuple[PreparedCase, Sequence[str] | None]],
              channel_map: ChannelMap | dict, settings: EvalSettings, model_name: str,
              extra: dict | None) -> pd.DataFrame:
    """Predict and score each (case, subset) of `jobs`; one row each in the order of `jobs`, `extra`
    columns appended. across_ranks: rank r takes cases r, r + world, ...; the rows (or the first
    error) reach every rank."""
    cmap = channel_map if isinstance(channel_map, ChannelMap) else ChannelMap.from_dict(channel_map)
    settings = replace(settings, device=distributed.local_device(pick_device(settings.device)))
    by_case: dict[int, list[int]] = {}
    for i, (case, _) in enumerate(jobs):
        by_case.setdefault(id(case), []).append(i)
    rows = [None] * len(jobs)
    groups = list(by_case.values())
    if settings.across_ranks and distributed.collective():
        mine, error = {}, None
        try:
            _evaluate_groups(model, jobs, groups[distributed.rank()::distributed.world_size()], mine, cmap,
                             replace(settings, progress=settings.progress and distributed.is_main()),
                             model_name, extra)
        except Exception as exc:  # every rank must reach the gather, or the others would wait
            error = exc
        shares = distributed.gather((mine, None if error is None else distributed.portable_error(error)))
        distributed.raise_shared([e for _, e in shares])
        for share, _ in shares:
            for i, row in share.items():
                rows[i] = row
    else:
        _evaluate_groups(model, jobs, groups, rows, cmap, settings, model_name, extra)
    return pd.DataFrame(rows, columns=[*ROW_COLUMNS, *(extra or {})])


def _evaluate_groups(model, jobs, groups, rows, cmap, settings: EvalSettings, model_name, extra) -> None:
    """Fill rows[i] for every job index i of `groups` (each group: one case's job indices)."""
    window = settings.window
    for idxs in tqdm(groups, desc=f"evaluate {model_name}", unit="case", disable=not settings.progress):
        case = jobs[idxs[0]][0]
        subsets = [sort_modalities(case.modalities if jobs[i][1] is None else jobs[i][1]) for i in idxs]
        presents = np.zeros((len(subsets), len(cmap)), bool)
        for r, subset in enumerate(subsets):
            presents[r, cmap.channels(subset)] = True
        if settings.batched:
            image = cmap.assemble(case, sorted({m for sub in subsets for m in sub}))
            step = settings.max_subsets or len(subsets)
            preds = [p for a in range(0, len(subsets), step)
                     for p in predict_subsets(model, image, presents[a:a + step], window)]
        else:  # one sliding-window pass per subset (the reference for the batched path)
            preds = [predict_case(model, cmap.assemble(case, sub), window, pres)
                     for sub, pres in zip(subsets, presents)]
        for i, subset, pred in zip(idxs, subsets, preds):
            rows[i] = {**case_row(case, pred, subset, model_name), **(extra or {})}


def evaluate_cases(model: nn.Module, cases: list[PreparedCase], channel_map: ChannelMap | dict,
                   settings: EvalSettings = EvalSettings(), *, subset: Sequence[str] | None = None,
                   subsets: Sequence[Sequence[str]] | None = None, model_name: str = "model",
                   extra: dict | None = None) -> pd.DataFrame:
    """One row per case, predicted from the modalities in `subset` (each case's own if None); with
    `subsets`, one row per subset and case (subset-major, as one call per subset would give), a
    case's subsets predicted in one pass (see EvalSettings)."""
    if subsets is not None and subset is not None:
        raise ValueError("give `subset` or `subsets`, not both")
    wanted = [subset] if subsets is None else list(subsets)
    return _evaluate(model, [(c, s) for s in wanted for c in cases], channel_map, settings, model_name, extra)


def evaluate_all_combinations(model: nn.Module, cases: list[PreparedCase], channel_map: ChannelMap | dict,
                              settings: EvalSettings = EvalSettings(), *, model_name: str = "model",
                              extra: dict | None = None) -> pd.DataFrame:
    """One row per case x non-empty subset of its modalities (2^C - 1 each; Table 2's brackets);
    all subsets of a case in one sliding-window pass (see EvalSettings)."""
    jobs = [(c, s) for c in cases for s in all_subsets(c.modalities)]
    return _evaluate(model, jobs, channel_map, settings, model_name, extra)
