"""Fine-tuning a pretrained Multi-Unet to a new database (Appendix B).

A modality of the new database takes its own channel when the pretrained model has one;
a modality the model has no channel for takes a free channel (one whose modality the new
database lacks), PD first as in the paper (SWI -> PD for TBI, DWI -> PD for ISLES), then
the other free channels in channel order. Beyond the free channels the first layer is widened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mmlib.data.modalities import canonical_modality, sort_modalities
from mmlib.errors import MMLibError
from mmlib.models.multiunet import MultiUNet

#: Free channels of these modalities are reused first for new modalities (the paper reuses PD).
PREFERRED_FREE_CHANNELS: tuple[str, ...] = ("PD",)


def assign_new_modalities(channel_modalities: Sequence[str], new_db_modalities: Sequence[str],
                          allow_widening: bool = False) -> dict[str, int]:
    """Map each modality of the new database (canonical name) to a pretrained model's input channel.

    Raises MMLibError when there are more unknown modalities than free channels, unless
    ``allow_widening``: then the overflow gets channels len(channel_modalities), +1, ...
    (widen the model with ``widen_first_layer`` by max(channel) + 1 - len(channel_modalities)).
    """
    channels = [canonical_modality(m) for m in channel_modalities]
    if len(set(channels)) != len(channels):
        raise MMLibError(f"channel modalities repeat a modality: {list(channel_modalities)}")
    new = sort_modalities(new_db_modalities)
    mapping = {m: channels.index(m) for m in new if m in channels}
    unknown = [m for m in new if m not in channels]
    free = sorted((i for i, m in enumerate(channels) if m not in new),
                  key=lambda i: (channels[i] not in PREFERRED_FREE_CHANNELS, i))
    if len(unknown) > len(free) and not allow_widening:
        raise MMLibError(
            f"{len(unknown)} new modalities ({', '.join(unknown)}) but only {len(free)} free channel(s) "
            f"({', '.join(channels[i] for i in free) or 'none'}); pass allow_widening=True and widen "
            f"the first layer with widen_first_layer"
        )
    extra = range(len(channels), len(channels) + max(0, len(unknown) - len(free)))
    mapping.update(zip(unknown, [*free, *extra]))
    return mapping


def widen_first_layer(model: MultiUNet, extra_channels: int, seed: int = 0) -> MultiUNet:
    """A copy of ``model`` with ``extra_channels`` more inputs (appended last); ``model`` is unchanged.

    Existing filters are kept; the new ones are drawn like PyTorch's default conv init
    (uniform +-1/sqrt(fan_in)) from ``seed``. With zeros in the extra channels the output is
    unchanged: the new filters see zeros, and the residual pool (now added to in+extra
    channels) adds the pooled zeros of the extra channels.
    """
    if extra_channels < 0:
        raise ValueError(f"extra_channels must be >= 0, got {extra_channels}")
    if any(model.lateral_channels):
        raise ValueError("only a plain MultiUNet can be widened")
    wide = MultiUNet(model.in_channels + extra_channels, model.out_channels, model.width, model.dropout)
    state = model.state_dict()  # a new dict; loading copies the tensors, so ``model`` is untouched
    key = "encoder.units.0.sub1.conv.weight"
    old = state[key]
    fan_in = wide.in_channels * math.prod(old.shape[2:])
    bound = 1.0 / math.sqrt(fan_in)
    gen = torch.Generator().manual_seed(seed)
    new = (torch.rand((old.shape[0], extra_channels, *old.shape[2:]), generator=gen) * 2 - 1) * bound
    state[key] = torch.cat([old, new.to(old)], dim=1)
    wide.load_state_dict(state)
    return wide.to(device=old.device, dtype=old.dtype).train(model.training)
