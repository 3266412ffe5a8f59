"""An independent network of the authors' architecture, for testing that mmlib reads their checkpoints.

Built from the paper's description of the reference architecture (Fig. 1: five residual units
of widths 16-256, the first four strided; each unit two [3x3x3 conv -> InstanceNorm without
affine -> Dropout -> PReLU with one slope] sub-units plus an average-pooled copy of its input
added to its first channels; four decoder stages of [nearest upsampling x2 -> conv keeping the
width -> conv reducing it] on concat(previous, skip), the very last conv plain) and the tensor
names of their released state dicts. Plain PyTorch: no mmlib, no MONAI.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (16, 32, 64, 128, 256)


class Block(nn.Module):
    """conv (bias) -> InstanceNorm (no affine) -> PReLU; `plain`: the conv alone. Dropout is off at inference."""

    def __init__(self, cin: int, cout: int, stride: int = 1, plain: bool = False):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, stride=stride, padding=1)
        self.plain = plain
        if not plain:
            self.adn = nn.ModuleDict({"A": nn.PReLU(num_parameters=1)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x if self.plain else self.adn["A"](F.instance_norm(x, eps=1e-5))


class Unit(nn.Module):
    """Two blocks, the first strided; the input (average-pooled where strided) added to the first channels."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = nn.ModuleDict({"unit0": Block(cin, cout, stride), "unit1": Block(cout, cout)})
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv["unit1"](self.conv["unit0"](x))
        res = F.avg_pool3d(x, 3, stride=2, padding=1) if self.stride == 2 else x
        k = x.shape[1]
        return torch.cat([y[:, :k] + res, y[:, k:]], dim=1)


class AuthorsUNet(nn.Module):
    """(B, 6, X, Y, Z) -> logits (B, 1, X, Y, Z), with the released checkpoints' tensor names."""

    def __init__(self, in_channels: int = 6, out_channels: int = 1):
        super().__init__()
        w = WIDTHS
        cins = (in_channels, *w[:-1])
        for i, (cin, cout, stride) in enumerate(zip(cins, w, (2, 2, 2, 2, 1))):
            setattr(self, f"conv_{i + 1}", Unit(cin, cout, stride))
        cats = (w[4] + w[3], 2 * w[2], 2 * w[1], 2 * w[0])
        outs = (w[2], w[1], w[0])
        for j in range(3):
            setattr(self, f"up_stage_{j + 1}", nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                             Block(cats[j], cats[j]), Block(cats[j], outs[j])))
        self.up_stage_4 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), Block(cats[3], cats[3]),
                                        Block(cats[3], out_channels, plain=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.conv_1(x)
        e2 = self.conv_2(e1)
        e3 = self.conv_3(e2)
        e4 = self.conv_4(e3)
        e5 = self.conv_5(e4)
        h = self.up_stage_1(torch.cat([e5, e4], 1))
        h = self.up_stage_2(torch.cat([h, e3], 1))
        h = self.up_stage_3(torch.cat([h, e2], 1))
        return self.up_stage_4(torch.cat([h, e1], 1))


def random_authors_net(seed: int = 0) -> AuthorsUNet:
    """A reference net with random weights, PReLU slopes and biases included (eval mode)."""
    torch.manual_seed(seed)
    net = AuthorsUNet()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("A.weight"):
                p.uniform_(0.05, 0.4)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return net.eval()


def authors_input(images: dict[str, np.ndarray], brain: np.ndarray, channels) -> np.ndarray:
    """The authors' preprocessing of 1 mm images already on one grid: each modality z-scored with
    its brain's mean and std over the whole volume (background -mean/std), placed on its channel."""
    x = np.zeros((len(channels), *brain.shape), np.float32)
    for mod, data in images.items():
        inside = data[brain].astype(np.float64)
        x[list(channels).index(mod)] = (data - inside.mean()) / inside.std()
    return x
