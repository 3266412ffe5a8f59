"""The training loss of the paper (the paper, Training): Dice on sigmoid outputs."""

from __future__ import annotations

import torch
from monai.losses import DiceLoss


def dice_loss(logits: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, batch: bool = True) -> torch.Tensor:
    """Soft Dice loss of sigmoid(logits) vs y, all (B, 1, X, Y, Z); voxels with valid == 0 left out.

    batch=True: one Dice over the whole batch. The paper's MONAI default (batch=False, a Dice per
    sample, averaged) is unstable on crops without lesion, which are common in small crops.
    """
    probs = torch.sigmoid(logits.float()) * valid
    return DiceLoss(batch=batch)(probs, y.float() * valid)


__all__ = ["dice_loss"]
