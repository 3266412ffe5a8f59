"""Numbers a model can trust: a watch for non-finite values in training, and a self-check that
decides whether reduced precision (bf16 autocast) is sound for a network on this machine.

A CPU flag (avx512_bf16) says that bf16 is fast, not that every kernel this network runs gives
finite, float32-like numbers with it. So before training under autocast, `autocast_decision`
runs the network a few optimiser steps on a fixed batch in float32 and in bf16 from the same
weights and compares them; the verdict is cached per CPU (or GPU) model, torch version and
network, and shown in the run's protocol. The watch (`all_finite`) is the second line: training
reads it where it reads its losses back, and a non-finite value under autocast sends the run back
to its last finite state in float32 (mmlib.engine.train).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from mmlib.atomic_files import atomic_write_json
from mmlib.engine.losses import dice_loss
from mmlib.errors import MMLibError

#: Optimiser steps of the self-check, and its tolerances: the bf16 gradient of the first step
#: within GRAD_TOLERANCE (relative L2) of float32's, the losses of every step within LOSS_TOLERANCE.
CHECK_STEPS = 12
GRAD_TOLERANCE = 0.25
LOSS_TOLERANCE = 0.05
#: Bump when the self-check changes (cached verdicts are then taken again).
CHECK_VERSION = 1


class NonFiniteError(MMLibError):
    """Training met a NaN or an infinity it cannot recover from (in float32)."""


def all_finite(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """A bool tensor on the tensors' device: every floating value of every tensor is finite
    (one reduction per tensor, no host sync until it is read)."""
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return torch.stack(flags).all() if flags else torch.tensor(True)


def model_finite(model: nn.Module) -> torch.Tensor:
    """`all_finite` over a model's parameters and buffers."""
    return all_finite(list(model.parameters()) + list(model.buffers()))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors of an optimiser's state (Adam's moments)."""
    return [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]


def state_finite(state: dict) -> bool:
    """Whether every floating tensor in a (nested) checkpoint dict is finite."""
    stack, tensors = [state], []
    while stack:
        x = stack.pop()
        if torch.is_tensor(x):
            tensors.append(x)
        elif isinstance(x, dict):
            stack += list(x.values())
        elif isinstance(x, (list, tuple)):
            stack += list(x)
    return bool(all_finite(tensors))


# -- the self-check ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrecisionCheck:
    """The self-check's verdict for one network on one machine: `ok` (bf16 may be used), why,
    and what it measured (first-step gradient error, largest loss difference)."""

    ok: bool
    reason: str
    machine: str
    grad_error: float | None = None
    loss_difference: float | None = None

    def describe(self) -> str:
        if self.ok:
            return f"bf16 passed its self-check on {self.machine}"
        return f"bf16 failed its self-check on {self.machine}: {self.reason}"


def machine_name(device: torch.device) -> str:
    """The processor's model name (CPU) or the GPU's name, as the self-check's cache keys it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cache_file() -> Path:
    """Where verdicts are kept: $MMLIB_CACHE_DIR/precision.json, else ~/.cache/mmlib/."""
    root = os.environ.get("MMLIB_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmlib"
    return Path(root) / "precision.json"


def _probe_batch(in_channels: int, crop: int, device: torch.device) -> dict:
    """A fixed batch of 2 crops: half the channels zero (as modality drop leaves them), the rest
    noise with a bright block that is the lesion; a crop with and a crop without lesion."""
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(2, in_channels, crop, crop, crop, generator=gen)
    x[:, in_channels // 2:] = 0
    y = torch.zeros(2, 1, crop, crop, crop)
    lo, hi = crop // 4, crop // 2
    y[0, :, lo:hi, lo:hi, lo:hi] = 1
    x[0, : max(1, in_channels // 2), lo:hi, lo:hi, lo:hi] += 2.0
    present = torch.ones(2, in_channels)
    present[:, in_channels // 2:] = 0
    return {"x": x.to(device), "y": y.to(device), "present": present.to(device)}


def _run_steps(model: nn.Module, batch: dict, dtype: torch.dtype | None, device: torch.device, steps: int
               ) -> tuple[list[float], torch.Tensor | None, bool]:
    """`steps` Adam steps on one batch -> (losses, first step's flat gradient, all finite)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    ones = torch.ones_like(batch["y"])
    losses, first = [], None
    for _ in range(steps):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(batch["x"], present=batch["present"])
        loss = dice_loss(logits, batch["y"], ones, batch=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not bool(all_finite([loss, *grads])):
            return losses, first, False
        if first is None:
            first = torch.cat([g.detach().float().flatten() for g in grads])
        optimizer.step()
        losses.append(loss.item())
    return losses, first, bool(model_finite(model))


def self_check(model: nn.Module, dtype: torch.dtype, device: torch.device, crop: int, machine: str,
               steps: int = CHECK_STEPS) -> PrecisionCheck:
    """Run `model` (a copy; dropout off) `steps` optimiser steps in float32 and under `dtype`
    autocast from the same weights on the same batch, and compare."""
    in_channels = _in_channels(model)
    batch = _probe_batch(in_channels, crop, device)
    runs = {}
    for name, d in (("float32", None), ("bf16", dtype)):
        net = copy.deepcopy(model).to(device).eval()  # eval: the same (no) dropout in both runs
        try:
            runs[name] = _run_steps(net, batch, d, device, steps)
        except RuntimeError as err:  # e.g. a network that mixes dtypes by hand fails under autocast
            if d is None:
                raise
            return PrecisionCheck(False, f"{type(model).__name__} fails under autocast ({err})", machine)
    (ref_losses, ref_grad, ref_ok), (losses, grad, ok) = runs["float32"], runs["bf16"]
    if not ref_ok:
        return PrecisionCheck(False, "float32 itself went non-finite on the probe batch", machine)
    if not ok:
        return PrecisionCheck(False, f"non-finite loss, gradient or weight by step {len(losses) + 1} of {steps}",
                              machine)
    grad_error = float((grad - ref_grad).norm() / ref_grad.norm().clamp_min(1e-12))
    loss_difference = max(abs(a - b) for a, b in zip(losses, ref_losses))
    if grad_error > GRAD_TOLERANCE:
        return PrecisionCheck(False, f"first gradient {grad_error:.3f} from float32's (relative L2; "
                                     f"tolerance {GRAD_TOLERANCE})", machine, grad_error, loss_difference)
    if loss_difference > LOSS_TOLERANCE:
        return PrecisionCheck(False, f"losses up to {loss_difference:.3f} from float32's (tolerance "
                                     f"{LOSS_TOLERANCE})", machine, grad_error, loss_difference)
    return PrecisionCheck(True, "finite, gradients and losses within tolerance", machine, grad_error, loss_difference)


def _in_channels(model: nn.Module) -> int:
    """The modality channels a network takes (mmlib's networks say so as `in_channels`)."""
    for m in model.modules():
        if isinstance(getattr(m, "in_channels", None), int) and not isinstance(m, nn.Conv3d):
            return m.in_channels
    return next(m for m in model.modules() if isinstance(m, nn.Conv3d)).in_channels


def _network_key(model: nn.Module, crop: int) -> str:
    return (f"{type(model).__name__}/in{_in_channels(model)}/p{sum(p.numel() for p in model.parameters())}/"
            f"crop{crop}")


def checked_dtype(model: nn.Module, dtype: torch.dtype | None, device: torch.device, crop: int
                  ) -> tuple[torch.dtype | None, PrecisionCheck | None]:
    """The autocast dtype to train `model` with: `dtype` if it passes the self-check on this
    machine (cached), else None (float32); with the check's verdict (None: nothing to check)."""
    if dtype is None:
        return None, None
    machine = machine_name(device)
    key = f"v{CHECK_VERSION}|{machine}|torch {torch.__version__}|{dtype}|{_network_key(model, crop)}"
    if key in _MEMO:
        return (dtype if _MEMO[key].ok else None), _MEMO[key]
    check = _cached_or_new(key, model, dtype, device, crop, machine)
    _MEMO[key] = check
    return (dtype if check.ok else None), check


#: Verdicts already taken in this process (the cache file may be read-only).
_MEMO: dict[str, PrecisionCheck] = {}


def _cached_or_new(key: str, model: nn.Module, dtype: torch.dtype, device: torch.device, crop: int, machine: str
                   ) -> PrecisionCheck:
    path = cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and isinstance(cached.get(key), dict):
        try:
            check = PrecisionCheck(**cached[key])
        except TypeError:
            check = None
        if check is not None:
            return check
    check = self_check(model, dtype, device, crop, machine)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {**(cached if isinstance(cached, dict) else {}), key: asdict(check)})
    except OSError:
        pass  # a read-only home: the check is taken again by the next process
    return check


__all__ = ["NonFiniteError", "PrecisionCheck", "all_finite", "model_finite", "optimizer_tensors", "state_finite",
           "self_check", "checked_dtype", "machine_name", "cache_file", "CHECK_STEPS", "GRAD_TOLERANCE",
           "LOSS_TOLERANCE"]
