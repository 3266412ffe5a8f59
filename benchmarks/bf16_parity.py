"""bf16 parity: trains the joint Multi-Unet on the twins per seed in fp32 and in bf16 autocast
(same initial weights and batches for a seed), evaluates all in fp32 (all modalities), and sets
|bf16 - fp32| beside the seed-to-seed noise. Seeds may run side by side, then --merge their JSON:
python benchmarks/bf16_parity.py --data TWINS --cache CACHE --seeds 0 --json s0.json
(TWINS: `mmlib synth --preset quick --out TWINS`); --device cuda on a GPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import torch

from mmlib.data.loaders import ChannelMap, JointBatches
from mmlib.data.manifest import TRAINING_DATABASES
from mmlib.engine.evaluate import EvalSettings, evaluate_cases
from mmlib.engine.train import TrainSettings, train
from mmlib.experiments.plan.schedule import batch_per_database
from mmlib.experiments.run.study import Study
from mmlib.models import build_model
from mmlib.presets import load_preset


def run(dbs, cmap, preset, seed: int, amp: bool, steps: int, lr_drop: int, device: str, out: Path,
        fp32_layers=()) -> dict:
    """Train one model and evaluate it in float32: its mean Dice and seconds per step."""
    torch.manual_seed(seed)
    model = build_model("multiunet", len(cmap), preset.width)
    for name in fp32_layers:  # parts kept in float32 under autocast (see keep_fp32)
        keep_fp32(model, name, torch.device(device).type)
    batches = JointBatches({n: d.train for n, d in dbs.items()}, cmap, crop=preset.crop,
                           batch_per_database=batch_per_database(preset, len(dbs)), drop=True,
                           rotate_p=preset.rotate_p, lesion_crop_p=preset.lesion_crop_p, seed=seed)
    t0 = time.perf_counter()
    train(model, batches, TrainSettings(steps, preset.lr, lr_drop, device=device, amp=amp, progress=False, seed=seed),
          out, {"arch": "multiunet", "width": preset.width, "dice_batch": preset.dice_batch}, cmap)
    sec = (time.perf_counter() - t0) / steps
    rows = evaluate_cases(model, [c for d in dbs.values() for c in d.test], cmap,
                          EvalSettings(preset.crop, preset.sw_overlap, device, amp=False, progress=False))
    per_db = rows.groupby("database")["dice"].mean()
    return {"seed": seed, "amp": amp, "fp32_layers": list(fp32_layers), "s_per_step": sec,
            "dice": float(per_db.mean()), "dice_by_database": per_db.round(4).to_dict()}


def keep_fp32(model: torch.nn.Module, kind: str, device_type: str = "cpu") -> None:
    """Run every module of `kind` ('norm': InstanceNorm, 'head': the last conv) in float32,
    autocast off, whatever precision the rest of the network runs in."""
    targets = [m for m in model.modules() if isinstance(m, torch.nn.InstanceNorm3d)] if kind == "norm" \
        else [model.decoder.head]
    for module in targets:
        def fp32_forward(*args, _forward=module.forward, **kwargs):
            with torch.autocast(device_type, enabled=False):
                return _forward(*(a.float() if torch.is_tensor(a) else a for a in args), **kwargs)
        module.forward = fp32_forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--data", help="the twins' folder (mmlib synth --out)")
    parser.add_argument("--cache", default="runs/bf16_parity", help="a study folder holding the prepared cases")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=0, help="0: the preset's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--fp32-layers", nargs="*", default=[], choices=["norm", "head"],
                        help="also train bf16 runs with these kept in float32")
    parser.add_argument("--json", default="bf16_parity.json")
    parser.add_argument("--merge", nargs="+", help="summarise these JSON files of earlier runs instead")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge, args.json)
    preset = load_preset(args.preset)
    study = Study(Path(args.cache), preset, data_root=args.data, device=args.device, progress=False)
    dbs = study.databases(TRAINING_DATABASES)
    cmap = ChannelMap.from_databases([d.manifest for d in dbs.values()])
    steps = args.steps or preset.steps
    lr_drop = max(1, round(steps * preset.lr_drop_step / preset.steps))
    variants = [(p == "bf16", ()) for p in args.precisions]
    variants += [(True, tuple(args.fp32_layers))] if args.fp32_layers else []
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed, (amp, layers) in itertools.product(args.seeds, variants):
            r = run(dbs, cmap, preset, seed, amp, steps, lr_drop, args.device,
                    Path(tmp) / f"{seed}-{amp}-{'-'.join(layers)}", layers)
            results.append(r)
            print(f"seed {seed} {'bf16' if amp else 'fp32'}{'+fp32 ' + ','.join(layers) if layers else ''}: "
                  f"Dice {r['dice']:.4f}  {r['s_per_step']:.3f} s/step  {r['dice_by_database']}", flush=True)
    summarise(results, {"preset": preset.name, "steps": steps, "device": args.device}, args.json)


def summarise(results: list[dict], about: dict, json_path: str) -> None:
    """Print the noise (fp32 seed to seed) next to the bf16 effect (same seed), write JSON."""
    fp32 = {r["seed"]: r["dice"] for r in results if not r["amp"]}
    summary = {**about, "runs": results,
               "noise_fp32_between_seeds": [abs(a - b) for a, b in itertools.combinations(fp32.values(), 2)],
               "bf16_minus_fp32_same_seed": [r["dice"] - fp32[r["seed"]] for r in results
                                             if r["amp"] and r["seed"] in fp32],
               "s_per_step_bf16_over_fp32": [r["s_per_step"] / s["s_per_step"] for r in results if r["amp"]
                                             for s in results if not s["amp"] and s["seed"] == r["seed"]]}
    print("fp32 seed-to-seed |delta Dice|:", [f"{v:.4f}" for v in summary["noise_fp32_between_seeds"]])
    print("bf16 - fp32, same seed:        ", [f"{v:+.4f}" for v in summary["bf16_minus_fp32_same_seed"]])
    print("step time bf16 / fp32:         ", [f"{v:.2f}" for v in summary["s_per_step_bf16_over_fp32"]])
    Path(json_path).write_text(json.dumps(summary, indent=2))


def merge(paths: list[str], json_path: str) -> None:
    """One summary from runs written by separate processes (e.g. one seed each, side by side)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    about = {k: v for k, v in parts[0].items() if k in ("preset", "steps", "device")}
    summarise([r for part in parts for r in part["runs"]], about, json_path)


if __name__ == "__main__":
    main()
