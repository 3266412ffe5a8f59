"""What the study trains, as data: each model of the study (`ModelSpec`) and the evaluations it owes
(`Job`, `Evaluation`).

A `ModelSpec` is one trained model of the study (a single-database, joint, leave-one-out or
fine-tuned net). Its identity is a hash of what decides its weights: the spec itself, the
preset's training settings, the identity of the data it learns from and (for fine-tuning) the
identity of the model it starts from. Nothing else: the sliding-window overlap, the number of
processes or progress bars never retrain a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from mmlib.data.identity import short_hash
from mmlib.data.manifest import TRAINING_DATABASES
from mmlib.presets import Preset

#: Bump when the training code changes the weights a spec gives (its models are then retrained).
TRAINING_VERSION = 3  # 3: validation cases held out of training, non-finite watch


@dataclass(frozen=True)
class Architecture:
    """An architecture of the paper: mmlib's key (models.build_model), the paper's name, and its
    training cost relative to Multi-Unet (to start the longest jobs first)."""

    key: str
    paper_name: str
    relative_cost: float


#: The architectures of Table 2 in the paper's column order (costs: benchmarks/bench_train_step.py).
ARCHITECTURES: dict[str, Architecture] = {a.key: a for a in (
    Architecture("lfunet", "LFUnet", 3.0),
    Architecture("mafunet", "MAFUnet", 1.5),
    Architecture("multiunet", "Multi-Unet", 1.0),
)}
#: Progressive nets (Appendix C) train a second column beside a frozen one.
PROGRESSIVE_COST = 2.0

#: Table 4's test modality sets on the evaluation-only databases (the paper's column order).
NEW_MODALITY_SETS: dict[str, tuple[tuple[str, ...], ...]] = {
    "ISLES": (("T1",), ("T1", "T2"), ("FLAIR", "T1", "T2")),
    "TUMOR2": (("T1",),),
}
#: The paper's display names of the evaluation-only databases (Table 4's column heads).
DISPLAY_NAMES = {"ISLES": "ISLES", "TUMOR2": "Tumor 2"}

#: Table 6's limited-label training sets: 20 cases, 50 for TBI.
PAPER_LIMITED_LABELS = {"BRATS": 20, "ATLAS": 20, "MSSEG": 20, "TBI": 50, "WMH": 20}

#: Databases the paper calls small (fewer than 100 training cases: MSSEG 37, WMH 42), where F2
#: expects the joint model's gains to land.
SMALL_DATABASES = ("MSSEG", "WMH")


def single_test_modality(modalities) -> str:
    """Table 5's 'FLAIR or T1' rule: FLAIR if the database has it, else T1."""
    return "FLAIR" if "FLAIR" in modalities else "T1"


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study.

    arch: 'multiunet' | 'lfunet' | 'mafunet'; databases: what it trains on; drop: random modality
    drop; seed: owns its initial weights, data order, drop and dropout. start: 'scratch', or
    'finetune' / 'progressive' from `parent` (Table 6, Appendices B and C). labels: 'all' or
    'limited' (then n_cases training cases). step_fraction: of the preset's steps.
    single_modality: its one database has one modality, so drop changes nothing and the drop
    and no-drop specs are one model. pool: the study's training databases when they are not the
    paper's five (a user without TBI: four); () = the paper's five, so that those models keep their
    identity. A joint model of another pool is its own model: the pool is part of its identity.
    """

    arch: str
    databases: tuple[str, ...]
    drop: bool
    seed: int = 0
    start: str = "scratch"
    parent: "ModelSpec | None" = None
    labels: str = "all"
    n_cases: int | None = None
    step_fraction: float = 1.0
    single_modality: bool = False
    pool: tuple[str, ...] = ()

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; known: {', '.join(ARCHITECTURES)}")
        if self.start not in ("scratch", "finetune", "progressive"):
            raise ValueError(f"start must be scratch, finetune or progressive, got {self.start!r}")
        if (self.start == "scratch") != (self.parent is None):
            raise ValueError("a fine-tuned or progressive model needs a parent; a scratch one has none")
        if self.labels not in ("all", "limited") or (self.labels == "limited") != (self.n_cases is not None):
            raise ValueError("labels='limited' needs n_cases, labels='all' takes every training case")
        object.__setattr__(self, "databases", tuple(self.databases))
        object.__setattr__(self, "pool", tuple(self.pool))

    @property
    def training_pool(self) -> tuple[str, ...]:
        """The training databases a joint or leave-one-out model is one of: the pool, or the paper's five."""
        return self.pool or TRAINING_DATABASES

    # -- what the model is ---------------------------------------------------------------------
    @property
    def trained(self) -> "ModelSpec":
        """The spec that is actually trained: drop is a no-op on a one-modality database."""
        return replace(self, drop=False) if self.single_modality and self.drop else self

    @property
    def training(self) -> str:
        """'SD' (one database), 'MD' (the five), 'LOO' (four of the five) or 'finetune'."""
        if self.start != "scratch":
            return "finetune"
        if set(self.databases) == set(self.training_pool):
            return "MD"
        return "SD" if len(self.databases) == 1 else "LOO"

    @property
    def held_out(self) -> str:
        """The database a leave-one-out model never saw, or a fine-tuned model's target."""
        if self.training == "LOO":
            return next(d for d in self.training_pool if d not in self.databases)
        return self.databases[0] if self.training == "finetune" else ""

    @property
    def net(self) -> str:
        """The network to build: the architecture, or 'progressive' (Appendix C)."""
        return "progressive" if self.start == "progressive" else self.arch

    @property
    def name(self) -> str:
        """A readable name; the seed and identity are in the model's folder name."""
        tag = "drop" if self.trained.drop else "nodrop"
        limited = f"-{self.n_cases}cases" if self.labels == "limited" else ""
        if self.training == "SD":
            return f"SD-{self.databases[0]}-{self.arch}-{tag}{limited}"
        if self.training == "MD":  # a pool that is not the paper's five is named: its own model
            return f"MD-{'+'.join(self.pool) + '-' if self.pool else ''}{self.arch}-{tag}"
        if self.training == "LOO":
            return f"LOO-{self.held_out}-{self.arch}-{tag}"
        return f"FT-{self.databases[0]}-{self.start}-{self.labels}"

    def cost(self, steps: int) -> float:
        """Relative training cost, to start the longest jobs first."""
        factor = PROGRESSIVE_COST if self.start == "progressive" else ARCHITECTURES[self.arch].relative_cost
        return steps * len(self.databases) * factor

    # -- identity ------------------------------------------------------------------------------
    def identity(self, preset: Preset, data_ids: dict[str, str]) -> str:
        """Hash of what decides the trained weights: the spec, the preset's training settings, the
        identity of each training database's data, and the parent's identity."""
        spec = self.trained
        content = {k: v for k, v in asdict(spec).items() if k not in ("parent", "single_modality")}
        if not spec.pool:
            del content["pool"]  # the paper's five: identities as before pools existed
        content.update(training=preset.training_settings(), version=TRAINING_VERSION,
                       data={d: data_ids[d] for d in spec.databases},
                       parent=None if spec.parent is None else spec.parent.identity(preset, data_ids))
        return short_hash(content)

    def folder_name(self, preset: Preset, data_ids: dict[str, str]) -> str:
        return f"{self.trained.name}-s{self.seed}-{self.identity(preset, data_ids)}"

    def row_columns(self) -> dict[str, Any]:
        """The columns every result row of this model carries (docs/RESULTS_SCHEMA.md)."""
        return {"model": self.trained.name, "arch": self.net, "training": self.training,
                "train_databases": "+".join(self.databases), "drop": self.trained.drop,
                "single_modality": self.single_modality, "seed": self.seed,
                "method": self.start if self.training == "finetune" else "", "labels": self.labels,
                "held_out": self.held_out, "n_train_cases": self.n_cases if self.n_cases else ""}


