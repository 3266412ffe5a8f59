"""Joint training batches: the channel union, random modality drop, crops from every database.

PAPER.md, Methods: the input has one channel per modality of the union of the training
databases (zeros where a database lacks one); each training sample loses a random number
n ~ U{0, ..., Ci-1} of its Ci modalities; every step draws a batch from *every* database,
smaller databases over-sampled so that an epoch is the largest database.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from mmlib.data.cases import IGNORE, PreparedCase
from mmlib.data.modalities import MODALITIES, canonical_modality, sort_modalities
from mmlib.errors import MMLibError, ModalityError


@dataclass(frozen=True)
class ChannelMap:
    """The network's input channels: the union of the training databases' modalities in mmlib's
    order, plus `assignments` (new modality -> channel index) for fine-tuning (Appendix B)."""

    modalities: tuple[str, ...]
    assignments: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        mods = sort_modalities(self.modalities)
        if not mods or len(mods) != len(self.modalities):
            raise ModalityError(f"channel modalities must be distinct and non-empty, got {self.modalities!r}")
        assigned = {}
        for mod, ch in dict(self.assignments).items():
            canon = canonical_modality(mod)
            if canon in mods:
                raise ModalityError(f"{canon} already has channel {mods.index(canon)}; it cannot be reassigned")
            if not isinstance(ch, (int, np.integer)) or not 0 <= int(ch) < len(mods):
                raise ModalityError(f"assignment {canon} -> {ch!r}: channel must be in 0..{len(mods) - 1}")
            assigned[canon] = int(ch)
        object.__setattr__(self, "modalities", mods)
        object.__setattr__(self, "assignments", assigned)

    @classmethod
    def from_databases(cls, databases) -> "ChannelMap":
        """The union of the modalities of manifests (or of modality lists), in mmlib's order."""
        union = set()
        for db in databases:
            union.update(canonical_modality(m) for m in getattr(db, "modalities", db))
        return cls(tuple(m for m in MODALITIES if m in union))

    @property
    def n_channels(self) -> int:
        return len(self.modalities)

    def __len__(self) -> int:
        return len(self.modalities)

    def index(self, modality: str) -> int:
        """The channel of `modality` (its own, or the one `assignments` gives it)."""
        mod = canonical_modality(modality)
        if mod in self.modalities:
            return self.modalities.index(mod)
        if mod in self.assignments:
            return self.assignments[mod]
        raise ModalityError(f"modality {mod} has no channel in {list(self.modalities)}; "
                            f"assign it to a free channel (fine-tuning, Appendix B)")

    def with_assignments(self, assignments: dict[str, int]) -> "ChannelMap":
        """A copy with more new-modality -> channel assignments."""
        return ChannelMap(self.modalities, {**self.assignments, **assignments})

    def to_dict(self) -> dict:
        """Plain data for a checkpoint: {'modalities': [...], 'assignments': {...}}."""
        return {"modalities": list(self.modalities), "assignments": dict(self.assignments)}

    @classmethod
    def from_dict(cls, d: dict) -> "ChannelMap":
        """The map `to_dict` wrote (validated again)."""
        if not isinstance(d, dict) or "modalities" not in d:
            raise MMLibError(f"a channel map must be a mapping with 'modalities', got {d!r}")
        return cls(tuple(d["modalities"]), dict(d.get("assignments") or {}))

    def channels(self, modalities) -> list[int]:
        """Channel index of each modality; two modalities sharing a channel raise ModalityError."""
        chans = [self.index(m) for m in modalities]
        if len(set(chans)) != len(chans):
            raise ModalityError(f"modalities {list(modalities)} would share a channel of {list(self.modalities)}")
        return chans

    def assemble(self, case: PreparedCase, subset=None) -> np.ndarray:
        """The case's image (M, X, Y, Z) placed in the channels -> (C, X, Y, Z), zeros elsewhere;
        only the modalities in `subset` (all of them if None)."""
        keep = _subset_mask(case, subset)
        given = [m for m, k in zip(case.modalities, keep) if k]
        out = np.zeros((self.n_channels, *case.image.shape[1:]), np.float32)
        # Only the modalities given need a channel: a T1-only model can still read T1 of a case
        # that also has FLAIR.
        for i, ch in zip(np.flatnonzero(keep), self.channels(given)):
            out[ch] = case.image[i]
        return out


