"""Checkpoints: written atomically, read with `weights_only=True` (no arbitrary pickle code).

A checkpoint is a plain dict of tensors, str, int, float, bool, None, lists, tuples and dicts.
Numpy arrays (e.g. inside a numpy RNG state) are stored as tensors and restored on load.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmlib.errors import CheckpointError

FORMAT_VERSION = 1
_REQUIRED = ("format_version", "model", "step", "config", "channel_map")
_NDARRAY = "__ndarray__"


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

    A crash or interrupt leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave the temporary file behind
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    if not path.is_file():
        raise CheckpointError("checkpoint file does not exist", path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
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
    return state


def load_weights(model: nn.Module, state: dict, path: str | Path) -> None:
    """Load `state['model']` into `model`, raising CheckpointError if the shapes or names differ."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint does not fit the model: {err}", path) from err


def _in_channels(config: dict, channel_map: dict, path: Path) -> int:
    """The model's input channel count, from the config or else from the channel map."""
    if config.get("in_channels"):
        return int(config["in_channels"])
    from mmlib.data.loaders import ChannelMap  # lazily: only needed for old configs

    try:
        return len(ChannelMap.from_dict(channel_map))
    except Exception as err:
        raise CheckpointError(f"cannot tell the model's input channels: {err}", path) from err


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict, dict]:
    """Rebuild the trained model of a checkpoint -> (model in eval mode on `device`, channel map
    dict, config). `device` may be 'auto' (the GPU when there is one)."""
    from mmlib.engine.device import pick_device
    from mmlib.models import build_model

    path = Path(path)
    state = load_checkpoint(path, map_location="cpu")
    config, channel_map = state["config"], state["channel_map"]
    if "arch" not in config or "width" not in config:
        raise CheckpointError("config lacks 'arch' or 'width'; cannot rebuild the model", path)
    model = build_model(config["arch"], _in_channels(config, channel_map, path), config["width"])
    load_weights(model, state, path)
    return model.to(pick_device(device)).eval(), channel_map, config
