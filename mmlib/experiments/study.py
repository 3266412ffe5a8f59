"""The study's experiments, one function per notebook, each returning tidy result rows.

Models are named and configured by `sd_config` / `md_config`, so a model trained in one notebook
(e.g. the single-database models of 01) is found again by later ones (03, 04) when the preset,
databases and seed match. Rows follow docs/RESULTS_SCHEMA.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mmlib.data.manifest import EVALUATION_DATABASES, TRAINING_DATABASES
from mmlib.data.modalities import sort_modalities
from mmlib.errors import MMLibError
from mmlib.experiments.common import (Database, as_preset, batch_per_database, config_key, ensure_twins,
                                      load_databases, model_dir, train_or_load)
from mmlib.experiments.tables import single_test_modality
from mmlib.presets import Preset

#: The paper's limited-label fine-tuning sets (Table 6): 20 cases, 50 for TBI.
PAPER_LIMITED_LABELS = {"BRATS": 20, "ATLAS": 20, "MSSEG": 20, "TBI": 50, "WMH": 20}
#: The fusion architectures' names in the paper.
FUSION_NAMES = {"lfunet": "LFUnet", "mafunet": "MAFUnet"}
#: Table 4's test modality sets.
NEW_MODALITY_SETS = {"ISLES": (("T1",), ("T1", "T2"), ("FLAIR", "T1", "T2")), "TUMOR2": (("T1",),)}


@dataclass
class Study:
    """Where a study runs: preset, output folder (models, cache, results), data, device.

    `data_root` None means the synthetic twins, made once in out_dir/data.
    """

    out_dir: Path
    preset: Preset | str = "quick"
    data_root: Path | None = None
    device: str = "auto"
    seeds: tuple[int, ...] | None = None
    progress: bool = True
    processes: int | None = None
    _dbs: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self.preset = as_preset(self.preset)
        if self.seeds is None:
            self.seeds = tuple(self.preset.seeds)
        if self.processes is None:
            self.processes = self.preset.train_processes

    @property
    def models_dir(self) -> Path:
        return self.out_dir / "models"

    def databases(self, names) -> dict[str, Database]:
        """Prepared databases by name (made, preprocessed and cached on first use)."""
        missing = [n for n in names if n not in self._dbs]
        if missing:
            root = self.data_root
            if root is None:
                root = ensure_twins(self.out_dir / "data", self.preset, seed=0, progress=self.progress)
            self._dbs.update(load_databases(missing, self.preset, root, self.out_dir / "cache",
                                            progress=self.progress))
        return {n: self._dbs[n] for n in names}

    def train_all(self, jobs: list["TrainJob"]) -> None:
        """Train the models of `jobs` that are not saved yet, side by side in `processes` worker
        processes (each with its share of the CPU threads). With one process, or one model to
        train, nothing happens here: each model is trained when it is first asked for."""
        dirs = {_job_dir(self, j): j for j in jobs}  # one job per model, however often asked for
        todo = sorted((j for d, j in dirs.items() if not (d / "final.pt").is_file()),
                      key=_job_cost, reverse=True)  # longest first: the pool ends together
        if (self.processes or 1) <= 1 or len(todo) <= 1:
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        from tqdm.auto import tqdm

        n = min(self.processes, len(todo))
        state = {"out_dir": str(self.out_dir), "preset": self.preset, "data_root": self.data_root,
                 "device": self.device, "seeds": self.seeds, "threads": max(1, (os.cpu_count() or 1) // n)}
        self.databases(sorted({d for j in todo for d in j.config["databases"]}))  # prepare once, here
        with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_run_job, state, j): j for j in todo}
            bar = tqdm(as_completed(futures), total=len(futures), disable=not self.progress,
                       desc=f"training {len(todo)} models in {n} processes", unit="model")
            for future in bar:
                problem = future.result()
                if problem:
                    for other in futures:
                        other.cancel()
                    raise MMLibError(f"training {futures[future].config['name']} failed: {problem}",
                                     _job_dir(self, futures[future]))

    def evaluate(self, model, cmap, cases, rows_extra: dict, subsets=None, all_combinations=False):
        """Tidy rows for `cases`: every modality combination, the given subsets, or all modalities."""
        from mmlib.engine.evaluate import evaluate_all_combinations, evaluate_cases

        kw = dict(roi=self.preset.crop, overlap=self.preset.sw_overlap, device=self.device,
                  model_name=rows_extra["model"], progress=self.progress)
        extra = {k: v for k, v in rows_extra.items() if k != "model"}
        extra["preset"] = self.preset.name
        if all_combinations:
            frames = [evaluate_all_combinations(model, cases, cmap, extra=extra, **kw)]
        elif subsets:
            frames = [evaluate_cases(model, cases, cmap, subset=s, extra=extra, **kw) for s in subsets]
        else:
            frames = [evaluate_cases(model, cases, cmap, extra=extra, **kw)]
        df = pd.concat(frames, ignore_index=True)
        if cases:
            full = {c.database: "+".join(sort_modalities(c.modalities)) for c in cases}
            df["all_modalities"] = df["subset"] == df["database"].map(full)
        return df


@dataclass
class TrainJob:
    """One model to train or load: its config and what else decides it.

    steps: None for the preset's schedule. n_cases: train on the first n cases of the (one)
    database only. channel_map: a ChannelMap dict (None: the union of the databases').
    init: (how, checkpoint) to start from another model: how is 'finetune' (a copy of it) or
    'progressive' (a progressive net on top of it); None starts from scratch.
    """

    config: dict
    steps: int | None = None
    n_cases: int | None = None
    channel_map: dict | None = None
    init: tuple[str, str] | None = None


def _job_dir(study: Study, job: TrainJob) -> Path:
    return model_dir(job.config, study.preset, study.models_dir, job.steps)


def _job_cost(job: TrainJob) -> float:
    """Relative training cost, to start the longest jobs first."""
    factor = {"lfunet": 3.0, "mafunet": 1.5, "progressive": 2.0}.get(job.config["arch"], 1.0)
    return (job.steps or 10**9) * len(job.config["databases"]) * factor


def _run_job(state: dict, job: TrainJob) -> str | None:
    """Worker-process entry of Study.train_all: train one job; the problem as text if it fails."""
    import torch

    # pick_device gives torch every core unless OMP_NUM_THREADS is set: set it, or the workers
    # would each take every core and slow one another down several times over.
    os.environ["OMP_NUM_THREADS"] = str(state["threads"])
    torch.set_num_threads(state["threads"])
    study = Study(Path(state["out_dir"]), state["preset"], data_root=state["data_root"],
                  device=state["device"], seeds=state["seeds"], progress=False, processes=1)
    try:
        run_job(study, job)
    except Exception as exc:  # reported in the parent, naming the model
        return f"{type(exc).__name__}: {exc}"
    return None


def run_job(study: Study, job: TrainJob):
    """Train (or load) the model of `job`; (model, channel map, checkpoint path)."""
    from mmlib.data.loaders import ChannelMap
    from mmlib.engine.checkpoint import load_model
    from mmlib.models import ProgressiveUNet

    dbs = study.databases(job.config["databases"])
    sets = {n: (d.train[:job.n_cases] if job.n_cases else d.train) for n, d in dbs.items()}
    cmap = ChannelMap.from_dict(job.channel_map) if job.channel_map else None
    init = None
    if job.init is not None:
        how, ckpt = job.init
        if how not in ("finetune", "progressive"):
            raise MMLibError(f"unknown way to start from a model: {how!r} (finetune or progressive)")

        def init():
            base = load_model(ckpt, device="cpu")[0]
            return base if how == "finetune" else ProgressiveUNet(base)
    return train_or_load(job.config, sets, study.preset, study.models_dir, device=study.device,
                         progress=study.progress, channel_map=cmap, init=init, steps=job.steps)


def sd_config(database: str, arch: str, drop: bool, seed: int, modalities=()) -> dict:
    """A single-database model. With one modality, drop changes nothing: train it once."""
    effective_drop = bool(drop) and len(modalities) != 1
    return {"name": f"SD-{database}-{arch}-{'drop' if effective_drop else 'nodrop'}", "arch": arch,
            "drop": effective_drop, "seed": seed, "databases": [database]}


def md_config(arch: str, drop: bool, seed: int, databases=TRAINING_DATABASES) -> dict:
    """A model trained jointly on `databases` (MD: all five; LOO: four)."""
    tag = "MD" if tuple(databases) == TRAINING_DATABASES else "LOO-" + "".join(
        d[:2] for d in TRAINING_DATABASES if d not in databases)
    return {"name": f"{tag}-{arch}-{'drop' if drop else 'nodrop'}", "arch": arch, "drop": bool(drop),
            "seed": seed, "databases": list(databases)}


def _fraction_steps(preset: Preset, key: str) -> int | None:
    """The preset's `steps` scaled by its study[key] fraction (None: the full schedule)."""
    fraction = preset.study.get(key, 1.0)
    if not preset.steps or fraction >= 1.0:
        return None
    return max(1, round(preset.steps * fraction))


def parse_variant(variant: str) -> tuple[str, bool]:
    """'multiunet+drop' -> ('multiunet', True); 'mafunet' -> ('mafunet', False)."""
    arch, _, drop = variant.partition("+")
    return arch, drop == "drop"


def describe_cuts(preset: Preset) -> str:
    """One line naming what this preset cuts from the paper's protocol (printed under tables)."""
    s = preset.study
    batch = f"{preset.batch_per_database} crop(s) per database per step"
    if batch_per_database(preset, 1) != preset.batch_per_database:
        batch += f" (single-database: {batch_per_database(preset, 1)})"
    parts = [f"{preset.spacing_mm:g} mm voxels", f"{preset.crop}^3 crops", batch, f"width x{preset.width:g}",
             f"{preset.steps or preset.epochs} {'steps' if preset.steps else 'epochs'} "
             f"(single-database x{s.get('sd_fraction', 1):g}, fine-tuning x{s.get('finetune_fraction', 1):g})",
             f"{len(preset.seeds)} seed(s)",
             f"single-database {'/'.join(FUSION_NAMES[a] for a in s.get('fusion_archs', FUSION_NAMES))} on "
             f"{', '.join(s.get('fusion_databases', [])) or 'none'}",
             f"joint: {', '.join(s.get('joint_variants', []))}"
             + ("" if s.get("joint_all_combinations", True) else " (evaluated with all modalities only)"),
             f"leave-one-out on {', '.join(s.get('loo_targets', []))}"]
    return f"preset {preset.name}: " + "; ".join(parts)


def _job(study: Study, config: dict) -> TrainJob:
    """A model of the study's grid: single-database models train for the preset's sd_fraction."""
    steps = _fraction_steps(study.preset, "sd_fraction") if config["name"].startswith("SD-") else None
    return TrainJob(config, steps=steps)


def _train(study: Study, config: dict):
    return run_job(study, _job(study, config))


def _row_extra(config: dict, training: str, drop_label: bool | None = None, **more) -> dict:
    return {"model": config["name"], "arch": config["arch"], "training": training,
            "train_databases": "+".join(config["databases"]),
            "drop": config["drop"] if drop_label is None else drop_label, "seed": config["seed"],
            "method": "", "labels": "", **more}


def single_database(study: Study, databases=TRAINING_DATABASES, archs=("multiunet",),
                    drops=(False, True)) -> pd.DataFrame:
    """Table 2 and the SD rows of Table 3: per database, arch, drop and seed one model,
    evaluated on its test cases with every combination of modalities."""
    grid = [(db, sd_config(name, arch, drop, seed, db.manifest.modalities), drop)
            for name, db in study.databases(databases).items()
            for arch in archs for drop in drops for seed in study.seeds]
    study.train_all([_job(study, config) for _, config, _ in grid])
    frames = []
    for db, config, drop in grid:
        model, cmap, _ = _train(study, config)
        frames.append(study.evaluate(model, cmap, db.test, _row_extra(config, "SD", drop),
                                     all_combinations=True))
    return pd.concat(frames, ignore_index=True)


def saved_single_database(study: Study, databases=TRAINING_DATABASES, archs=("multiunet",),
                          drops=(False, True)) -> pd.DataFrame:
    """single_database's rows as notebook 01 saved them (results/01_single_database.csv) when
    they cover every model asked for at this preset and seeds; else single_database's own run."""
    path = study.out_dir / "results" / "01_single_database.csv"
    if path.is_file():
        saved = pd.read_csv(path)
        wanted = {sd_config(name, arch, drop, seed, db.manifest.modalities)["name"] + f"@{seed}"
                  for name, db in study.databases(databases).items()
                  for arch in archs for drop in drops for seed in study.seeds}
        saved = saved[(saved["preset"] == study.preset.name) & saved["database"].isin(list(databases))
                      & saved["arch"].isin(list(archs))]
        keys = saved["model"] + "@" + saved["seed"].astype(int).astype(str)
        if wanted <= set(keys):
            return saved[keys.isin(wanted)].reset_index(drop=True)
    return single_database(study, databases, archs, drops)


def joint_training(study: Study, variants=None, all_combinations: bool | None = None) -> pd.DataFrame:
    """Table 3 (and 7-8): models trained on the five training databases at once.
    `variants`: e.g. ['multiunet+drop', 'multiunet'] (default: the preset's joint_variants).
    `all_combinations`: evaluate every modality combination, not only all modalities (default:
    the preset's joint_all_combinations, else True)."""
    if all_combinations is None:
        all_combinations = study.preset.study.get("joint_all_combinations", True)
    dbs = study.databases(TRAINING_DATABASES)
    variants = variants or study.preset.study.get("joint_variants", ["multiunet+drop"])
    configs = [md_config(arch, drop, seed) for arch, drop in map(parse_variant, variants)
               for seed in study.seeds]
    study.train_all([_job(study, config) for config in configs])
    frames = []
    for config in configs:
        model, cmap, _ = _train(study, config)
        for db in dbs.values():
            frames.append(study.evaluate(model, cmap, db.test, _row_extra(config, "MD"),
                                         all_combinations=all_combinations))
    return pd.concat(frames, ignore_index=True)


def new_modality_sets(study: Study) -> pd.DataFrame:
    """Table 4 (and 9-10): ISLES with T1; T1,T2; FLAIR,T1,T2 and Tumor 2 with T1, segmented by
    the ATLAS-only, BRATS-only (drop) and joint (with and without drop) models."""
    targets = study.databases(EVALUATION_DATABASES)
    atlas = study.databases(["ATLAS"])["ATLAS"].manifest.modalities
    brats = study.databases(["BRATS"])["BRATS"].manifest.modalities
    configs = [(config, training) for seed in study.seeds for config, training in (
        (sd_config("ATLAS", "multiunet", False, seed, atlas), "SD"),
        (sd_config("BRATS", "multiunet", True, seed, brats), "SD"),
        (md_config("multiunet", False, seed), "MD"),
        (md_config("multiunet", True, seed), "MD"))]
    study.train_all([_job(study, config) for config, _ in configs])
    frames = []
    for config, training in configs:
        model, cmap, _ = _train(study, config)
        for name, sets in NEW_MODALITY_SETS.items():
            usable = [s for s in sets if all(m in cmap.modalities for m in s)]
            if usable:
                frames.append(study.evaluate(model, cmap, targets[name].test,
                                             _row_extra(config, training), subsets=usable))
    return pd.concat(frames, ignore_index=True)


def limited_label_count(database: Database) -> int:
    """Table 6's limited set (20 cases, 50 for TBI), scaled to this twin's size."""
    paper = PAPER_LIMITED_LABELS.get(database.name, 20)
    n = len(database.train)
    if n >= database.manifest.split_train:
        return paper
    return max(2, min(n, round(paper * n / database.manifest.split_train)))


def _held_out_map(cmap, held_out: Database):
    """The LOO model's channel map with the held-out database's new modalities assigned
    to free channels (Appendix B)."""
    from mmlib.models import assign_new_modalities

    new = [m for m in held_out.manifest.modalities if m not in cmap.modalities]
    if not new:
        return cmap
    mapping = assign_new_modalities(cmap.modalities, held_out.manifest.modalities)
    return cmap.with_assignments({m: mapping[m] for m in new})


def unseen_pathologies(study: Study, targets=None, finetune: bool = True) -> pd.DataFrame:
    """Tables 5 and 6: per held-out database a joint model of the other four (with drop),
    0-shot on the held-out test cases (FLAIR-or-T1 and all modalities), then scratch,
    fine-tuned and progressive models with limited and with all training labels.

    `targets`: held-out databases (default: the preset's loo_targets). Fine-tuning runs for the
    preset's finetune_fraction of its steps."""
    targets = list(targets or study.preset.study.get("loo_targets", TRAINING_DATABASES))
    loo_configs = [(target, md_config("multiunet", True, seed, [d for d in TRAINING_DATABASES if d != target]))
                   for target in targets for seed in study.seeds]
    study.train_all([_job(study, config) for _, config in loo_configs])
    frames, fine_tuned = [], []
    for target, config in loo_configs:
        held = study.databases([target])[target]
        loo, cmap, ckpt = _train(study, config)
        cmap = _held_out_map(cmap, held)
        frames.append(study.evaluate(loo, cmap, held.test, _row_extra(config, "LOO", held_out=target),
                                     subsets=[(single_test_modality(held.manifest.modalities),), None]))
        if finetune:  # else Table 6's 0-shot column is these LOO rows alone
            fine_tuned += _finetune_jobs(study, held, config, cmap, ckpt)
    study.train_all([job for job, _, _ in fine_tuned])
    for job, method, labels in fine_tuned:
        model, cmap, _ = run_job(study, job)
        target = job.config["databases"][0]
        frames.append(study.evaluate(model, cmap, study.databases([target])[target].test, {
            "model": job.config["name"], "arch": job.config["arch"], "training": "finetune",
            "train_databases": target, "drop": True, "seed": job.config["seed"], "method": method,
            "labels": labels, "held_out": target, "n_train_cases": job.n_cases}))
    return pd.concat(frames, ignore_index=True)


def _finetune_jobs(study: Study, held: Database, loo_config: dict, cmap, ckpt: Path
                   ) -> list[tuple[TrainJob, str, str]]:
    """Table 6's models for one held-out database: scratch, fine-tuned and progressive, with
    limited and with all training labels, for the preset's finetune_fraction of its steps."""
    steps = _fraction_steps(study.preset, "finetune_fraction")
    jobs = []
    for labels in ("limited", "all"):
        n = limited_label_count(held) if labels == "limited" else len(held.train)
        for method in ("scratch", "finetune", "progressive"):
            config = {"name": f"FT-{held.name}-{method}-{labels}",
                      "arch": "progressive" if method == "progressive" else "multiunet", "drop": True,
                      "seed": loo_config["seed"], "databases": [held.name], "n_cases": n,
                      "from": config_key({"ckpt": str(ckpt.parent.name)}) if method != "scratch" else "",
                      "channels": cmap.to_dict()}
            init = None if method == "scratch" else (method, str(ckpt))
            jobs.append((TrainJob(config, steps=steps, n_cases=n, channel_map=cmap.to_dict(), init=init),
                         method, labels))
    return jobs


def save_results(df: pd.DataFrame, out_dir: Path, name: str) -> Path:
    """Write tidy rows to out_dir/results/<name>.csv atomically (temp file, then rename)."""
    import os

    path = Path(out_dir) / "results" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def load_results(out_dir: Path) -> pd.DataFrame:
    """Every tidy results CSV of a study folder, concatenated."""
    files = sorted((Path(out_dir) / "results").glob("*.csv"))
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
