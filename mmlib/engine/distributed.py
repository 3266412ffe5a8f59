"""Data parallelism across the processes torchrun (or a Slurm job through submitit) starts.

A run is distributed when the launcher's environment says so (WORLD_SIZE > 1 with RANK and
LOCAL_RANK): `setup` then joins torch.distributed once (gloo on CPU; NCCL for CUDA tensors and
gloo for Python objects on a GPU, LOCAL_RANK picking the GPU). Without it every helper here is
the single-process answer (rank 0 of 1) and no distributed code runs at all.

Rank 0 alone writes files. `on_main` runs a step on rank 0 and hands every rank its result (or
its error), so all ranks take the same decisions; inside it the other helpers act locally.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import pickle
import threading
from datetime import timedelta
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from mmlib.env import positive_number
from mmlib.errors import MMLibError

T = TypeVar("T")

#: Minutes a rank waits in a collective (e.g. while rank 0 prepares the data) before failing.
DEFAULT_TIMEOUT_MIN = 180.0

_state = threading.local()  # .solo: inside on_main on rank 0, where the others are not listening
_owned = {"group": False}  # whether this module created the process group (and tears it down)


def launched() -> bool:
    """True when a launcher (torchrun, submitit) started this process as one of several ranks."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def active() -> bool:
    """True when a process group is up and this process is one of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    """This process's index on its machine (LOCAL_RANK), 0 when not launched as a rank."""
    return int(os.environ.get("LOCAL_RANK", "0")) if active() or launched() else 0


def is_main() -> bool:
    return rank() == 0


def _solo() -> bool:
    return getattr(_state, "solo", False)


def timeout_minutes() -> float:
    """How long a rank waits in a collective: $MMLIB_DIST_TIMEOUT_MIN, else DEFAULT_TIMEOUT_MIN."""
    return positive_number("MMLIB_DIST_TIMEOUT_MIN", DEFAULT_TIMEOUT_MIN, "minutes")


def _wants_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if device in (None, "auto"):
        return torch.cuda.is_available()
    return str(device).startswith("cuda")


def setup(device: str | torch.device | None = "auto") -> bool:
    """Join the process group the launcher's environment describes (once); True if distributed.
    On CUDA this rank's GPU becomes the current device (LOCAL_RANK among the visible ones)."""
    if active():
        return True
    if not launched():
        return False
    if not dist.is_available():
        raise MMLibError("launched as several ranks (WORLD_SIZE > 1), but this torch has no torch.distributed")
    cuda = _wants_cuda(device)
    if cuda:
        if not torch.cuda.is_available():
            raise MMLibError(f"device {device!r} asked for under torchrun, but CUDA is not available")
        # A launcher that gives each task one GPU leaves one visible: the modulo keeps it valid.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    # Objects (decisions, result rows) always travel through gloo, so rank 0 may take long
    # alone without tripping NCCL's watchdog; tensors on a GPU go through NCCL.
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes()))
    _owned["group"] = True
    atexit.register(teardown)
    return True


def teardown() -> None:
    """Leave the process group if `setup` made it (a later `setup` joins a new one)."""
    if _owned["group"] and dist.is_available() and dist.is_initialized():
        # Free what still holds the group (a model's DDP wrapper) while every rank is here, and
        # destroy it only once all ranks are: gloo aborts a rank whose peer tore down first.
        # A rank that died leaves the others waiting here a minute at most.
        gc.collect()
        try:
            dist.monitored_barrier(timeout=timedelta(seconds=60))
        except Exception:  # noqa: BLE001 - a peer gone already: nothing left to wait for
            pass
        dist.destroy_process_group()
    _owned["group"] = False


@contextlib.contextmanager
def session(device: str | torch.device | None = "auto") -> Iterator[bool]:
    """`setup` for the duration of a block (a command); yields whether the run is distributed."""
    made = not active() and launched()
    try:
        yield setup(device)
    finally:
        if made:
            teardown()


def local_device(device: torch.device) -> torch.device:
    """`device` with this rank's GPU index filled in (DDP needs it); other devices unchanged."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def collective() -> bool:
    """True when the other ranks take part in collectives here (distributed, not inside on_main)."""
    return active() and not _solo()


def barrier() -> None:
    """Wait for every rank (through gloo: no GPU stream involved)."""
    if collective():
        gather(None)


def broadcast(obj: T, src: int = 0) -> T:
    """Rank `src`'s `obj` on every rank."""
    if not collective():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not collective():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the ranks, in place (and returned)."""
    if collective():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def portable_error(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling (to reach the other ranks), else a RuntimeError saying it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def raise_shared(errors: list) -> None:
    """Raise the first error of `errors` (one entry per rank, None where it went well) on every rank;
    an error that came from another rank is marked so that only its own rank reports it."""
    for r, err in enumerate(errors):
        if err is not None:
            if r != rank():
                err.mmlib_other_rank = r
            raise err


def on_main(fn: Callable[..., T], *args, **kwargs) -> T:
    """`fn(*args, **kwargs)` run on rank 0 alone; every rank gets its result, or raises its error.
    Inside, the collectives are local (the other ranks wait here)."""
    if not collective():
        return fn(*args, **kwargs)
    result, error = _local(fn, *args, **kwargs) if is_main() else (None, None)
    result, error = broadcast((result, error))
    raise_shared([error])
    return result


def _local(fn: Callable[..., T], *args, **kwargs) -> tuple[T | None, BaseException | None]:
    """fn's (result, None) or (None, its error made portable), its collectives local."""
    _state.solo = True
    try:
        return fn(*args, **kwargs), None
    except Exception as exc:
        return None, portable_error(exc)
    finally:
        _state.solo = False


def main_first(fn: Callable[..., T], *args, **kwargs) -> T:
    """`fn` on rank 0, then on the others (to read what rank 0 made, e.g. a cache); any rank's
    error raised on every rank. Each rank returns its own result."""
    if not collective():
        return fn(*args, **kwargs)
    result, error = _local(fn, *args, **kwargs) if is_main() else (None, None)
    raise_shared([broadcast(error)])
    if not is_main():
        result, error = _local(fn, *args, **kwargs)
    raise_shared(gather(error))
    return result


__all__ = ["DEFAULT_TIMEOUT_MIN", "active", "all_reduce_sum", "barrier", "broadcast", "collective", "gather",
           "is_main", "launched", "local_device", "local_rank", "main_first", "on_main", "portable_error",
           "raise_shared", "rank", "session", "setup", "teardown", "timeout_minutes", "world_size"]
