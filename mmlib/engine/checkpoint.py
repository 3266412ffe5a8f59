"""Checkpoints: written atomically, read with `weights_only=True` (no arbitrary pickle code).

A checkpoint is a plain dict of tensors, str, int, float, bool, None, lists, tuples and dicts.
Numpy arrays (e.g. inside a numpy RNG state) are stored as tensors and restored on load. A
checkpoint's model config is validated (types, ranges) before any network is built from it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmlib.atomic_files import atomic_open
from mmlib.data.loaders import ChannelMap
from mmlib.engine.device import pick_device
from mmlib.engine.precision import state_finite
from mmlib.env import positive_number
from mmlib.errors import CheckpointError
from mmlib.models import build_model

FORMAT_VERSION = 1
_REQUIRED = ("format_version", "model", "step", "config", "channel_map")
_NDARRAY = "__ndarray__"
#: Architectures `load_model` can rebuild (mmlib.models.build_model).
KNOWN_ARCHS = ("multiunet", "lfunet", "mafunet", "progressive")
#: Largest width multiplier believed (1 = the paper's network; 4 is already 16x its weights).
MAX_WIDTH = 4.0
#: Most modality channels a model may take (the seven databases hold 13 modalities).
MAX_IN_CHANNELS = 64
#: Default wall-clock seconds between two checkpoints of a run ($MMLIB_CHECKPOINT_SECONDS).
CHECKPOINT_SECONDS = 120.0


def to_plain(obj):
    """Make `obj` loadable with weights_only=True: numpy arrays -> tagged tensors, numpy
    scalars -> python numbers; containers are converted recursively."""
    if isinstance(obj, np.ndarray):
        return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(obj)), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def from_plain(obj):
    """Undo `to_plain`: tagged tensors become numpy arrays of their original dtype again."""
    if isinstance(obj, dict):
        if _NDARRAY in obj:
            return obj[_NDARRAY].numpy().astype(obj["dtype"], copy=False)
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_plain(v) for v in obj)
    return obj


def atomic_save(obj: dict, path: str | Path) -> Path:
    """torch.save `obj` to a temporary file next to `path`, then rename it over `path`.

    A crash or interrupt leaves either the old file or the new one, never half of one; the
    file's mode follows the umask (mmlib.atomic_files).
    """
    with atomic_open(path, "wb", durable=True) as f:
        torch.save(obj, f)
    return Path(path)


def checkpoint_seconds() -> float:
    """Seconds between checkpoints: $MMLIB_CHECKPOINT_SECONDS if set, else CHECKPOINT_SECONDS."""
    return positive_number("MMLIB_CHECKPOINT_SECONDS", CHECKPOINT_SECONDS, "seconds")


class CheckpointSchedule:
    """When a training run writes its resumable checkpoint: once `seconds` of wall time passed
    since the last one (default checkpoint_seconds()), or every `steps` steps if given, so a
    kill loses at most that much work whatever a step costs."""

    def __init__(self, seconds: float | None = None, steps: int | None = None, clock=None):
        self.seconds = checkpoint_seconds() if seconds is None else float(seconds)
        self.steps = steps
        self.clock = clock or time.monotonic
        self.last = self.clock()

    def due(self, done: int) -> bool:
        """True if a checkpoint should be written after `done` steps."""
        if self.steps and done % self.steps == 0:
            return True
        return self.clock() - self.last >= self.seconds

    def saved(self) -> None:
        """Note that a checkpoint was just written."""
        self.last = self.clock()


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler_state: dict | None,
    step: int,
    config: dict,
    channel_map: dict,
    rng_state: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write model + optimiser + training position atomically to `path`.

    `config` must hold 'arch' and 'width' (and ideally 'in_channels') so `load_model` can rebuild
    the network. `extra` holds anything else to resume (the batches' state, the losses so far).
    """
    state = {
        "format_version": FORMAT_VERSION,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": to_plain(scheduler_state),
        "step": int(step),
        "config": to_plain(dict(config)),
        "channel_map": to_plain(dict(channel_map)),
        "rng": to_plain(rng_state),
        "extra": to_plain(extra),
    }
    return atomic_save(state, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`; CheckpointError if missing or corrupt.

    Numpy arrays stored by `to_plain` come back as numpy arrays (in 'rng', 'extra', 'config').
    """
    path = Path(path)
    try:
        is_file = path.stat() and path.is_file()
    except PermissionError:
        raise CheckpointError("permission denied: a folder on the path cannot be searched", path) from None
    except OSError:
        is_file = False
    if not is_file:
        raise CheckpointError("checkpoint file does not exist", path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise CheckpointError("permission denied: cannot read the checkpoint", path) from None
    except Exception as err:  # truncated zip, not a torch file, disallowed pickle globals...
        raise CheckpointError(f"cannot read checkpoint ({type(err).__name__}: {err})", path) from err
    if not isinstance(state, dict) or any(k not in state for k in _REQUIRED):
        raise CheckpointError(f"not an mmlib checkpoint (needs keys {', '.join(_REQUIRED)})", path)
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format {state['format_version']}, this mmlib reads {FORMAT_VERSION}", path
        )
    for key in ("scheduler", "config", "channel_map", "rng", "extra"):
        state[key] = from_plain(state.get(key))
    step = state["step"]
    if not (isinstance(step, int) and not isinstance(step, bool) and step >= 0):
        raise CheckpointError(f"'step' must be a non-negative integer, got {step!r}", path)
    if not isinstance(state["config"], dict) or not isinstance(state["channel_map"], dict):
        raise CheckpointError("'config' and 'channel_map' must be mappings", path)
    if not isinstance(state["model"], dict):
        raise CheckpointError("'model' must be a mapping of parameter names to tensors", path)
    return state


def load_weights(model: nn.Module, state: dict, path: str | Path) -> None:
    """Load `state['model']` into `model`, raising CheckpointError if the shapes or names differ."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint does not fit the model: {err}", path) from err


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_model_config(config, path: str | Path | None = None) -> dict:
    """Check a checkpoint's model config before a network is built from it: 'arch' one of
    KNOWN_ARCHS, 'width' a number in (0, MAX_WIDTH], 'in_channels' (if set) an integer in
    1..MAX_IN_CHANNELS. Returns the config; CheckpointError naming the file otherwise."""
    if not isinstance(config, dict):
        raise CheckpointError(f"config must be a mapping, got {type(config).__name__}", path)
    arch = config.get("arch")
    if not isinstance(arch, str) or arch.lower() not in KNOWN_ARCHS:
        raise CheckpointError(f"config 'arch' must be one of {', '.join(KNOWN_ARCHS)}, got {arch!r}", path)
    width = config.get("width")
    if not _is_number(width) or not 0 < width <= MAX_WIDTH:
        raise CheckpointError(f"config 'width' must be a number in (0, {MAX_WIDTH:g}], got {width!r}", path)
    channels = config.get("in_channels")
    if channels is not None and not (isinstance(channels, int) and not isinstance(channels, bool)
                                     and 1 <= channels <= MAX_IN_CHANNELS):
        raise CheckpointError(f"config 'in_channels' must be an integer in 1..{MAX_IN_CHANNELS}, "
                              f"got {channels!r}", path)
    return config


def _in_channels(config: dict, channel_map: dict, path: Path) -> int:
    """The model's input channel count, from the config or else from the channel map."""
    if config.get("in_channels"):
        return int(config["in_channels"])
    try:
        n = len(ChannelMap.from_dict(channel_map))
    except Exception as err:
        raise CheckpointError(f"cannot tell the model's input channels: {err}", path) from err
    if not 1 <= n <= MAX_IN_CHANNELS:
        raise CheckpointError(f"channel map holds {n} channels; a model takes 1..{MAX_IN_CHANNELS}", path)
    return n


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict, dict]:
    """Rebuild the trained model of a checkpoint -> (model in eval mode on `device`, channel map
    dict, config). `device` may be 'auto' (the GPU when there is one). The config is validated
    (validate_model_config) before the network is built; non-finite weights are refused."""
    path = Path(path)
    state = load_checkpoint(path, map_location="cpu")
    config, channel_map = state["config"], state["channel_map"]
    if not isinstance(config, dict) or "arch" not in config or "width" not in config:
        raise CheckpointError("config lacks 'arch' or 'width'; cannot rebuild the model", path)
    validate_model_config(config, path)
    if not state_finite(state["model"]):
        raise CheckpointError("the weights hold NaN or infinite values: a model that diverged is never evaluated "
                              "(delete its folder to train it again)", path)
    model = build_model(config["arch"], _in_channels(config, channel_map, path), float(config["width"]))
    load_weights(model, state, path)
    return model.to(pick_device(device)).eval(), channel_map, config
