"""The README's main job: one Multi-Unet trained on the five training databases, evaluated
with all modalities and on every modality combination, beside the best threshold rule."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from mmlib.data.manifest import TRAINING_DATABASES
from mmlib.experiments.common import as_preset, ensure_twins, load_databases, train_or_load


def summarise(results: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """Per database: Dice with all modalities, mean Dice over all combinations, threshold Dice."""
    rows = []
    for db, df in results.groupby("database", sort=False):
        full = df[df["n_modalities"] == df["n_modalities"].max()]
        base = baseline[baseline["database"] == db]
        rows.append({
            "database": db,
            "dice_all_modalities": full["dice"].mean(),
            "dice_all_combinations": df.groupby("subset")["dice"].mean().mean(),
            "dice_threshold_baseline": base["dice"].mean() if len(base) else float("nan"),
            "threshold_rule": (f"{base['modality'].iloc[0]} {base['direction'].iloc[0]}"
                               if len(base) else ""),
            "test_cases": full["case_id"].nunique(),
        })
    table = pd.DataFrame(rows)
    mean = table.drop(columns=["database", "threshold_rule", "test_cases"]).mean()
    table.loc[len(table)] = {"database": "mean", **mean.to_dict(), "threshold_rule": "",
                             "test_cases": table["test_cases"].sum()}
    return table


def run_joint(out_dir: Path, preset="quick", data_root=None, seed: int = 0, arch: str = "multiunet",
              drop: bool = True, device: str = "auto", steps: int | None = None,
              databases=TRAINING_DATABASES, progress: bool = True) -> pd.DataFrame:
    """Make (or reuse) the data, train (or reuse) the joint model, evaluate it, write tables
    (results.csv, baseline.csv, summary.csv, summary.json) and a figure into `out_dir`."""
    from mmlib.engine.baselines import threshold_baseline
    from mmlib.engine.evaluate import evaluate_all_combinations
    from mmlib.viz import plot_combination_dice

    preset = as_preset(preset)
    if steps is not None:
        preset = preset.with_(steps=steps, lr_drop_step=min(preset.lr_drop_step, steps))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.perf_counter()
    if data_root is None:
        data_root = ensure_twins(out_dir / "data", preset, seed=0, progress=progress)
    dbs = load_databases(databases, preset, data_root, out_dir / "cache", progress=progress)
    timings["data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    config = {"name": f"joint-{arch}", "arch": arch, "drop": drop, "seed": seed,
              "databases": list(databases)}
    model, cmap, ckpt = train_or_load(config, {n: d.train for n, d in dbs.items()}, preset,
                                      out_dir / "models", device=device, progress=progress)
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    frames = []
    for name, db in dbs.items():
        frames.append(evaluate_all_combinations(
            model, db.test, cmap, roi=preset.crop, overlap=preset.sw_overlap, device=device,
            model_name=config["name"], extra={"seed": seed, "preset": preset.name}, progress=progress))
    results = pd.concat(frames, ignore_index=True)
    baseline = threshold_baseline([c for d in dbs.values() for c in d.train],
                                  [c for d in dbs.values() for c in d.test])
    timings["evaluate_s"] = time.perf_counter() - t0

    summary = summarise(results, baseline)
    results.to_csv(out_dir / "results.csv", index=False)
    baseline.to_csv(out_dir / "baseline.csv", index=False)
    summary.to_csv(out_dir / "summary.csv", index=False)
    fig = plot_combination_dice(results, baseline)
    fig.savefig(out_dir / "dice_by_modality_subset.png", dpi=120, bbox_inches="tight")
    (out_dir / "summary.json").write_text(json.dumps({
        "preset": preset.name, "arch": arch, "drop": drop, "seed": seed, "checkpoint": str(ckpt),
        "timings_s": timings, "summary": summary.to_dict(orient="records")}, indent=2, default=float))
    return summary
