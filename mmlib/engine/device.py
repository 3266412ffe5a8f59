"""Where the engine runs: device choice, CPU threads and seeding."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from mmlib.errors import MMLibError


def cpu_count() -> int:
    """CPU cores this process may use (respects affinity masks, e.g. in containers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def pick_device(requested: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA if available, else CPU; 'cpu' / 'cuda' / 'cuda:1' as asked.

    On CPU, torch uses every core this process may use unless OMP_NUM_THREADS says otherwise.
    """
    if isinstance(requested, torch.device):
        device = requested
    elif requested == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MMLibError(f"device {requested!r} asked for, but CUDA is not available")
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cpu_count())
    return device


def amp_dtype() -> torch.dtype:
    """The mixed-precision dtype on CUDA: bf16 where the GPU supports it, else fp16."""
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    """The global torch RNG states (CPU and CUDA), to store in a checkpoint."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
