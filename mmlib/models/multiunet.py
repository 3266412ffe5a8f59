"""Multi-Unet: the residual 3D U-Net of the paper (Fig. 1), one input channel per modality.

The pieces (conv block, residual unit, encoder, decoder) are public so that the fusion
variants (``fusion.py``) and the progressive net (``progressive.py``) are built from them
instead of re-implementing them. All convolutions carry a bias, as MONAI's ``Convolution``
does by default and as the reference does; InstanceNorm has no affine parameters, so the
bias before it is redundant but kept for parameter-count parity with the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

#: Widths of the five encoder units at ``width=1`` (the reference architecture).
BASE_WIDTHS: tuple[int, ...] = (16, 32, 64, 128, 256)
#: Strides of the five encoder units; the last (bottleneck) unit keeps the resolution.
STRIDES: tuple[int, ...] = (2, 2, 2, 2, 1)
#: Number of feature taps ``forward_features`` returns: 4 before strided convs, 4 before upsamplings.
N_TAPS = 8


def unet_widths(width: float) -> tuple[int, ...]:
    """Encoder widths for a width factor: ``round(base * width)``, at least 1 (0.5 -> 8..128)."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return tuple(max(1, round(base * width)) for base in BASE_WIDTHS)


def decoder_widths(widths: Sequence[int], out_channels: int) -> tuple[tuple[int, int], ...]:
    """(concatenated input, output) width of the four decoder stages, deepest first.

    At width 1: (384, 64), (128, 32), (64, 16), (32, out_channels).
    """
    w0, w1, w2, w3, w4 = widths
    return ((w4 + w3, w2), (2 * w2, w1), (2 * w1, w0), (2 * w0, out_channels))