def _subset_mask(case: PreparedCase, subset) -> np.ndarray:
    if subset is None:
        return np.ones(len(case.modalities), bool)
    wanted = {canonical_modality(m) for m in subset}
    unknown = wanted - set(case.modalities)
    if unknown:
        raise ModalityError(f"{case.database} case {case.case_id} has no {', '.join(sorted(unknown))}")
    return np.array([m in wanted for m in case.modalities])


def modality_drop(n_modalities: int, rng: np.random.Generator) -> np.ndarray:
    """Keep-mask (n_modalities,) bool: n ~ U{0, ..., n_modalities-1} random modalities dropped.
    At least one always stays; a one-modality database is never dropped."""
    if n_modalities < 1:
        raise MMLibError(f"modality_drop needs at least one modality, got {n_modalities}")
    keep = np.ones(n_modalities, bool)
    n = int(rng.integers(0, n_modalities))
    keep[rng.choice(n_modalities, size=n, replace=False)] = False
    return keep


def all_subsets(modalities) -> list[tuple[str, ...]]:
    """Every non-empty combination of `modalities` (2^C - 1), by size then mmlib's order."""
    mods = sort_modalities(modalities)
    return [c for r in range(1, len(mods) + 1) for c in itertools.combinations(mods, r)]


def _crop_start(size: int, crop: int, centre: int | None, rng: np.random.Generator) -> int:
    """Start of a crop along one axis; negative or past the end = zero padding."""
    lo, hi = min(0, size - crop), max(0, size - crop)
    if centre is None:
        return int(rng.integers(lo, hi + 1))
    return int(np.clip(centre - crop // 2, lo, hi))


def _take(arr: np.ndarray, starts, crop: int, fill=0) -> np.ndarray:
    """arr[..., s:s+crop, ...] over the last three axes, padded with `fill` outside the volume."""
    out = np.full((*arr.shape[:-3], crop, crop, crop), fill, arr.dtype)
    src, dst = [], []
    for s, n in zip(starts, arr.shape[-3:]):
        a, b = max(s, 0), min(s + crop, n)
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[(..., *dst)] = arr[(..., *src)]
    return out


class JointBatches:
    """Infinite iterator of joint batches: `batch_per_database` crop^3 samples from every database.

    Each database cycles through its own shuffled order (reshuffled when exhausted), so small
    databases are over-sampled; `epoch_length()` steps cover the largest database once.
    Yields x (B, C, c, c, c) float32, y and valid (B, 1, c, c, c) float32, present (B, C) bool,
    database list[str], case_id list[str]. Deterministic for a seed; `state_dict()` resumes.
    """

    def __init__(self, train_sets: dict[str, list[PreparedCase]], channel_map: ChannelMap, crop: int,
                 batch_per_database: int, drop: bool, rotate_p: float, lesion_crop_p: float, seed: int,
                 rotate_planes=((0, 1), (0, 2), (1, 2))):
        empty = [name for name, cases in train_sets.items() if not cases]
        if not train_sets or empty:
            raise MMLibError(f"every training database needs cases; empty: {empty or 'all'}")
        if crop < 1 or batch_per_database < 1:
            raise MMLibError(f"crop and batch_per_database must be positive, got {crop}, {batch_per_database}")
        self.sets = {name: list(cases) for name, cases in train_sets.items()}
        for cases in self.sets.values():
            for case in cases:
                channel_map.channels(case.modalities)  # fail now, not mid-training
        self.channel_map = channel_map
        self.crop, self.batch = int(crop), int(batch_per_database)
        self.drop, self.rotate_p, self.lesion_crop_p = bool(drop), float(rotate_p), float(lesion_crop_p)
        self.rotate_planes = tuple(tuple(int(a) for a in plane) for plane in rotate_planes)
        self.rng = np.random.default_rng(seed)
        self.order = {name: [] for name in self.sets}
        self.pos = {name: 0 for name in self.sets}
        self.step = 0
        self._lesions: dict[tuple[str, int], np.ndarray] = {}

    def epoch_length(self) -> int:
        """Steps per epoch: the largest database seen once."""
        return math.ceil(max(len(c) for c in self.sets.values()) / self.batch)

    def __iter__(self):
        return self

    def _next_index(self, name: str) -> int:
        if self.pos[name] >= len(self.order[name]):
            self.order[name] = [int(i) for i in self.rng.permutation(len(self.sets[name]))]
            self.pos[name] = 0
        self.pos[name] += 1
        return self.order[name][self.pos[name] - 1]

    def _lesion_voxels(self, name: str, idx: int) -> np.ndarray:
        key = (name, idx)
        if key not in self._lesions:
            self._lesions[key] = np.flatnonzero(self.sets[name][idx].label == 1)
        return self._lesions[key]

    def _sample(self, name: str, idx: int):
        case, rng, c = self.sets[name][idx], self.rng, self.crop
        centre = [None] * 3
        lesions = self._lesion_voxels(name, idx)
        if rng.random() < self.lesion_crop_p and lesions.size:
            centre = np.unravel_index(int(lesions[rng.integers(lesions.size)]), case.shape)
        starts = [_crop_start(n, c, ctr, rng) for n, ctr in zip(case.shape, centre)]
        image, label = _take(case.image, starts, c), _take(case.label, starts, c)
        keep = modality_drop(len(case.modalities), rng) if self.drop else np.ones(len(case.modalities), bool)
        x = np.zeros((self.channel_map.n_channels, c, c, c), np.float32)
        present = np.zeros(self.channel_map.n_channels, bool)
        for i, ch in enumerate(self.channel_map.channels(case.modalities)):
            if keep[i]:
                x[ch], present[ch] = image[i], True
        if rng.random() < self.rotate_p:
            a, b = self.rotate_planes[int(rng.integers(len(self.rotate_planes)))]
            k = int(rng.integers(1, 4))
            x, label = np.rot90(x, k, axes=(a + 1, b + 1)), np.rot90(label, k, axes=(a, b))
        return x, label, present, case.case_id

    def __next__(self) -> dict:
        xs, labels, present, dbs, ids = [], [], [], [], []
        for name in self.sets:
            for _ in range(self.batch):
                x, label, pres, cid = self._sample(name, self._next_index(name))
                xs.append(x), labels.append(label), present.append(pres), dbs.append(name), ids.append(cid)
        self.step += 1
        label = np.stack(labels)[:, None]
        return {"x": torch.from_numpy(np.ascontiguousarray(np.stack(xs))),
                "y": torch.from_numpy((label == 1).astype(np.float32)),
                "valid": torch.from_numpy((label != IGNORE).astype(np.float32)),
                "present": torch.from_numpy(np.stack(present)),
                "database": dbs, "case_id": ids}

    def state_dict(self) -> dict:
        """RNG state, cycling orders and positions: loading it resumes the exact sequence."""
        return {"rng": copy.deepcopy(self.rng.bit_generator.state), "order": copy.deepcopy(self.order),
                "pos": dict(self.pos), "step": self.step,
                "sizes": {name: len(cases) for name, cases in self.sets.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state_dict()` was taken (same databases and sizes required)."""
        sizes = {name: len(cases) for name, cases in self.sets.items()}
        if state.get("sizes") != sizes:
            raise MMLibError(f"batch state is for databases {state.get('sizes')}, not {sizes}")
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])
        self.order = {k: list(v) for k, v in state["order"].items()}
        self.pos = dict(state["pos"])
        self.step = int(state["step"])
