"""The study's protocol as data: which models it trains, what each one is, and how it departs from
the paper's protocol.

A `ModelSpec` is one trained model of the study (a single-database, joint, leave-one-out or
fine-tuned net). Its identity is a hash of what decides its weights: the spec itself, the
preset's training settings, the identity of the data it learns from and (for fine-tuning) the
identity of the model it starts from. Nothing else: the sliding-window overlap, the number of
processes or progress bars never retrain a model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from mmlib.data.manifest import EVALUATION_DATABASES, TRAINING_DATABASES
from mmlib.engine.convergence import RULE as CONVERGENCE_RULE
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


def short_hash(obj: Any, n: int = 12) -> str:
    """A short stable hash of JSON-able data (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study.

    arch: 'multiunet' | 'lfunet' | 'mafunet'; databases: what it trains on; drop: random modality
    drop; seed: owns its initial weights, data order, drop and dropout. start: 'scratch', or
    'finetune' / 'progressive' from `parent` (Table 6, Appendices B and C). labels: 'all' or
    'limited' (then n_cases training cases). step_fraction: of the preset's steps.
    single_modality: its one database has one modality, so drop changes nothing and the drop
    and no-drop specs are one model.
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
        if set(self.databases) == set(TRAINING_DATABASES):
            return "MD"
        return "SD" if len(self.databases) == 1 else "LOO"

    @property
    def held_out(self) -> str:
        """The database a leave-one-out model never saw, or a fine-tuned model's target."""
        if self.training == "LOO":
            return next(d for d in TRAINING_DATABASES if d not in self.databases)
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
        if self.training == "MD":
            return f"MD-{self.arch}-{tag}"
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


def joint_spec(arch: str, drop: bool, seed: int, databases=TRAINING_DATABASES) -> ModelSpec:
    """A model of the training databases at once: MD (all five) or leave-one-out (four)."""
    return ModelSpec(arch, tuple(d for d in TRAINING_DATABASES if d in databases), drop, seed)


def loo_spec(held_out: str, seed: int) -> ModelSpec:
    """Tables 5-6: Multi-Unet with drop on the four training databases other than `held_out`."""
    return joint_spec("multiunet", True, seed, [d for d in TRAINING_DATABASES if d != held_out])


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


# -- schedules -----------------------------------------------------------------------------------
def batch_per_database(preset: Preset, n_databases: int) -> int:
    """Crops per database per step: the preset's, raised so a batch holds at least `min_batch`
    crops (on CPU a batch of one picks a slow convolution kernel)."""
    return max(preset.batch_per_database, -(-preset.min_batch // max(1, n_databases)))


@dataclass(frozen=True)
class Schedule:
    """How long a spec trains: steps, the step the learning rate drops at, crops per database."""

    steps: int
    lr_drop_step: int
    batch_per_database: int
    warmup_steps: int = 0

    @property
    def crops_per_database(self) -> int:
        return self.steps * self.batch_per_database


def schedule(spec: ModelSpec, preset: Preset, epoch_length: int | None = None) -> Schedule:
    """The spec's schedule at `preset`. Presets by epochs (steps 0) need the epoch length of the
    spec's training sets (the largest database seen once)."""
    if preset.steps:
        base = preset.steps
    elif epoch_length:
        base = preset.epochs * epoch_length
    else:
        raise ValueError(f"preset {preset.name} counts epochs: the epoch length of the training sets is needed")
    steps = max(1, round(base * spec.step_fraction))
    return Schedule(steps, max(1, round(steps * preset.lr_drop_fraction)),
                    batch_per_database(preset, len(spec.databases)), round(steps * preset.warmup_fraction))


# -- the paper's protocol and ours -----------------------------------------------------------------
#: The authors' schedule: 600 epochs of the largest training database (ATLAS, 459 cases) in
#: batches of 2 per database, i.e. 229 steps an epoch.
PAPER_STEPS = 600 * (459 // 2)
PAPER_CROPS_PER_DATABASE = PAPER_STEPS * 2


@dataclass(frozen=True)
class Deviation:
    """One aspect of the protocol: the paper's value, ours at a preset, and whether they differ."""

    aspect: str
    paper: str
    ours: str
    differs: bool = field(default=True)


def _fraction(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def deviations(preset: Preset, precision: str | None = None) -> list[Deviation]:
    """Every aspect of the training and evaluation protocol, the paper's value beside the preset's
    (the paper's: its Methods, Appendix A and the authors' published code). `precision`: what a
    run's models really trained in (mmlib.experiments.learning.run_precision), where known."""
    plan = preset.study
    joint = Schedule(preset.steps, 0, batch_per_database(preset, len(TRAINING_DATABASES))) if preset.steps else None
    sd_batch = batch_per_database(preset, 1)
    if preset.steps:
        sd_steps = max(1, round(preset.steps * plan.sd_fraction))
        ft_steps = max(1, round(preset.steps * plan.finetune_fraction))
        crops = (f"joint {joint.crops_per_database:,}; single-database {sd_steps * sd_batch:,}; "
                 f"fine-tuning {ft_steps * sd_batch:,}")
        steps = (f"{preset.steps:,} steps (single-database x{_fraction(plan.sd_fraction)}, fine-tuning "
                 f"x{_fraction(plan.finetune_fraction)}); {_lr_words(preset)}")
    else:  # by epochs: on the real databases, the paper's schedule
        crops = (f"{PAPER_CROPS_PER_DATABASE:,} (2 per step)" if (preset.epochs, preset.batch_per_database) == (600, 2)
                 else f"{preset.epochs} epochs x {preset.batch_per_database} per step")
        steps = (f"600 epochs ({PAPER_STEPS:,} steps); lr x0.1 after 0.25 of them"
                 if (preset.epochs, preset.lr_drop_fraction) == (600, 0.25) else
                 f"{preset.epochs} epochs of the largest database; lr x0.1 after {_fraction(preset.lr_drop_fraction)} of them")
    planes = ", ".join(f"({a}, {b})" for a, b in preset.rotate_planes)
    skipped = _skipped_models(preset)
    rows = [
        ("voxel spacing", "1 mm", f"{preset.spacing_mm:g} mm"),
        ("training crop and sliding window", "128³", f"{preset.crop}³"),
        ("crop sampling", "uniform random crops",
         "uniform random crops" if not preset.lesion_crop_p else
         f"{_fraction(preset.lesion_crop_p)} of crops centred on a lesion voxel, the rest uniform"),
        ("network width", "x1 (16-256 channels)", f"x{preset.width:g}"),
        ("schedule", f"600 epochs ({PAPER_STEPS:,} steps); lr x0.1 after 0.25 of them", steps),
        ("crops seen per database by one model", f"{PAPER_CROPS_PER_DATABASE:,} (2 per step)", crops),
        ("precision", "float32", precision or (
            "bf16 autocast, training and evaluation, where the network passes a bf16 self-check on the machine "
            "(else, and on a CPU without native bf16, float32; a non-finite value under bf16 goes back to the "
            "last finite state in float32)" if preset.amp else "float32")),
        ("rotation", "90° in plane (0, 2), p 0.1", f"90° in plane{'s' if len(preset.rotate_planes) > 1 else ''} "
                                                   f"{planes}, p {preset.rotate_p:g}"),
        ("seeds per model", "3", str(len(preset.seeds))),
        ("train/test split", "case files sorted by name, the last ones are test",
         "same, with the paper's counts (scaled to a twin's size)"),
        ("background outside the brain", "-mean/std (the whole volume z-scored with the brain's statistics)",
         "0 (z-scored inside the brain, zero outside)"),
        ("validation during training", "Dice on held-out cases, to pick the checkpoint",
         f"{preset.val_fraction:.0%} of each database's training cases held out (the last by name; "
         f"{preset.val_min_cases} to {preset.val_max_cases}), Dice at {preset.val_points} points of training; "
         f"{CONVERGENCE_RULE}"),
        ("model selection", "the checkpoint with the best Dice on the held-out cases",
         "the final weights (nothing is chosen on test cases)" if preset.model_selection == "final" else
         "the weights with the best validation Dice (held-out training cases, never test cases)"),
        ("Dice loss", "per sample (MONAI default)", "per batch" if preset.dice_batch else "per sample (MONAI default)"),
        ("loss", "Dice", "Dice" if preset.loss == "dice" else "Dice + binary cross-entropy (equal weights)"),
        ("models trained", "all of the paper's", "; ".join(skipped) if skipped else "all of the paper's"),
    ]
    return [Deviation(a, p, o, differs=p != o) for a, p, o in rows]


def _lr_words(preset: Preset) -> str:
    """The learning-rate schedule of a preset counted in steps, in words."""
    warm = f"linear warm-up over {_fraction(preset.warmup_fraction)} of them, then " if preset.warmup_fraction else ""
    if preset.lr_schedule == "cosine":
        return f"{warm}cosine decay of the lr to 0.01 x"
    return f"{warm}lr x0.1 after {_fraction(preset.lr_drop_fraction)} of them"


def _skipped_models(preset: Preset) -> list[str]:
    """What the preset's study plan leaves out of the paper's grid of models."""
    plan, full = preset.study, type(preset.study)()
    out = []
    for arch in full.fusion_archs:
        dbs = plan.fusion_databases if arch in plan.fusion_archs else ()
        if set(dbs) != set(full.fusion_databases):
            name = ARCHITECTURES[arch].paper_name
            out.append(f"single-database {name} on {', '.join(dbs)} only" if dbs else f"no single-database {name}")
    missing = [str(v) for v in full.joint_variants if v not in plan.joint_variants]
    if missing:
        out.append(f"no joint {', '.join(missing)}")
    if not plan.joint_all_combinations:
        out.append("joint models evaluated with all modalities only")
    if set(plan.loo_targets) != set(full.loo_targets):
        out.append(f"leave-one-out on {', '.join(plan.loo_targets) or 'none'} only")
    if plan.sd_fraction < 1 or plan.finetune_fraction < 1:
        out.append("shorter single-database and fine-tuning schedules (see schedule)")
    return out


def deviation_line(preset: Preset) -> str:
    """The deviations that differ, in one line (printed under every table)."""
    return f"Deviations from the paper at preset {preset.name}: " + "; ".join(
        f"{d.aspect}: {d.ours} (paper: {d.paper})" for d in deviations(preset) if d.differs) + "."


def deviations_markdown(presets: list[Preset]) -> str:
    """A Markdown table: one row per aspect, the paper's column, then one column per preset."""
    heads = ["aspect", "paper", *[p.name for p in presets]]
    table = [deviations(p) for p in presets]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for i, d in enumerate(table[0]):
        cells = [d.aspect, d.paper, *[(t[i].ours if t[i].differs else "same") for t in table]]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


__all__ = ["TRAINING_VERSION", "Architecture", "ARCHITECTURES", "NEW_MODALITY_SETS", "DISPLAY_NAMES",
           "PAPER_LIMITED_LABELS", "SMALL_DATABASES", "single_test_modality", "short_hash", "ModelSpec",
           "sd_spec", "joint_spec", "loo_spec", "finetune_spec", "limited_label_count", "batch_per_database",
           "Schedule", "schedule", "Deviation", "deviations", "deviation_line", "deviations_markdown",
           "EVALUATION_DATABASES", "TRAINING_DATABASES"]
