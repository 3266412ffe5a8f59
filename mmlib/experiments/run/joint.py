"""`mmlib joint`: the study's joint model alone. It is the model notebook 02 trains (same spec,
folder and rows), evaluated as notebook 02 evaluates it, beside the best threshold rule. Under
torchrun every rank trains and evaluates it together and rank 0 writes the summary.

It trains on the training databases the study has: the paper's five, or those a user holds (four
without the private TBI: a model of its own, its mean labelled as over four), your own database
among them (`--databases BRATS,...,my/MYDB.yaml`); an evaluation-only database named there is
evaluated with each case's own modalities (new ones placed as in Appendix B)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mmlib.atomic_files import atomic_path, atomic_write_json
from mmlib.data.manifest import TRAINING_DATABASES
from mmlib.data.sources import sources_line
from mmlib.engine import distributed
from mmlib.errors import MMLibError
from mmlib.experiments.plan.jobs import joint_jobs
from mmlib.experiments.results.rows import write_rows
from mmlib.experiments.run.experiments import baselines
from mmlib.experiments.run.study import Study
from mmlib.presets import JointVariant, load_preset
from mmlib.viz import plot_combination_dice


def summarise(results: pd.DataFrame, baseline: pd.DataFrame, training=None) -> pd.DataFrame:
    """Per database: Dice with all modalities, mean Dice over the combinations evaluated, the
    threshold rule's Dice and rule, test cases; then their mean over the `training` databases
    (None: every row's), labelled with them where they are not the paper's five."""
    rows = []
    for db, df in results.groupby("database", sort=False):
        full = df[df["all_modalities"].astype(bool)]
        base = baseline[baseline["database"] == db]
        rows.append({
            "database": db,
            "dice_all_modalities": full["dice"].mean(),
            "dice_mean_over_subsets": df.groupby("subset")["dice"].mean().mean(),
            "subsets": df["subset"].nunique(),
            "dice_threshold_rule": base["dice"].mean() if len(base) else float("nan"),
            "threshold_rule": f"{base['modality'].iloc[0]} {base['direction'].iloc[0]}" if len(base) else "",
            "test_cases": full["case_id"].nunique(),
        })
    table = pd.DataFrame(rows).astype({"subsets": object, "test_cases": object})
    numbers = ["dice_all_modalities", "dice_mean_over_subsets", "dice_threshold_rule"]
    trained = table[table["database"].isin(training)] if training is not None else table
    # The paper's Table 3 averages five databases; a mean over fewer says so.
    label = "mean" if training is None or set(training) == set(TRAINING_DATABASES) else \
        f"mean over {len(trained)} ({'+'.join(trained['database'])}; the paper's over five)"
    table.loc[len(table)] = {"database": label, **trained[numbers].mean().to_dict(), "subsets": "",
                             "threshold_rule": "", "test_cases": int(trained["test_cases"].sum())}
    return table


def run_joint(out_dir: Path, preset="quick", data_root=None, seed: int = 0, arch: str = "multiunet",
              drop: bool = True, device: str = "auto", steps: int | None = None, progress: bool = True,
              executor=None, databases=None, fill_with_twins=None) -> pd.DataFrame | None:
    """Train (or find) the study's joint model of `arch` and `drop` on the study's training databases,
    evaluate it on them (and on the evaluation-only databases `databases` names), and write
    summary.csv, summary.json and a figure to out_dir/joint/<model folder>/. `databases`,
    `fill_with_twins`: as Study takes them. `executor`: where the model trains (Study's). Under
    torchrun only rank 0 returns the summary."""
    preset = load_preset(preset)
    if steps is not None:
        preset = preset.with_(steps=int(steps))
    study = Study(Path(out_dir), preset, data_root=data_root, device=device, seeds=(seed,), progress=progress,
                  executor=executor, databases_asked=databases, fill_with_twins=fill_with_twins)
    if progress and distributed.is_main():
        print(sources_line(study.sources), flush=True)
    training = study.training_names()
    if not training:
        raise MMLibError("no training database found: " + sources_line(study.sources))
    extra = [n for n in study.choice.names or () if n not in training]
    jobs = joint_jobs(preset, (seed,), [JointVariant(arch, drop)], training, extra)
    results = study.run(jobs)
    study.databases(training + extra)  # every rank, before rank 0 reads them alone
    summary = distributed.on_main(_summarise_and_write, study, jobs, results, preset, arch, drop, seed)
    return summary if distributed.is_main() else None


def _summarise_and_write(study: Study, jobs, results: pd.DataFrame, preset, arch: str, drop: bool, seed: int
                         ) -> pd.DataFrame:
    training = study.training_names()
    baseline = pd.concat([baselines(study, db, None) for db in training], ignore_index=True)
    summary = summarise(results, baseline, training)
    folder = study.out_dir / "joint" / study.model_dir(jobs[0].spec).name
    write_rows(summary, folder / "summary.csv")
    fig = plot_combination_dice(results, baseline)
    with atomic_path(folder / "dice_by_modality_subset.png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    atomic_write_json(folder / "summary.json", {
        "preset": preset.name, "model": jobs[0].spec.name, "model_folder": folder.name, "arch": arch, "drop": drop,
        "seed": seed, "databases": {n: s.to_json() for n, s in study.sources.items()},
        "summary": summary.to_dict(orient="records")}, default=float)
    return summary
