"""Joint training batches: the channel union, random modality drop, crops from every database.

The paper, Methods: the input has one channel per modality of the union of the training
databases (zeros where a database lacks one); each training sample loses a random number
n ~ U{0, ..., Ci-1} of its Ci modalities; every step draws a batch from *every* database,
smaller databases over-sampled so that an epoch is the largest database.
"""

from __future__ import annotations

import itertools
import math
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from mmlib.data.cases import IGNORE, PreparedCase
from mmlib.data.device_batches import DeviceBatches
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


#: The three planes of the default 90-degree rotations; the authors rotate in (0, 2) only.
ALL_PLANES = ((0, 1), (0, 2), (1, 2))

# Philox counter words that keep a sample's stream apart from a database's epoch permutation.
_SAMPLE, _PERMUTATION = 0, 1


@dataclass(frozen=True)
class SamplePlan:
    """Everything random about one sample of a batch, drawn before any voxel is touched.

    index: position in the global batch; case: index into its database's case list;
    starts: crop start per axis (negative or past the end = zero padding); keep: keep-mask over
    the case's modalities; plane, k: rot90 of the crop by k quarter turns in `plane` (k = 0: none).
    """

    database: str
    index: int
    case: int
    starts: tuple[int, int, int]
    keep: tuple[bool, ...]
    plane: tuple[int, int]
    k: int


