"""Joint batches drawn on the training device from volumes uploaded once.

The volumes live on the device in half precision (labels uint8); crops, rotations, modality drop
and zero fill are tensor ops there, following JointBatches' plans (the same samples). Volumes over
the memory budget stay in host memory (pinned for a GPU); a thread assembles the next step ahead.
It reads a JointBatches only through its methods, and never imports mmlib.data.loaders:
`JointBatches.to(device)` builds one.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from mmlib.data.cases import IGNORE

#: Share of the free GPU memory the volumes may take by default (the rest is for training).
GPU_BUDGET_SHARE = 0.5


def _overlap(starts, crop: int, shape) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """(source, destination) slices of a crop starting at `starts`; None if it misses the volume."""
    src, dst = [], []
    for s, n in zip(starts, shape):
        a, b = max(s, 0), min(s + crop, n)
        if a >= b:
            return None
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    return tuple(src), tuple(dst)


def default_budget(device: torch.device) -> float:
    """Bytes the volumes may take on `device`: a share of the free GPU memory; no limit on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return GPU_BUDGET_SHARE * free
    return float("inf")


class DeviceBatches:
    """The batches of `batches` (a JointBatches), built with tensor ops on `device`: the same keys
    and samples, images through `storage_dtype` (float16 keeps ~3 significant digits of z-scores),
    labels exact. `memory_budget` (bytes; default: half the free GPU memory) decides whether the
    volumes live on the device; if not, batches are assembled in host memory a step ahead."""

    def __init__(self, batches, device, storage_dtype: torch.dtype = torch.float16,
                 memory_budget: float | None = None, prefetch: bool = True):
        self.source = batches
        self.device = torch.device(device)
        self.storage_dtype = storage_dtype
        cases = [c for cs in batches.sets.values() for c in cs]
        item = torch.empty((), dtype=storage_dtype).element_size()
        self.nbytes = sum(c.image.size * item + c.label.size for c in cases)
        budget = default_budget(self.device) if memory_budget is None else memory_budget
        self.resident = self.nbytes <= budget
        self.home = self.device if self.resident else torch.device("cpu")
        self._pin = not self.resident and self.device.type == "cuda"

        def upload(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
            return t.pin_memory() if self._pin else t.to(self.home)

        self.images = {name: [upload(c.image, storage_dtype) for c in cs] for name, cs in batches.sets.items()}
        self.labels = {name: [upload(c.label, torch.uint8) for c in cs] for name, cs in batches.sets.items()}
        self._channels = {name: [batches.channel_map.channels(c.modalities) for c in cs]
                          for name, cs in batches.sets.items()}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mmlib-batches") \
            if prefetch and not self.resident else None
        self._pending = None  # ((step, rank, world_size), future of the host-side batch)

    # -- what JointBatches offers, delegated ------------------------------------------------
    @property
    def global_batch(self) -> int:
        return self.source.global_batch

    def epoch_length(self) -> int:
        return self.source.epoch_length()

    def plan(self, step: int, rank: int = 0, world_size: int = 1) -> list:
        return self.source.plan(step, rank, world_size)

    def state_dict(self) -> dict:
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        out = self.batch(self.source.step)
        self.source.step += 1
        return out

    # -- drawing ------------------------------------------------------------------------------
    def _assemble(self, step: int, rank: int, world_size: int) -> dict:
        """The batch's tensors on `self.home`: x, label (B, c, c, c) uint8, present."""
        plans = self.source.plan(step, rank, world_size)
        n, c, n_ch = len(plans), self.source.crop, self.source.channel_map.n_channels
        x = torch.zeros((n, n_ch, c, c, c), dtype=torch.float32, device=self.home, pin_memory=self._pin)
        label = torch.zeros((n, c, c, c), dtype=torch.uint8, device=self.home, pin_memory=self._pin)
        present = np.zeros((n, n_ch), bool)
        for i, p in enumerate(plans):
            image, lab = self.images[p.database][p.case], self.labels[p.database][p.case]
            where = _overlap(p.starts, c, lab.shape)
            for m, ch in enumerate(self._channels[p.database][p.case]):
                if p.keep[m]:
                    present[i, ch] = True
                    if where is not None:
                        # One copy per kept modality: the crop, its zero padding and the
                        # half -> float conversion in one kernel, no index tensors to upload.
                        x[(i, ch, *where[1])].copy_(image[(m, *where[0])])
            if where is not None:
                label[(i, *where[1])].copy_(lab[where[0]])
            if p.k:
                a, b = p.plane
                x[i].copy_(torch.rot90(x[i], p.k, dims=(a + 1, b + 1)))
                label[i].copy_(torch.rot90(label[i], p.k, dims=(a, b)))
        present_t = torch.from_numpy(present)
        if self.device.type == "cuda":
            present_t = present_t.pin_memory()  # so its copy does not wait for the device
        return {"x": x, "label": label, "present": present_t, **self.source.describe(step, plans)}

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> dict:
        """Rank `rank`'s share of global batch `step` on the device (see JointBatches.batch)."""
        key = (step, rank, world_size)
        if self._pool is None:
            out = self._assemble(*key)
        else:
            pending, self._pending = self._pending, None
            out = pending[1].result() if pending is not None else None  # never two at once
            if pending is None or pending[0] != key:
                out = self._assemble(*key)
            self._pending = ((step + 1, rank, world_size),
                             self._pool.submit(self._assemble, step + 1, rank, world_size))
        label = out.pop("label").to(self.device, non_blocking=True)
        return {**out,
                "x": out["x"].to(self.device, non_blocking=True),
                "present": out["present"].to(self.device, non_blocking=True),
                "y": (label == 1).float()[:, None],
                "valid": (label != IGNORE).float()[:, None]}

    def close(self) -> None:
        """Stop the prefetch thread (its pending batch is dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool, self._pending = None, None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
