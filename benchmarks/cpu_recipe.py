"""Which training recipe lets the CPU presets' models converge, and at what cost? Trains models of
the quick study on the quick twins under named recipes (overrides of the `quick` preset), each
in one CPU thread as the quick study does, and records per run the wall time, the validation
Dice curve (held-out training cases, mmlib.engine.convergence) and whether the model learnt and
converged by the rule stated there.

    python benchmarks/cpu_recipe.py --out /tmp/recipes --recipe cosine-bce --model SD-BRATS
    python benchmarks/cpu_recipe.py --table        # the runs recorded so far, as a markdown table

Two runs may share --out (the twins are made once); run two side by side to load the two cores
as the quick study does. Each run appends one line to benchmarks/results/cpu_recipes.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

# One thread, as each of the quick study's two worker processes (mmlib.engine.device.pick_device
# gives torch every core unless OMP_NUM_THREADS says otherwise).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402 - after the thread count is set

RESULTS = Path(__file__).with_name("results") / "cpu_recipes.jsonl"

#: Dice + BCE, 5% linear warm-up, cosine decay, twice the paper's base rate: the CPU recipe's core.
_COSINE_BCE = dict(loss="dice_bce", lr_schedule="cosine", warmup_fraction=0.05, lr=2e-3)

#: Recipes tried: overrides of the quick preset (its twins, crop, spacing and validation cases).
#: 'sd_steps' sets the single-database models' steps, 'joint_steps' the joint models'.
RECIPES: dict[str, dict] = {
    # quick as shipped before this benchmark: the paper's Dice loss and step drop (x0.1 at 0.75),
    # lr 1e-3, width 0.5, 600 single-database and 1,600 joint steps.
    "step-dice": dict(loss="dice", lr_schedule="step", warmup_fraction=0.0, lr=1e-3, width=0.5,
                      sd_steps=600, joint_steps=1600),
    # The CPU recipe's core at quick's old width and steps.
    "cosine-bce": dict(_COSINE_BCE, width=0.5, sd_steps=600, joint_steps=1600),
    # The same at half the width (a quarter of the channels' compute) and twice the steps.
    "cosine-bce-w025-x2": dict(_COSINE_BCE, width=0.25, sd_steps=1200, joint_steps=3200),
    # The same at the quick width and twice the steps.
    "cosine-bce-x2": dict(_COSINE_BCE, width=0.5, sd_steps=1200, joint_steps=3200),
    # Width 0.25 at the old step counts (what fits the quick study's 30 minutes).
    "cosine-bce-w025": dict(_COSINE_BCE, width=0.25, sd_steps=800, joint_steps=1600),
    # quick's recipe with 1,600 single-database steps (did SD-ATLAS stop improving at 1,000?).
    "cosine-bce-w025-sd1600": dict(_COSINE_BCE, width=0.25, sd_steps=1600, joint_steps=1600),
    # Dice alone under the cosine schedule (what the loss adds, on its own).
    "cosine-dice": dict(_COSINE_BCE, loss="dice", width=0.5, sd_steps=600, joint_steps=1600),
}


def _preset(recipe: str):
    from mmlib.presets import load_preset

    quick = load_preset("quick")
    over = dict(RECIPES[recipe])
    sd_steps, joint_steps = over.pop("sd_steps"), over.pop("joint_steps")
    return quick.with_(steps=joint_steps, **over), sd_steps / joint_steps


def _spec(model: str, preset, sd_fraction: float):
    from mmlib.data.manifest import load_manifest
    from mmlib.experiments.plan.specs import joint_spec, sd_spec

    if model == "MD":
        return joint_spec("multiunet", True, 0)
    kind, db = model.split("-")
    assert kind == "SD", model
    return sd_spec(db, "multiunet", False, 0, len(load_manifest(db).modalities), sd_fraction)


def run(out: Path, recipe: str, model: str) -> dict:
    from mmlib.engine.precision import machine_name
    from mmlib.experiments.run.study import Study

    # One thread, as each of the quick study's two worker processes (mmlib.engine.device.pick_device
    # gives torch every core unless OMP_NUM_THREADS says otherwise).
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    preset, sd_fraction = _preset(recipe)
    study = Study(out, preset, device="cpu", progress=False, processes=1)
    spec = _spec(model, preset, sd_fraction)
    study.databases(spec.databases)  # twins made and prepared before the clock starts
    start = time.perf_counter()
    study.train(spec)
    wall = time.perf_counter() - start
    record = json.loads((study.model_dir(spec) / "training.json").read_text())
    test = _test_dice(study, spec)
    learning = record["learning"]
    curve = [round(sum(p["dice"].values()) / len(p["dice"]), 3) for p in record["validation"]]
    row = {"recipe": recipe, "model": model, "steps": record["steps"], "wall_s": round(wall, 1),
           "precision": record["precision"], "threads": torch.get_num_threads(), "machine": machine_name(torch.device("cpu")),
           "final_dice": round(learning["final_dice"], 3), "gain_last_quarter": round(learning["gain_last_quarter"], 3),
           "learnt": learning["learnt"], "converged": learning["converged"], "curve": curve,
           "test_dice": test, "validation": "pooled", "settings": RECIPES[recipe]}
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def _test_dice(study, spec) -> dict:
    """Mean and pooled Dice (all modalities) on each of the model's databases' test cases."""
    from mmlib.engine.evaluate import evaluate_cases
    from mmlib.metrics import pooled_dice

    model, cmap = study.train(spec)  # the trained model, read back
    out = {}
    for name, db in study.databases(spec.databases).items():
        rows = evaluate_cases(model, db.test, cmap, study.eval_settings(progress=False, across_ranks=False))
        out[name] = {"mean": round(float(rows["dice"].mean()), 3), "pooled": round(pooled_dice(rows), 3)}
    return out


def _minutes(row: dict) -> str:
    """Wall minutes, where they were measured with one thread per run (else '-')."""
    return f"{row['wall_s'] / 60:.1f}" if row.get("wall_s") is not None and row.get("threads") == 1 else "-"


def _test(row: dict) -> str:
    """Test Dice per database, 'mean / pooled' (runs recorded before it was measured: '-')."""
    test = row.get("test_dice")
    return ", ".join(f"{db} {d['mean']:.3f} / {d['pooled']:.3f}" for db, d in test.items()) if test else "-"


def table() -> str:
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    head = ("| recipe | model | steps | wall (min) | validation | val Dice | gain, last quarter | converged | "
            "test Dice, mean / pooled | curve |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [f"| {r['recipe']} | {r['model']} | {r['steps']} | {_minutes(r)} | {r.get('validation', 'per-case mean')} | "
             f"{r['final_dice']:.3f} | {r['gain_last_quarter']:+.3f} | {'yes' if r['converged'] else 'no'} | {_test(r)} | "
             f"{' '.join(map(str, r['curve']))} |"
             for r in rows]
    return "\n".join([head, *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--recipe", choices=sorted(RECIPES))
    parser.add_argument("--model", help="SD-<DATABASE> (Multi-Unet, no drop) or MD (joint, drop)")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    if args.table:
        print(table())
        return
    print(json.dumps(run(args.out, args.recipe, args.model)))


if __name__ == "__main__":
    main()