class InstanceNorm3d(nn.InstanceNorm3d):
    """InstanceNorm whose statistics are computed in float32 under autocast, its output returned
    in the input's dtype. A crop's channel can be constant (a dropped modality, background): its
    variance is then ~0, and a mean and variance taken in bf16 may give NaN or huge values on some
    CPUs' kernels; in float32 they do not. No parameters: the state dict is unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float()).to(x.dtype)


def conv_block(in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.2) -> Convolution:
    """3x3x3 conv -> InstanceNorm (no affine; statistics in float32) -> Dropout -> PReLU (one slope);
    (B, Cin, S) -> (B, Cout, S/stride)."""
    block = Convolution(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        strides=stride,
        kernel_size=3,
        adn_ordering="NDA",
        act=("prelu", {"num_parameters": 1}),
        norm=("instance", {"affine": False}),
        dropout=dropout,
        bias=True,
    )
    block.adn.N = InstanceNorm3d(out_channels, affine=False)
    return block


def plain_conv(in_channels: int, out_channels: int, kernel_size: int = 3) -> Convolution:
    """A bare 3D conv with bias (no norm, dropout or activation); keeps the spatial size."""
    return Convolution(3, in_channels, out_channels, kernel_size=kernel_size, conv_only=True, bias=True)


def _cat(x: torch.Tensor, lateral: torch.Tensor | None) -> torch.Tensor:
    return x if lateral is None else torch.cat([x, lateral], dim=1)


class PoolResidualUnit(nn.Module):
    """Two conv blocks (the first strided) plus an avg-pooled copy of the input on the first k channels.

    (B, Cin, S) -> (B, Cout, S/stride), k = Cin. An optional lateral input (progressive nets)
    is concatenated before the first conv only; it does not enter the residual path.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float = 0.2, lateral: int = 0):
        super().__init__()
        self.sub1 = conv_block(in_channels + lateral, out_channels, stride, dropout)
        self.sub2 = conv_block(out_channels, out_channels, 1, dropout)
        # The reference's residual path has no weights: a pool where the unit downsamples, else identity.
        self.residual = nn.AvgPool3d(kernel_size=3, stride=stride, padding=1) if stride != 1 else nn.Identity()

    def forward(self, x: torch.Tensor, lateral: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, Cin, S), lateral: (B, L, S) or None -> (B, Cout, S/stride)."""
        y = self.sub2(self.sub1(_cat(x, lateral)))
        res = self.residual(x)
        # Clipped so an input wider than the unit (tiny width factors) still works; at the
        # reference widths k = Cin <= Cout always holds and nothing is dropped.
        k = min(res.shape[1], y.shape[1])
        return torch.cat([y[:, :k] + res[:, :k], y[:, k:]], dim=1)


class Encoder(nn.Module):
    """Five residual units (widths w0..w4, strides 2,2,2,2,1); (B, Cin, S) -> five maps, S/2 .. S/16."""

    def __init__(self, in_channels: int, widths: Sequence[int], dropout: float = 0.2,
                 lateral: Sequence[int] = (0, 0, 0, 0)):
        super().__init__()
        cins = (in_channels, *widths[:-1])
        lats = (*lateral, 0)  # the stride-1 bottleneck unit is no downsampling, so it takes no lateral
        self.units = nn.ModuleList(
            PoolResidualUnit(ci, co, s, dropout, lat) for ci, co, s, lat in zip(cins, widths, STRIDES, lats)
        )

    def forward(self, x: torch.Tensor, laterals: Sequence[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
        """x: (B, Cin, S) -> [e1 (w0, S/2), e2 (w1, S/4), e3 (w2, S/8), e4 (w3, S/16), e5 (w4, S/16)]."""
        lats = list(laterals) if laterals is not None else []
        lats += [None] * (len(self.units) - len(lats))
        outs = []
        for unit, lat in zip(self.units, lats):
            x = unit(x, lat)
            outs.append(x)
        return outs


class DecoderStage(nn.Module):
    """Nearest upsampling x2 -> conv block keeping the width -> conv block reducing it.

    (B, Cin, S) -> (B, Cout, 2S). With ``out_channels=None`` the reducing conv is left out
    (the last stage, whose reduction is the network's plain head conv).
    """

    def __init__(self, in_channels: int, out_channels: int | None, dropout: float = 0.2, lateral: int = 0):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.keep = conv_block(in_channels + lateral, in_channels, 1, dropout)
        self.reduce = conv_block(in_channels, out_channels, 1, dropout) if out_channels is not None else nn.Identity()

    def forward(self, x: torch.Tensor, lateral: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, Cin, S), lateral: (B, L, S) or None -> (B, Cout, 2S)."""
        # Nearest upsampling commutes with channel concatenation, so the lateral joins before it.
        return self.reduce(self.keep(self.up(_cat(x, lateral))))


class Decoder(nn.Module):
    """Four stages on concat(previous, skip), then a plain 3x3x3 head conv with bias.

    ``forward`` stops before the head and returns the full-resolution embedding (2*w0
    channels) that the late-fusion net fuses across modalities; apply ``head`` for logits.
    """

    def __init__(self, widths: Sequence[int], out_channels: int, dropout: float = 0.2,
                 lateral: Sequence[int] = (0, 0, 0, 0)):
        super().__init__()
        stages = decoder_widths(widths, out_channels)
        self.stages = nn.ModuleList(
            DecoderStage(cin, cout if i < len(stages) - 1 else None, dropout, lat)
            for i, ((cin, cout), lat) in enumerate(zip(stages, lateral))
        )
        self.embedding_channels = stages[-1][0]
        self.head = plain_conv(self.embedding_channels, out_channels)

    def forward(self, skips: Sequence[torch.Tensor],
                laterals: Sequence[torch.Tensor | None] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """skips: the encoder's five maps -> (embedding (B, 2*w0, 2*S1), the four stage inputs before upsampling)."""
        lats = list(laterals) if laterals is not None else [None] * len(self.stages)
        h, taps = skips[-1], []
        for stage, skip, lat in zip(self.stages, reversed(skips[:-1]), lats):
            h = torch.cat([h, skip], dim=1)
            taps.append(h)
            h = stage(h, lat)
        return h, taps


class MultiUNet(nn.Module):
    """The paper's residual 3D U-Net; (B, in_channels, X, Y, Z) -> logits (B, out_channels, X, Y, Z).

    X, Y, Z must be multiples of 16 and at least 32 (the avg pool of the 1/8-resolution unit
    needs 3 voxels per axis). ``width`` scales every width (1.0 = the reference).
    ``lateral_channels`` (8 ints, one per tap of ``forward_features``; 0 = none) is only for
    column 2 of the progressive net, which takes column 1's taps as extra conv inputs.
    """

    def __init__(self, in_channels: int, out_channels: int = 1, width: float = 1.0, dropout: float = 0.2,
                 *, lateral_channels: Sequence[int] | None = None):
        super().__init__()
        lateral = tuple(lateral_channels) if lateral_channels is not None else (0,) * N_TAPS
        if len(lateral) != N_TAPS:
            raise ValueError(f"lateral_channels needs {N_TAPS} entries, got {len(lateral)}")
        self.in_channels, self.out_channels, self.width, self.dropout = in_channels, out_channels, width, dropout
        self.widths = unet_widths(width)
        self.lateral_channels = lateral
        self.encoder = Encoder(in_channels, self.widths, dropout, lateral[:4])
        self.decoder = Decoder(self.widths, out_channels, dropout, lateral[4:])

    @property
    def embedding_channels(self) -> int:
        """Channels of the full-resolution embedding before the head conv (2*w0; 32 at width 1)."""
        return self.decoder.embedding_channels

    @property
    def tap_channels(self) -> tuple[int, ...]:
        """Channels of the 8 taps of ``forward_features``, in their order."""
        w = self.widths
        return (self.in_channels, w[0], w[1], w[2], *(cin for cin, _ in decoder_widths(w, self.out_channels)))

    def embed(self, x: torch.Tensor,
              laterals: Sequence[torch.Tensor | None] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, in, X, Y, Z) -> (embedding (B, 2*w0, X, Y, Z), 8 taps) — everything but the head conv.

        Taps: the activations just before each strided conv (input, e1, e2, e3) and just
        before each upsampling (the four concatenated decoder-stage inputs).
        """
        lats = list(laterals) if laterals is not None else [None] * N_TAPS
        skips = self.encoder(x, lats[:4])
        z, up_taps = self.decoder(skips, lats[4:])
        return z, [x, *skips[:3], *up_taps]

    def forward_features(self, x: torch.Tensor, laterals: Sequence[torch.Tensor | None] | None = None
                         ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (B, in, X, Y, Z) -> (logits (B, out, X, Y, Z), the 8 taps of ``embed``)."""
        z, taps = self.embed(x, laterals)
        return self.decoder.head(z), taps

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, in, X, Y, Z) -> logits (B, out, X, Y, Z). ``present`` is ignored: absent channels are zeros."""
        return self.forward_features(x)[0]

    @staticmethod
    def expected_parameter_count(in_channels: int, out_channels: int = 1, width: float = 1.0) -> int:
        """Parameter count from the architecture table, without building the module.

        Sum over 3x3x3 convs of 27*cin*cout + cout (bias), plus one PReLU slope per conv block.
        """
        w = [max(1, round(b * width)) for b in (16, 32, 64, 128, 256)]
        blocks = []  # (cin, cout) of conv blocks that end in a PReLU
        cin = in_channels
        for cout in w:
            blocks += [(cin, cout), (cout, cout)]
            cin = cout
        cats = [w[4] + w[3], 2 * w[2], 2 * w[1], 2 * w[0]]
        for cat, cout in zip(cats[:3], [w[2], w[1], w[0]]):
            blocks += [(cat, cat), (cat, cout)]
        blocks.append((cats[3], cats[3]))
        convs = blocks + [(cats[3], out_channels)]  # the head conv: bias, no PReLU
        return sum(27 * ci * co + co for ci, co in convs) + len(blocks)
