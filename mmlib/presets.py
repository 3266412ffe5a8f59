"""Scale presets (smoke / quick / standard / full), read from presets.yaml as data."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from mmlib.errors import MMLibError

_PRESETS_FILE = Path(__file__).with_name("presets.yaml")


@dataclass(frozen=True)
class Preset:
    """One scale of the study; see presets.yaml for what each field means."""

    name: str
    spacing_mm: float
    crop: int
    width: float
    steps: int
    lr: float
    lr_drop_step: int
    batch_per_database: int
    rotate_p: float
    lesion_crop_p: float
    dice_batch: bool
    amp: bool
    sw_overlap: float
    seeds: tuple[int, ...]
    num_workers: int
    synth: dict = field(default_factory=dict)
    study: dict = field(default_factory=dict)
    epochs: int = 0
    lr_drop_epoch: int = 0
    min_batch: int = 1
    train_processes: int = 1

    def with_(self, **changes) -> "Preset":
        """A copy with some fields changed (e.g. a papermill parameter overriding steps)."""
        return replace(self, **changes)


def preset_names() -> tuple[str, ...]:
    return tuple(yaml.safe_load(_PRESETS_FILE.read_text()))


def load_preset(name: str) -> Preset:
    """The preset called `name`; raise MMLibError listing the known ones otherwise."""
    table = yaml.safe_load(_PRESETS_FILE.read_text())
    if name not in table:
        raise MMLibError(f"unknown preset {name!r}; known presets: {', '.join(table)}")
    raw = dict(table[name])
    raw["seeds"] = tuple(raw.get("seeds", (0,)))
    return Preset(name=name, **raw)
