"""Inference and evaluation: sliding-window prediction, one tidy row per case x modality subset.

Rows have the columns of `ROW_COLUMNS` (plus any `extra` ones such as seed or training), so
every table of the paper is a groupby away (STYLE.md).
"""

from __future__ import annotations

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
from mmlib.engine.device import amp_dtype, pick_device
from mmlib.metrics import segmentation_metrics

#: Windows per forward pass in sliding-window inference.
SW_BATCH = 4

ROW_COLUMNS = ("database", "case_id", "model", "subset", "n_modalities",
               "dice", "sensitivity", "precision", "assd", "lesion_ml", "predicted_ml")


def predict_case(
    model: nn.Module,
    image: np.ndarray,
    roi: int,
    overlap: float,
    device: str | torch.device = "auto",
    present: np.ndarray | None = None,
) -> np.ndarray:
    """Binary lesion mask (X, Y, Z) bool of an image (C, X, Y, Z): sliding roi^3 windows,
    sigmoid > 0.5. `present` (C,) bool tells fusion models which channels hold a modality.
    Any volume size works: windows overhanging the volume are zero-padded."""
    device = pick_device(device)
    model.to(device).eval()
    x = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32, device=device)[None]
    pres = None if present is None else torch.as_tensor(np.asarray(present, bool), device=device)[None]

    def predictor(window: torch.Tensor) -> torch.Tensor:
        n = window.shape[0]
        if n == 1 and device.type == "cpu":
            # PyTorch's CPU conv falls back to a kernel several times slower for a batch of one
            # small volume; a batch of two (the window twice) is faster than one.
            window = torch.cat([window, window])
        p = None if pres is None else pres.expand(window.shape[0], -1)
        with torch.autocast(device.type, dtype=amp_dtype(), enabled=device.type == "cuda"):
            return model(window, present=p).float()[:n]

    with torch.inference_mode():
        logits = sliding_window_inference(x, (roi,) * 3, SW_BATCH, predictor, overlap=overlap)
        return (torch.sigmoid(logits[0, 0]) > 0.5).cpu().numpy()


def case_row(case: PreparedCase, pred: np.ndarray, subset: Sequence[str], model_name: str) -> dict:
    """One tidy row: the case, the modality subset it was predicted from, and its metrics."""
    metrics = segmentation_metrics(pred, case.label == 1, case.spacing, ignore=case.label == IGNORE)
    voxel_ml = float(np.prod(case.spacing)) / 1000.0
    return {"database": case.database, "case_id": case.case_id, "model": model_name,
            "subset": "+".join(subset), "n_modalities": len(subset), **metrics,
            "lesion_ml": case.lesion_volume_ml(), "predicted_ml": float(pred.sum()) * voxel_ml}


def _evaluate(model: nn.Module, jobs: list[tuple[PreparedCase, Sequence[str] | None]],
              channel_map: ChannelMap | dict, roi: int, overlap: float, device: str | torch.device,
              model_name: str, extra: dict | None, progress: bool) -> pd.DataFrame:
    """Predict and score each (case, subset) of `jobs`; one row each, `extra` columns appended."""
    cmap = channel_map if isinstance(channel_map, ChannelMap) else ChannelMap.from_dict(channel_map)
    device = pick_device(device)
    rows = []
    for case, subset in tqdm(jobs, desc=f"evaluate {model_name}", disable=not progress):
        subset = sort_modalities(case.modalities if subset is None else subset)
        present = np.zeros(len(cmap), bool)
        present[cmap.channels(subset)] = True
        pred = predict_case(model, cmap.assemble(case, subset), roi, overlap, device, present)
        rows.append({**case_row(case, pred, subset, model_name), **(extra or {})})
    return pd.DataFrame(rows, columns=[*ROW_COLUMNS, *(extra or {})])


def evaluate_cases(
    model: nn.Module,
    cases: list[PreparedCase],
    channel_map: ChannelMap | dict,
    subset: Sequence[str] | None = None,
    roi: int = 128,
    overlap: float = 0.25,
    device: str | torch.device = "auto",
    model_name: str = "model",
    extra: dict | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per case, predicted from the modalities in `subset` (each case's own if None)."""
    return _evaluate(model, [(c, subset) for c in cases], channel_map, roi, overlap, device,
                     model_name, extra, progress)


def evaluate_all_combinations(
    model: nn.Module,
    cases: list[PreparedCase],
    channel_map: ChannelMap | dict,
    roi: int = 128,
    overlap: float = 0.25,
    device: str | torch.device = "auto",
    model_name: str = "model",
    extra: dict | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per case x non-empty subset of its modalities (2^C - 1 each; Table 2's brackets)."""
    jobs = [(c, s) for c in cases for s in all_subsets(c.modalities)]
    return _evaluate(model, jobs, channel_map, roi, overlap, device, model_name, extra, progress)
