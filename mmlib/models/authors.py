"""The authors' released Multi-Unet checkpoints, read weights-only into mmlib's `MultiUNet`.

The paper's code releases its five-database model as a plain state dict of its residual U-Net
(Fig. 1): six input channels in the order PD, FLAIR, SWI, T1, T1c, T2, one output. Their network
and `MultiUNet` are the same network parameter for parameter; only the tensor names differ:
encoder unit i is their `conv_{i+1}` (sub-units `unit0`, `unit1`), decoder stage j is their
`up_stage_{j+1}` (index 0 the upsampling, 1 the conv keeping the width, 2 the one reducing it),
and their last reducing conv is mmlib's plain head conv.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmlib.data.modalities import sort_modalities
from mmlib.errors import CheckpointError
from mmlib.models.multiunet import MultiUNet

#: The released checkpoints' input channels, in order (a missing modality's channel holds zeros).
AUTHORS_CHANNELS: tuple[str, ...] = ("PD", "FLAIR", "SWI", "T1", "T1c", "T2")
_CONV = ("conv.weight", "conv.bias", "adn.A.weight")


def _name_map() -> dict[str, str]:
    """Their tensor name -> mmlib's, for every one of the 53 tensors."""
    names = {}
    for i in range(5):
        for sub, ours in (("unit0", "sub1"), ("unit1", "sub2")):
            for t in _CONV:
                names[f"conv_{i + 1}.conv.{sub}.{t}"] = f"encoder.units.{i}.{ours}.{t}"
    for j in range(4):
        for t in _CONV:
            names[f"up_stage_{j + 1}.1.{t}"] = f"decoder.stages.{j}.keep.{t}"
            if j < 3:
                names[f"up_stage_{j + 1}.2.{t}"] = f"decoder.stages.{j}.reduce.{t}"
    for t in _CONV[:2]:  # the head is a plain conv: no activation
        names[f"up_stage_4.2.{t}"] = f"decoder.head.{t}"
    return names


AUTHORS_TO_MMLIB: dict[str, str] = _name_map()


def is_authors_state_dict(state) -> bool:
    """True when `state` is a mapping of exactly the authors' tensor names to tensors."""
    return (isinstance(state, dict) and set(state) == set(AUTHORS_TO_MMLIB)
            and all(isinstance(v, torch.Tensor) for v in state.values()))


def authors_multiunet(state: dict, path: str | Path | None = None) -> MultiUNet:
    """mmlib's MultiUNet (width 1, eval mode) holding the weights of the authors' state dict;
    CheckpointError naming `path` when the tensors do not fit it."""
    if not is_authors_state_dict(state):
        raise CheckpointError("not the authors' Multi-Unet state dict (tensor names differ)", path)
    in_channels = int(state["conv_1.conv.unit0.conv.weight"].shape[1])
    out_channels = int(state["up_stage_4.2.conv.weight"].shape[0])
    if in_channels != len(AUTHORS_CHANNELS) or out_channels != 1:
        raise CheckpointError(f"the authors' network has {len(AUTHORS_CHANNELS)} input channels and one output; "
                              f"this one has {in_channels} and {out_channels}", path)
    model = MultiUNet(in_channels, out_channels, width=1.0)
    ours = {AUTHORS_TO_MMLIB[k]: v.detach().float() for k, v in state.items()}
    try:
        model.load_state_dict(ours)
    except RuntimeError as err:
        raise CheckpointError(f"the tensors do not fit the authors' architecture: {err}", path) from err
    return model.eval()


def to_authors_state_dict(model: MultiUNet) -> dict[str, torch.Tensor]:
    """The inverse of `authors_multiunet`: a width-1 MultiUNet's weights under the authors' names."""
    ours = model.state_dict()
    return {theirs: ours[name].detach().cpu().clone() for theirs, name in AUTHORS_TO_MMLIB.items()}


class ChannelOrder(nn.Module):
    """A network whose input channels come in another order than mmlib's (a ChannelMap sorts its
    modalities): (B, C, X, Y, Z) in mmlib's order is permuted to the network's, then passed on.
    A permutation is needed in front: the residual path adds input channel i to feature channel i,
    so the first conv's weights cannot simply be permuted instead."""

    def __init__(self, net: nn.Module, order: list[int]):
        super().__init__()
        self.net = net
        self.order = list(order)

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, X, Y, Z) in mmlib's channel order -> the network's logits."""
        return self.net(x[:, self.order])


def in_mmlib_order(net: nn.Module, channels) -> nn.Module:
    """`net`, whose input channel i holds modality `channels[i]`, fed in mmlib's channel order."""
    ours = sort_modalities(channels)
    if tuple(ours) == tuple(channels):
        return net
    return ChannelOrder(net, [ours.index(m) for m in channels])
