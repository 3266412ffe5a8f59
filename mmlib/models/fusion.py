"""Fusion baselines: LFUnet (late fusion) and MAFUnet (multi-scale attention fusion).

Both process each modality on its own and fuse per-modality embeddings with attention over
modalities, weighing only the modalities present in each sample. The attention block is
a = softmax_modalities(conv1x1(conv3x3([z_1..z_C]))); the paper fixes neither kernel sizes
nor the hidden width, so mmlib uses a 3x3x3 conv block (-> F channels) then a 1x1x1 conv to
one logit map per modality. Absent modalities are never run through a network: their
embeddings are zeros, their weights are zero, and a sample with nothing present fuses to zeros.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from torch import nn

from mmlib.models.multiunet import STRIDES, Decoder, Encoder, InstanceNorm3d, MultiUNet, plain_conv, unet_widths


def infer_present(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) -> bool (B, C): a channel is present when it is not all zeros."""
    return x.detach().flatten(2).abs().amax(dim=2) > 0


def resolve_present(x: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
    """The given (B, C) presence mask as bool on x's device, or the one inferred from x."""
    if present is None:
        return infer_present(x)
    if present.shape != x.shape[:2]:
        raise ValueError(f"present must have shape {tuple(x.shape[:2])} (batch, channels), got {tuple(present.shape)}")
    return present.to(device=x.device, dtype=torch.bool)


class ModalityAttention(nn.Module):
    """Attention fusion over modalities: z (B, C, F, *S), present (B, C) -> sum_i a_i z_i, (B, F, *S)."""

    def __init__(self, channels: int, n_modalities: int):
        super().__init__()
        first = Convolution(3, n_modalities * channels, channels, kernel_size=3, adn_ordering="NA",
                            act=("prelu", {"num_parameters": 1}), norm=("instance", {"affine": False}))
        first.adn.N = InstanceNorm3d(channels, affine=False)  # statistics in float32, as in every block
        self.score = nn.Sequential(first, plain_conv(channels, n_modalities, kernel_size=1))

    def forward(self, z: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """z: (B, C, F, *S) with zeros for absent modalities, present: bool (B, C) -> (B, F, *S)."""
        logits = self.score(z.flatten(1, 2))
        expand = (...,) + (None,) * (logits.dim() - 2)
        # A sample with nothing present keeps finite logits (a softmax over all -inf is NaN,
        # and its gradient too); its weights are zeroed by the multiplication below.
        allowed = present | ~present.any(dim=1, keepdim=True)
        logits = logits.masked_fill(~allowed[expand], float("-inf"))
        weights = torch.softmax(logits, dim=1) * present[expand].to(z.dtype)
        return (weights.unsqueeze(2) * z).sum(dim=1)


class LFUNet(nn.Module):
    """Late fusion: one shared single-channel U-Net per modality, attention over the embeddings.

    (B, C, X, Y, Z) -> logits (B, out_channels, X, Y, Z); X, Y, Z divisible by 16. The shared
    U-Net runs once on the batch of (sample, present modality) pairs.
    """

    def __init__(self, in_channels: int, out_channels: int = 1, width: float = 1.0):
        super().__init__()
        self.in_channels, self.out_channels, self.width = in_channels, out_channels, width
        self.unet = MultiUNet(1, out_channels, width)
        self.fusion = ModalityAttention(self.unet.embedding_channels, in_channels)

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, X, Y, Z), present: bool (B, C) or None (inferred) -> logits (B, out, X, Y, Z)."""
        present = resolve_present(x, present)
        rows, cols = present.nonzero(as_tuple=True)
        z = x.new_zeros((*x.shape[:2], self.unet.embedding_channels, *x.shape[2:]))
        if rows.numel():
            emb, _ = self.unet.embed(x[rows, cols].unsqueeze(1))
            # Out of place, so gradients reach the U-Net; under autocast emb may be bf16.
            z = z.index_put((rows, cols), emb.to(z.dtype))
        fused = self.fusion(z, present)
        return self.unet.decoder.head(fused)


class MAFUNet(nn.Module):
    """Multi-scale attention fusion: one encoder per modality, attention at all five scales, one decoder.

    (B, C, X, Y, Z) -> logits (B, out_channels, X, Y, Z); X, Y, Z divisible by 16. Each
    encoder runs only on the samples in which its modality is present.
    """

    def __init__(self, in_channels: int, out_channels: int = 1, width: float = 1.0):
        super().__init__()
        self.in_channels, self.out_channels, self.width = in_channels, out_channels, width
        self.widths = unet_widths(width)
        self.encoders = nn.ModuleList(Encoder(1, self.widths) for _ in range(in_channels))
        self.fusions = nn.ModuleList(ModalityAttention(w, in_channels) for w in self.widths)
        self.decoder = Decoder(self.widths, out_channels)

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, X, Y, Z), present: bool (B, C) or None (inferred) -> logits (B, out, X, Y, Z)."""
        present = resolve_present(x, present)
        per_modality = []  # (samples holding modality i, i, its five encoder maps)
        for i, encoder in enumerate(self.encoders):
            rows = present[:, i].nonzero(as_tuple=True)[0]
            if rows.numel():
                per_modality.append((rows, i, encoder(x[rows, i : i + 1])))
        fused, spatial = [], tuple(x.shape[2:])
        for scale, (w, stride, fusion) in enumerate(zip(self.widths, STRIDES, self.fusions)):
            spatial = tuple((n - 1) // stride + 1 for n in spatial)  # conv k3 p1: ceil(n / stride)
            z = x.new_zeros((*x.shape[:2], w, *spatial))
            for rows, i, maps in per_modality:
                z = z.index_put((rows, torch.full_like(rows, i)), maps[scale].to(z.dtype))
            fused.append(fusion(z, present))
        emb, _ = self.decoder(fused)
        return self.decoder.head(emb)
