"""Models: Multi-Unet, the fusion baselines (LFUnet, MAFUnet), progressive nets, fine-tuning helpers.

Every model maps (B, C, X, Y, Z) to logits (B, out, X, Y, Z) with ``forward(x, present=None)``,
``present`` being an optional bool (B, C) mask of the modalities given (X, Y, Z divisible by 16).
"""

from __future__ import annotations

from torch import nn

from mmlib.errors import MMLibError
from mmlib.models.finetune import assign_new_modalities, widen_first_layer
from mmlib.models.fusion import LFUNet, MAFUNet, ModalityAttention, infer_present
from mmlib.models.multiunet import MultiUNet, unet_widths
from mmlib.models.progressive import ProgressiveUNet

ARCHITECTURES: dict[str, type[nn.Module]] = {"multiunet": MultiUNet, "lfunet": LFUNet, "mafunet": MAFUNet}


def build_model(arch: str, in_channels: int, width: float = 1.0) -> nn.Module:
    """A fresh 'multiunet' | 'lfunet' | 'mafunet' | 'progressive' with ``in_channels`` modality
    channels and one output ('progressive': both columns fresh, for loading a saved one)."""
    if arch.lower() == "progressive":
        return ProgressiveUNet(MultiUNet(in_channels, 1, width))
    cls = ARCHITECTURES.get(arch.lower())
    if cls is None:
        raise MMLibError(f"unknown architecture {arch!r}; known: {', '.join([*ARCHITECTURES, 'progressive'])}")
    return cls(in_channels, 1, width)


__all__ = [
    "ARCHITECTURES",
    "LFUNet",
    "MAFUNet",
    "ModalityAttention",
    "MultiUNet",
    "ProgressiveUNet",
    "assign_new_modalities",
    "build_model",
    "infer_present",
    "unet_widths",
    "widen_first_layer",
]
