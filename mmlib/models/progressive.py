"""Progressive nets (Appendix C): a frozen pretrained column feeding a fresh column.

Column 2 is a ``MultiUNet`` of the same width whose strided convs and post-upsampling convs
also take column 1's activation at that point (column 1's ``forward_features`` taps),
concatenated to column 2's own features. Column 1's first tap is the input itself, which
column 2 already sees, so that lateral is left out: 7 laterals (3 encoder, 4 decoder).
Column 1's taps do not enter column 2's residual (avg-pool) paths.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mmlib.models.multiunet import MultiUNet


class ProgressiveUNet(nn.Module):
    """Frozen ``pretrained`` (column 1, a copy) + fresh column 2; (B, in, X, Y, Z) -> column 2's logits.

    ``in_channels`` (default: the pretrained model's) is column 2's input width; column 1
    sees the first ``pretrained.in_channels`` channels of the input.
    """

    def __init__(self, pretrained: MultiUNet, in_channels: int | None = None):
        super().__init__()
        if any(pretrained.lateral_channels):
            raise ValueError("column 1 must be a plain MultiUNet (no lateral inputs)")
        in_channels = pretrained.in_channels if in_channels is None else in_channels
        if in_channels < pretrained.in_channels:
            raise ValueError(f"in_channels ({in_channels}) is below the pretrained model's ({pretrained.in_channels})")
        # A copy, so freezing does not change the caller's model.
        self.column1 = copy.deepcopy(pretrained).eval()
        self.column1.requires_grad_(False)
        lateral = (0, *pretrained.tap_channels[1:])
        self.column2 = MultiUNet(in_channels, pretrained.out_channels, pretrained.width, pretrained.dropout,
                                 lateral_channels=lateral)

    def train(self, mode: bool = True) -> ProgressiveUNet:
        """Set column 2's mode; column 1 stays in eval mode (no dropout) whatever ``mode`` is."""
        super().train(mode)
        self.column1.eval()
        return self

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, in, X, Y, Z) -> logits (B, out, X, Y, Z). ``present`` is ignored, as in MultiUNet."""
        with torch.no_grad():  # column 1 is frozen: keep no graph through it
            _, taps = self.column1.forward_features(x[:, : self.column1.in_channels])
        return self.column2.forward_features(x, [None, *taps[1:]])[0]