class JointBatches:
    """Joint batches: `batch_per_database` crop^3 samples from every database per step.

    Batch `step` is a pure function of (seed, step, database, sample) through a counter-based
    generator (Philox); each database cycles through its own permutation per epoch, so small ones
    are over-sampled. `batch(step, rank, world_size)` is one rank's share; iteration runs 0, 1, ...
    """

    def __init__(self, train_sets: dict[str, list[PreparedCase]], channel_map: ChannelMap, crop: int,
                 batch_per_database: int, drop: bool, rotate_p: float, lesion_crop_p: float, seed: int,
                 rotate_planes=ALL_PLANES):
        empty = [name for name, cases in train_sets.items() if not cases]
        if not train_sets or empty:
            raise MMLibError(f"every training database needs cases; empty: {empty or 'all'}")
        if crop < 1 or batch_per_database < 1:
            raise MMLibError(f"crop and batch_per_database must be positive, got {crop}, {batch_per_database}")
        planes = tuple(tuple(int(a) for a in p) for p in rotate_planes)
        if not planes or any(len(p) != 2 or p[0] == p[1] or not set(p) <= {0, 1, 2} for p in planes):
            raise MMLibError(f"rotate_planes must be pairs of distinct axes in 0..2, got {rotate_planes!r}")
        self.sets = {name: list(cases) for name, cases in train_sets.items()}
        for cases in self.sets.values():
            for case in cases:
                channel_map.channels(case.modalities)  # fail now, not mid-training
        self.channel_map = channel_map
        self.crop, self.batch_per_database = int(crop), int(batch_per_database)
        self.drop, self.rotate_p, self.lesion_crop_p = bool(drop), float(rotate_p), float(lesion_crop_p)
        self.rotate_planes = planes
        self.seed = int(seed)
        self._key = np.random.SeedSequence(self.seed).generate_state(2, np.uint64)
        # A database is named in the counter by a hash of its name, not its position, so adding
        # a database does not change the others' samples.
        self._db_word = {name: zlib.crc32(name.encode()) for name in self.sets}
        self._perms: dict[tuple[str, int], np.ndarray] = {}
        self._lesions: dict[tuple[str, int], np.ndarray] = {}
        self.step = 0

    @property
    def global_batch(self) -> int:
        """Samples in one global batch: batch_per_database x databases."""
        return self.batch_per_database * len(self.sets)

    def epoch_length(self) -> int:
        """Steps per epoch: the largest database seen once."""
        return math.ceil(max(len(c) for c in self.sets.values()) / self.batch_per_database)

    def _rng(self, name: str, a: int, tag: int) -> np.random.Generator:
        return np.random.Generator(np.random.Philox(key=self._key, counter=[0, a, self._db_word[name], tag]))

    def case_at(self, name: str, position: int) -> int:
        """Index of the case at `position` of database `name`'s endless cycle (one permutation per epoch)."""
        n = len(self.sets[name])
        epoch = position // n
        # Caches are read into locals: a prefetch thread may be clearing or filling them.
        perm = self._perms.get((name, epoch))
        if perm is None:
            if len(self._perms) > 8 * len(self.sets):  # only recent epochs are asked for again
                self._perms.clear()
            perm = self._perms[(name, epoch)] = self._rng(name, epoch, _PERMUTATION).permutation(n)
        return int(perm[position % n])

    def _lesion_voxels(self, name: str, idx: int) -> np.ndarray:
        voxels = self._lesions.get((name, idx))
        if voxels is None:
            voxels = self._lesions[(name, idx)] = np.flatnonzero(self.sets[name][idx].label == 1)
        return voxels

    def _plan_one(self, name: str, index: int, position: int) -> SamplePlan:
        idx = self.case_at(name, position)
        case, c = self.sets[name][idx], self.crop
        rng = self._rng(name, position, _SAMPLE)
        centre = [None] * 3
        lesions = self._lesion_voxels(name, idx)
        if rng.random() < self.lesion_crop_p and lesions.size:
            centre = np.unravel_index(int(lesions[rng.integers(lesions.size)]), case.shape)
        starts = tuple(_crop_start(n, c, ctr, rng) for n, ctr in zip(case.shape, centre))
        n_mod = len(case.modalities)
        keep = modality_drop(n_mod, rng) if self.drop else np.ones(n_mod, bool)
        plane, k = self.rotate_planes[0], 0
        if rng.random() < self.rotate_p:
            plane = self.rotate_planes[int(rng.integers(len(self.rotate_planes)))]
            k = int(rng.integers(1, 4))
        return SamplePlan(name, index, idx, starts, tuple(bool(v) for v in keep), plane, k)

    def plan(self, step: int, rank: int = 0, world_size: int = 1) -> list[SamplePlan]:
        """The samples of rank `rank`'s share of global batch `step`: positions i % world_size == rank
        of the global batch (every database's samples in turn, in the order of `train_sets`)."""
        if step < 0 or world_size < 1 or not 0 <= rank < world_size:
            raise MMLibError(f"need step >= 0 and 0 <= rank < world_size, got {step}, {rank}, {world_size}")
        plans = []
        for d, name in enumerate(self.sets):
            for j in range(self.batch_per_database):
                index = d * self.batch_per_database + j
                if index % world_size == rank:
                    plans.append(self._plan_one(name, index, step * self.batch_per_database + j))
        return plans

    def _draw(self, p: SamplePlan):
        """(x (C, c, c, c) float32, label (c, c, c) uint8, present (C,) bool) of a plan, in numpy."""
        case, c = self.sets[p.database][p.case], self.crop
        image, label = _take(case.image, p.starts, c), _take(case.label, p.starts, c)
        x = np.zeros((self.channel_map.n_channels, c, c, c), np.float32)
        present = np.zeros(self.channel_map.n_channels, bool)
        for i, ch in enumerate(self.channel_map.channels(case.modalities)):
            if p.keep[i]:
                x[ch], present[ch] = image[i], True
        if p.k:
            a, b = p.plane
            x, label = np.rot90(x, p.k, axes=(a + 1, b + 1)), np.rot90(label, p.k, axes=(a, b))
        return x, label, present

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> dict:
        """Rank `rank`'s share of global batch `step`: x (B, C, c, c, c) float32, y and valid
        (B, 1, c, c, c) float32, present (B, C) bool, and the keys of `describe`."""
        plans = self.plan(step, rank, world_size)
        xs, labels, present = zip(*(self._draw(p) for p in plans)) if plans else ((), (), ())
        c, n_ch = self.crop, self.channel_map.n_channels
        x = np.stack(xs) if plans else np.zeros((0, n_ch, c, c, c), np.float32)
        label = (np.stack(labels) if plans else np.zeros((0, c, c, c), np.uint8))[:, None]
        return {"x": torch.from_numpy(np.ascontiguousarray(x)),
                "y": torch.from_numpy((label == 1).astype(np.float32)),
                "valid": torch.from_numpy((label != IGNORE).astype(np.float32)),
                "present": torch.from_numpy(np.stack(present) if plans else np.zeros((0, n_ch), bool)),
                **self.describe(step, plans)}

    def describe(self, step: int, plans: list[SamplePlan]) -> dict:
        """The non-tensor keys of a batch: database, case_id, index, global_batch, step."""
        return {"database": [p.database for p in plans],
                "case_id": [self.sets[p.database][p.case].case_id for p in plans],
                "index": [p.index for p in plans], "global_batch": self.global_batch, "step": int(step)}

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        out = self.batch(self.step)
        self.step += 1
        return out

    def state_dict(self) -> dict:
        """The next step to draw (every batch is a function of the seed and its step)."""
        return {"step": self.step, "seed": self.seed,
                "sizes": {name: len(cases) for name, cases in self.sets.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Continue at the step `state_dict()` recorded (same databases and sizes required)."""
        sizes = {name: len(cases) for name, cases in self.sets.items()}
        if state.get("sizes") != sizes:
            raise MMLibError(f"batch state is for databases {state.get('sizes')}, not {sizes}")
        self.step = int(state["step"])

    def to(self, device, **kwargs):
        """These batches drawn on `device` from volumes uploaded once (see DeviceBatches)."""
        return DeviceBatches(self, device, **kwargs)
