"""Training losses: the paper's Dice on sigmoid outputs (the paper, Training), and Dice plus binary
cross-entropy (nnU-Net's default) for short CPU schedules, where the Dice alone gives little
gradient on crops without lesion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from mmlib.presets import LOSSES


def dice_loss(logits: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, batch: bool = True) -> torch.Tensor:
    """Soft Dice loss of sigmoid(logits) vs y, all (B, 1, X, Y, Z); voxels with valid == 0 left out.

    batch=True: one Dice over the whole batch. The paper's MONAI default (batch=False, a Dice per
    sample, averaged) is unstable on crops without lesion, which are common in small crops.
    """
    probs = torch.sigmoid(logits.float()) * valid
    return DiceLoss(batch=batch)(probs, y.float() * valid)


def bce_loss(logits: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of logits vs y, averaged over the voxels with valid != 0."""
    total = F.binary_cross_entropy_with_logits(logits.float(), y.float(), weight=valid.float(), reduction="sum")
    return total / valid.float().sum().clamp_min(1.0)


def training_loss(name: str, logits: torch.Tensor, y: torch.Tensor, valid: torch.Tensor,
                  batch: bool = True) -> torch.Tensor:
    """The loss called `name` (LOSSES): 'dice', or 'dice_bce' (their sum, equal weights)."""
    if name == "dice":
        return dice_loss(logits, y, valid, batch=batch)
    if name == "dice_bce":
        return dice_loss(logits, y, valid, batch=batch) + bce_loss(logits, y, valid)
    raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")


__all__ = ["LOSSES", "bce_loss", "dice_loss", "training_loss"]
