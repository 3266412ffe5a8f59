"""Scale presets (smoke / quick / standard / full), read from presets.yaml as data.

A preset holds two kinds of settings: those that decide a trained model's weights (spacing,
crop, width, schedule, augmentation, precision: `Preset.training_settings`) and those that only
decide how the study runs (sliding-window overlap, processes, which models it trains: `StudyPlan`).
Only the first kind enters a model's identity, so changing the second retrains nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from mmlib.errors import MMLibError

_PRESETS_FILE = Path(__file__).with_name("presets.yaml")

#: The paper's training recipe (a preset that keeps it adds nothing to its models' identity).
_PAPER_RECIPE = {"loss": "dice", "lr_schedule": "step", "warmup_fraction": 0.0}
#: The training losses and learning-rate schedules a preset may name (mmlib.engine.losses and
#: mmlib.engine.train implement them).
LOSSES = ("dice", "dice_bce")
SCHEDULES = ("step", "cosine")

#: The five training databases of the paper (Table 3 order is set by the tables, not here).
_TRAINING = ("BRATS", "ATLAS", "MSSEG", "TBI", "WMH")


@dataclass(frozen=True)
class JointVariant:
    """One joint model of Table 3: an architecture trained with or without modality drop."""

    arch: str
    drop: bool

    @classmethod
    def parse(cls, text: str) -> "JointVariant":
        """'multiunet+drop' -> JointVariant('multiunet', True); 'multiunet' -> no drop."""
        arch, plus, tag = str(text).partition("+")
        if plus and tag != "drop":
            raise MMLibError(f"joint variant {text!r}: write ARCH or ARCH+drop")
        return cls(arch, bool(plus))

    def __str__(self) -> str:
        return self.arch + ("+drop" if self.drop else "")


@dataclass(frozen=True)
class StudyPlan:
    """Which models the study trains at a preset, and for how long relative to `Preset.steps`.

    The defaults are the paper's protocol (every architecture on every database, three joint
    variants, all five leave-one-out targets, full-length fine-tuning); a preset lists only
    what it cuts.
    """

    sd_fraction: float = 1.0            # single-database models: this fraction of `steps`
    finetune_fraction: float = 1.0      # fine-tuning and progressive models (Table 6)
    fusion_archs: tuple[str, ...] = ("lfunet", "mafunet")
    fusion_databases: tuple[str, ...] = _TRAINING
    joint_variants: tuple[JointVariant, ...] = (JointVariant("multiunet", True), JointVariant("multiunet", False),
                                                JointVariant("mafunet", True))
    joint_all_combinations: bool = True  # joint models evaluated on every modality subset
    loo_targets: tuple[str, ...] = _TRAINING

    @classmethod
    def from_dict(cls, raw: dict | None, where: str) -> "StudyPlan":
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise MMLibError(f"preset {where}: unknown study setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}", _PRESETS_FILE)
        for key in ("fusion_archs", "fusion_databases", "loo_targets"):
            if key in raw:
                raw[key] = tuple(raw[key])
        if "joint_variants" in raw:
            raw["joint_variants"] = tuple(JointVariant.parse(v) for v in raw["joint_variants"])
        for key in ("sd_fraction", "finetune_fraction"):
            if key in raw and not 0 < float(raw[key]) <= 1:
                raise MMLibError(f"preset {where}: {key} must be in (0, 1], got {raw[key]!r}", _PRESETS_FILE)
        return cls(**raw)


@dataclass(frozen=True)
class Preset:
    """One scale of the study; see presets.yaml for what each field means."""

    name: str
    spacing_mm: float
    crop: int
    width: float
    steps: int
    lr: float
    lr_drop_fraction: float
    batch_per_database: int
    rotate_p: float
    lesion_crop_p: float
    dice_batch: bool
    amp: bool
    sw_overlap: float
    seeds: tuple[int, ...]
    num_workers: int
    synth: dict = field(default_factory=dict)
    study: StudyPlan = field(default_factory=StudyPlan)
    epochs: int = 0
    min_batch: int = 1
    train_processes: int = 1
    rotate_planes: tuple[tuple[int, int], ...] = ((0, 2),)
    # Validation during training (mmlib.engine.convergence): this share of each database's
    # training cases (the last by name; within the bounds, leaving at least 2 to train on) is
    # held out, and the validation Dice is taken at `val_points` evenly spaced steps.
    val_fraction: float = 0.1
    val_min_cases: int = 1
    val_max_cases: int = 8
    val_points: int = 8
    model_selection: str = "final"  # or "best": the weights of the best validation Dice (the paper's)
    # The training recipe: the paper's (Dice loss, lr x0.1 at `lr_drop_fraction`) unless a preset
    # names another (mmlib.engine.losses.LOSSES, mmlib.engine.train.SCHEDULES).
    loss: str = "dice"
    lr_schedule: str = "step"
    warmup_fraction: float = 0.0

    def with_(self, **changes) -> "Preset":
        """A copy with some fields changed (e.g. a papermill parameter overriding steps)."""
        return replace(self, **changes)

    def training_settings(self) -> dict:
        """The settings that decide a trained model's weights (a model's identity holds these,
        and nothing else of the preset: overlap, processes or the study plan retrain nothing)."""
        keep = ("spacing_mm", "crop", "width", "steps", "epochs", "lr", "lr_drop_fraction",
                "batch_per_database", "min_batch", "rotate_p", "rotate_planes", "lesion_crop_p",
                "dice_batch", "amp", "val_fraction", "val_min_cases", "val_max_cases", "val_points",
                "model_selection")
        settings = {k: getattr(self, k) for k in keep}
        # The recipe enters the identity only where it is not the paper's, so that models trained
        # before these settings existed keep their identity.
        for key, paper in _PAPER_RECIPE.items():
            if getattr(self, key) != paper:
                settings[key] = getattr(self, key)
        return settings

    def validation_count(self, n_train: int) -> int:
        """How many of `n_train` training cases are held out for validation (0: too few to spare)."""
        want = max(self.val_min_cases, round(self.val_fraction * n_train))
        return max(0, min(want, self.val_max_cases, n_train - 2))


def preset_names() -> tuple[str, ...]:
    return tuple(yaml.safe_load(_PRESETS_FILE.read_text()))


def load_preset(name: str | Preset) -> Preset:
    """The preset called `name` (a Preset is returned as it is); raise MMLibError listing the known
    ones otherwise. The one place a preset's name becomes a Preset."""
    if isinstance(name, Preset):
        return name
    table = yaml.safe_load(_PRESETS_FILE.read_text())
    if name not in table:
        raise MMLibError(f"unknown preset {name!r}; known presets: {', '.join(table)}")
    raw = dict(table[name])
    raw["seeds"] = tuple(int(s) for s in raw.get("seeds", (0,)))
    raw["study"] = StudyPlan.from_dict(raw.get("study"), name)
    if "rotate_planes" in raw:
        raw["rotate_planes"] = tuple(tuple(int(a) for a in plane) for plane in raw["rotate_planes"])
    known = {f.name for f in fields(Preset)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise MMLibError(f"preset {name}: unknown setting(s) {', '.join(unknown)}", _PRESETS_FILE)
    if raw.get("model_selection", "final") not in ("final", "best"):
        raise MMLibError(f"preset {name}: model_selection must be 'final' or 'best'", _PRESETS_FILE)
    if raw.get("loss", "dice") not in LOSSES:
        raise MMLibError(f"preset {name}: loss must be one of {', '.join(LOSSES)}", _PRESETS_FILE)
    if raw.get("lr_schedule", "step") not in SCHEDULES:
        raise MMLibError(f"preset {name}: lr_schedule must be one of {', '.join(SCHEDULES)}", _PRESETS_FILE)
    if not 0 <= float(raw.get("warmup_fraction", 0.0)) < 1:
        raise MMLibError(f"preset {name}: warmup_fraction must be in [0, 1)", _PRESETS_FILE)
    if not 0 < float(raw["lr_drop_fraction"]) <= 1:
        raise MMLibError(f"preset {name}: lr_drop_fraction must be in (0, 1]", _PRESETS_FILE)
    return Preset(name=name, **raw)
