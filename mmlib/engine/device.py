"""Where the engine runs: device choice, CPU threads and seeding."""

from __future__ import annotations

import functools
import os
import random
import re
from pathlib import Path

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


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX-BF16; Linux only).

    Elsewhere bf16 would be emulated, which is slower than float32, so autocast stays off.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def amp_dtype(device: str | torch.device | None = None) -> torch.dtype | None:
    """The mixed-precision dtype of `device` (None: the CUDA one): bf16 on a GPU that has it,
    else fp16; on CPU bf16 where `cpu_bf16_native()`, else None (no autocast)."""
    if device is not None and torch.device(device).type == "cpu":
        return torch.bfloat16 if cpu_bf16_native() else None
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
