"""What every experiment needs: databases (synthetic or real), splits, trained models."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mmlib.data.cases import PreparedCase
from mmlib.data.manifest import ALL_DATABASES, DatabaseManifest, load_manifest
from mmlib.presets import Preset, load_preset

_TWINS_MARKER = ".mmlib-twins.json"


@dataclass
class Database:
    """A prepared database: its manifest and its train/test cases."""

    manifest: DatabaseManifest
    train: list[PreparedCase]
    test: list[PreparedCase]

    @property
    def name(self) -> str:
        return self.manifest.name


def as_preset(preset: str | Preset) -> Preset:
    return preset if isinstance(preset, Preset) else load_preset(preset)


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


def load_databases(names, preset: str | Preset, data_root: str | Path | None, cache_dir: str | Path,
                   progress: bool = True) -> dict[str, Database]:
    """Prepare (or read from cache) each database and split it as its manifest says.

    `data_root` holds one folder per database (<data_root>/<NAME>); None means each manifest's
    own root ($MMLIB_<NAME>_ROOT or $MMLIB_DATA_ROOT/<NAME>).
    """
    from mmlib.data.preprocess import prepare_database
    from mmlib.data.readers import split_cases

    preset = as_preset(preset)
    out = {}
    for name in names:
        manifest = load_manifest(name)
        root = manifest.resolve_root(None if data_root is None else Path(data_root) / name)
        cases = prepare_database(manifest, root, preset.spacing_mm, Path(cache_dir), progress=progress)
        train, test = split_cases(manifest, cases)
        if manifest.evaluation_only:
            train, test = [], list(cases)
        out[name] = Database(manifest, list(train), list(test))
    return out


def config_key(config: dict) -> str:
    """A short stable hash of a training configuration (decides when a saved model is reused)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _identity(config: dict, preset: Preset, steps: int | None) -> dict:
    """Everything that decides a trained model: its config, the preset and a shorter schedule."""
    return dict(config, preset=asdict(preset), steps_override=steps)


def model_dir(config: dict, preset: Preset, models_dir: Path, steps: int | None = None) -> Path:
    """Where the model `config` describes is saved: models_dir/<name>-<hash of config, preset, steps>."""
    return Path(models_dir) / f"{config.get('name', config['arch'])}-{config_key(_identity(config, preset, steps))}"


def batch_per_database(preset: Preset, n_databases: int) -> int:
    """Crops per database per step: the preset's, raised so a batch holds at least `min_batch`
    crops (on CPU a batch of one picks a slow convolution kernel)."""
    return max(preset.batch_per_database, -(-preset.min_batch // max(1, n_databases)))


def train_or_load(config: dict, train_sets: dict[str, list[PreparedCase]], preset: Preset,
                  models_dir: Path, device: str = "auto", progress: bool = True, channel_map=None,
                  init=None, steps: int | None = None):
    """Train the model `config` describes, or load it if a model of that config was saved.

    config: name, arch, drop, seed, databases (+ anything else that defines the model, e.g. the
    pretrained model it starts from). `init`: a callable returning the starting model (fine-tuning)
    instead of a fresh one. Returns (model, channel_map, checkpoint path); models live in
    models_dir/<name>-<hash>/final.pt.
    """
    from mmlib.data.loaders import ChannelMap, JointBatches
    from mmlib.engine.checkpoint import load_model
    from mmlib.engine.train import train
    from mmlib.models import build_model

    full = _identity(config, preset, steps)
    run_dir = model_dir(config, preset, models_dir, steps)
    final = run_dir / "final.pt"
    if final.is_file():
        model, cmap, _ = load_model(final, device=device)
        return model, ChannelMap.from_dict(cmap), final
    if channel_map is None:
        channel_map = ChannelMap.from_databases([c[0].modalities for c in train_sets.values() if c])
    model = init() if init is not None else build_model(config["arch"], len(channel_map), preset.width)
    batches = JointBatches(train_sets, channel_map, crop=preset.crop,
                           batch_per_database=batch_per_database(preset, len(train_sets)), drop=bool(config["drop"]),
                           rotate_p=preset.rotate_p, lesion_crop_p=preset.lesion_crop_p,
                           seed=int(config["seed"]))
    full_steps = preset.steps or preset.epochs * batches.epoch_length()
    full_drop = preset.lr_drop_step or preset.lr_drop_epoch * batches.epoch_length()
    if steps is None:
        steps, lr_drop = full_steps, full_drop
    else:  # a shorter schedule (fine-tuning): drop the learning rate at the same fraction
        lr_drop = max(1, round(steps * full_drop / max(1, full_steps)))
    full["width"] = preset.width
    full["dice_batch"] = preset.dice_batch
    result = train(model, batches, steps=steps, lr=preset.lr, lr_drop_step=lr_drop, out_dir=run_dir,
                   config=full, channel_map=channel_map.to_dict(), device=device, amp=preset.amp,
                   progress=progress, seed=int(config["seed"]))
    return model, channel_map, Path(result.path)


__all__ = ["ALL_DATABASES", "Database", "as_preset", "ensure_twins", "load_databases",
           "config_key", "model_dir", "batch_per_database", "train_or_load"]