# -- the study's models --------------------------------------------------------------------------
def sd_spec(database: str, arch: str, drop: bool, seed: int, n_modalities: int, step_fraction: float,
            n_cases: int | None = None) -> ModelSpec:
    """A single-database model (Tables 2-3); with n_cases, the limited-label scratch model of Table 6."""
    return ModelSpec(arch, (database,), drop, seed, labels="limited" if n_cases else "all", n_cases=n_cases,
                     step_fraction=step_fraction, single_modality=n_modalities == 1)


def pool_order(databases) -> tuple[str, ...]:
    """Training databases in the paper's order (Table 1), then a user's own by name."""
    own = sorted(set(databases) - set(TRAINING_DATABASES))
    return tuple(d for d in TRAINING_DATABASES if d in databases) + tuple(own)


def joint_spec(arch: str, drop: bool, seed: int, databases=None, pool=TRAINING_DATABASES) -> ModelSpec:
    """A model of several training databases at once: MD (all of the `pool`, by default the paper's
    five) or leave-one-out (all but one); `databases` None: the whole pool."""
    pool = pool_order(pool)
    own = () if set(pool) == set(TRAINING_DATABASES) else pool
    return ModelSpec(arch, pool_order(pool if databases is None else databases), drop, seed, pool=own)


def loo_spec(held_out: str, seed: int, pool=TRAINING_DATABASES) -> ModelSpec:
    """Tables 5-6: Multi-Unet with drop on the training databases of `pool` other than `held_out`."""
    return joint_spec("multiunet", True, seed, [d for d in pool if d != held_out], pool)


