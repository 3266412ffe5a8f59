"""Synthetic twins for a study that was given no data root."""

from __future__ import annotations

import json
from pathlib import Path

from mmlib.presets import Preset

_TWINS_MARKER = ".mmlib-twins.json"


def ensure_twins(data_root: Path, preset: Preset, seed: int = 0, progress: bool = True) -> Path:
    """Write the synthetic twins into `data_root` unless the same ones are already there."""
    from mmlib.data.synth import make_twins

    marker = data_root / _TWINS_MARKER
    want = {"preset": preset.name, "seed": seed, "synth": preset.synth}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return data_root
    make_twins(data_root, preset=preset, seed=seed, progress=progress)
    marker.write_text(json.dumps(want))
    return data_root
