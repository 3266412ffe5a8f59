"""How long each model of the study trains: steps, the learning-rate drop, crops per database."""

from __future__ import annotations

from dataclasses import dataclass

from mmlib.experiments.plan.specs import ModelSpec
from mmlib.presets import Preset


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



__all__ = ["batch_per_database", "Schedule", "schedule"]