def finetune_spec(parent: ModelSpec, target: str, start: str, n_cases: int | None, step_fraction: float
                  ) -> ModelSpec:
    """Table 6: `parent` fine-tuned (or a progressive net on it) on `target`, with drop."""
    return ModelSpec("multiunet", (target,), True, parent.seed, start=start, parent=parent,
                     labels="limited" if n_cases else "all", n_cases=n_cases, step_fraction=step_fraction)


def limited_label_count(database: str, n_train: int, paper_train: int) -> int:
    """Table 6's limited set (20 cases, 50 for TBI), scaled to a database with fewer training
    cases than the paper's (a synthetic twin); at least 2."""
    paper = PAPER_LIMITED_LABELS.get(database, 20)
    if n_train >= paper_train:
        return paper
    return max(2, min(n_train, round(paper * n_train / paper_train)))



@dataclass(frozen=True)
class Evaluation:
    """What to evaluate a model on: a database's test cases, given every modality combination,
    the listed subsets (() = each case's own modalities), or all of its modalities."""

    database: str
    subsets: tuple[tuple[str, ...], ...] = ((),)
    combinations: bool = False


@dataclass(frozen=True)
class Job:
    """A model of the study and the evaluations it owes."""

    spec: ModelSpec
    evaluations: tuple[Evaluation, ...] = ()


def spec_from_dict(raw: dict) -> ModelSpec:
    """The ModelSpec that `dataclasses.asdict` wrote to a model's spec.json."""
    raw = dict(raw)
    raw["databases"] = tuple(raw["databases"])
    raw["pool"] = tuple(raw.get("pool", ()))
    raw["parent"] = None if raw.get("parent") is None else spec_from_dict(raw["parent"])
    return ModelSpec(**raw)


def with_parents(jobs: list[Job]) -> list[Job]:
    """`jobs`, de-duplicated, with a training job for each parent model not among them."""
    out, seen = [], set()

    def add(job: Job):
        if job.spec.parent is not None:
            add(Job(job.spec.parent))
        key = (job.spec, job.evaluations)
        if key not in seen:
            seen.add(key)
            out.append(job)

    for job in jobs:
        add(job)
    return out


__all__ = ["TRAINING_VERSION", "Architecture", "ARCHITECTURES", "NEW_MODALITY_SETS", "DISPLAY_NAMES",
           "PAPER_LIMITED_LABELS", "SMALL_DATABASES", "single_test_modality", "short_hash", "ModelSpec",
           "sd_spec", "pool_order", "joint_spec", "loo_spec", "finetune_spec", "limited_label_count", "Evaluation", "Job",
           "spec_from_dict", "with_parents"]
