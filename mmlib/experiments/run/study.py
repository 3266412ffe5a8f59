"""Where a study runs, and how its models are trained, evaluated and remembered.

A study folder holds:

    study.json                          layout version, preset, data root and each database's source
    databases/<NAME>.json               per database used: release (its folder) or twin, its data identity
    data/  cache/                       synthetic twins (when no data root is given), preprocessing
    models/<name>-s<seed>-<identity>/   final.pt, spec.json, losses.csv, training.json
    evaluations/<model folder>/<id>.csv result rows of one evaluation of one model
    results/<notebook>.csv              each notebook's rows, for reading
    figures/  notebooks/  findings.json  report.md

A model is trained once per identity (`ModelSpec.identity`) and an evaluation is run once per
model, test cases and evaluation settings; everything else reads them back. Tables and findings
read `Study.results()`: the rows of the current protocol only, so rows of an older preset or of
changed data stay on disk but never mix with the current ones.

`Study.run` hands the models it still needs to an executor (mmlib.experiments.run.executors:
local processes by default, or Slurm); the executor calls back `Study.do_job`. Under torchrun every rank runs the same study: they train each
model together, one after another, rank 0 alone writes and decides what is done, and the others
read what it made.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd

from mmlib.atomic_files import atomic_write_json, read_json
from mmlib.data.identity import short_hash
from mmlib.data.loaders import ChannelMap, JointBatches
from mmlib.data.integrity import check_database
from mmlib.data.manifest import ALL_DATABASES, DatabaseManifest, data_root_from_env
from mmlib.data.sources import NO_DATA_GIVEN, RELEASE, TWIN, DatabaseChoice, study_manifest, training_names
from mmlib.data.modalities import sort_modalities
from mmlib.data.preprocess import prepare_database, prepared_identity
from mmlib.data.readers import split_cases
from mmlib.data.synth import ensure_twins, make_twins
from mmlib.engine import distributed
from mmlib.engine.baselines import outlier_baseline
from mmlib.engine.checkpoint import load_model
from mmlib.engine.convergence import Validation, judge_record
from mmlib.engine.device import seed_everything
from mmlib.engine.evaluate import EvalSettings, evaluate_all_combinations, evaluate_cases
from mmlib.engine.predict import study_preprocessing
from mmlib.engine.train import TrainSettings, train
from mmlib.errors import MMLibError
from mmlib.experiments.plan.schedule import batch_per_database, schedule
from mmlib.experiments.plan.specs import Evaluation, Job, ModelSpec, single_test_modality, spec_from_dict, with_parents
from mmlib.experiments.results.rows import read_rows, write_rows
from mmlib.experiments.run.executors import InlineExecutor, config_from_env, executor_from_config
from mmlib.metrics import pooled_dice
from mmlib.models import ProgressiveUNet, assign_new_modalities, build_model
from mmlib.presets import Preset, load_preset

#: Version of the study folder's layout; folders of another version are refused, not mixed.
LAYOUT_VERSION = 2
#: Bump when evaluation code changes the rows it gives (evaluations are then run again).
EVALUATION_VERSION = 2  # 2: rows carry the model's learning record


@dataclass
class Database:
    """A prepared database: its manifest, release folder, train/test cases, the training cases held
    out for validation during training (never test cases), and the identity of each set (what a
    model is trained and validated on, what it is tested on: changing a test case retrains nothing)."""

    manifest: DatabaseManifest
    root: Path
    train: list
    test: list
    train_id: str
    test_id: str
    val: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.manifest.name


@dataclass
class Study:
    """A study folder at one preset on one set of data. `data_root`: a folder holding <NAME>/ per
    database; None: $MMLIB_DATA_ROOT, else each database's $MMLIB_<NAME>_ROOT, else (none of them
    set) the synthetic twins made once in out_dir/data. `seeds` None: the preset's; `processes`
    None: the preset's. `executor`: where `run` trains (executors.executor_from_config; None: the
    configuration in $MMLIB_EXECUTOR, else local processes); never part of a model's identity.
    `databases_asked`: the databases to use ('BRATS,ATLAS,my/MYDB.yaml': a manifest file is your own),
    None: every one whose release is found; `fill_with_twins`: the databases whose synthetic twin
    stands in for a missing release. Both None: as study.json recorded them (mmlib.data.sources)."""

    out_dir: Path
    preset: Preset | str = "quick"
    data_root: Path | None = None
    device: str = "auto"
    seeds: tuple[int, ...] | None = None
    progress: bool = True
    processes: int | None = None
    executor: object = None
    databases_asked: object = None
    fill_with_twins: object = None
    _dbs: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self.preset = load_preset(self.preset)
        self.executor = executor_from_config(config_from_env() if self.executor is None else self.executor)
        distributed.setup(self.device)  # under torchrun: join the other ranks
        self.progress = self.progress and distributed.is_main()
        self.data_root = data_root_from_env(self.data_root)
        if self.databases_asked is None and self.fill_with_twins is None:  # as the folder was set up
            stamp = read_json(self.out_dir / "study.json", {}) if (self.out_dir / "study.json").is_file() else {}
            asked = (stamp.get("asked") if isinstance(stamp, dict) else None) or {}
            self.databases_asked, self.fill_with_twins = asked.get("databases"), asked.get("fill_with_twins")
        self.choice = DatabaseChoice.parse(self.databases_asked, self.fill_with_twins)
        self.manifests, self.fill_with_twins = self.choice.manifests, self.choice.fill_with_twins
        self.sources = self.choice.sources(self.data_root)
        present = [s for s in self.sources.values() if s.available]
        self.twins = bool(present) and all(s.why == NO_DATA_GIVEN for s in present)
        self.seeds = tuple(self.preset.seeds if self.seeds is None else self.seeds)
        if self.processes is None:
            self.processes = self.preset.train_processes
        distributed.on_main(self._claim_folder)

    @classmethod
    def open(cls, out_dir: str | Path, device: str = "cpu", progress: bool = False) -> "Study":
        """The study an existing folder holds, at the preset and data its study.json names."""
        stamp = Path(out_dir) / "study.json"
        if not stamp.is_file():
            raise MMLibError("not a study folder (no study.json): run `mmlib study` or `mmlib joint` there first",
                             out_dir)
        have = read_json(stamp, None)
        if not isinstance(have, dict) or "preset" not in have:
            raise MMLibError("cannot read the study stamp", stamp)
        root = have.get("data_root")
        return cls(Path(out_dir), have["preset"], data_root=root if isinstance(root, str) else None, device=device,
                   progress=progress)

    # -- which databases the study has --------------------------------------------------------------
    def available(self, names) -> list[str]:
        """Those of `names` the study has (a release, or a twin)."""
        return [n for n in names if n in self.sources and self.sources[n].available]

    def training_names(self) -> list[str]:
        """The study's training databases: the paper's five where a user has them all, else those present."""
        return training_names(self.sources, self.manifests)

    def unavailable(self) -> dict[str, str]:
        """The paper's databases the study lacks, with why ('TBI is private')."""
        return {n: s.why for n, s in self.sources.items() if n in ALL_DATABASES and not s.available}

    def synthetic(self, names) -> str:
        """Which of `names` are synthetic twins here, as a row records them ('TBI+TUMOR2'; '' for none)."""
        return "+".join(n for n in sorted(set(names)) if n in self.sources and self.sources[n].kind == TWIN)

    # -- the folder ------------------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.out_dir / "models"

    def _claim_folder(self) -> None:
        """Write study.json, or check that the folder holds a study of this layout, preset and data."""
        stamp = self.out_dir / "study.json"
        want = {"layout": LAYOUT_VERSION, "preset": self.preset.name, "data_root": self._data_source(),
                "asked": self.choice.to_json(),
                "sources": {n: s.to_json() for n, s in self.sources.items()}}
        if stamp.is_file():
            have = read_json(stamp, None)
            if not isinstance(have, dict):
                raise MMLibError("cannot read the study stamp; delete it to start the study again", stamp)
            if have.get("layout") != LAYOUT_VERSION:
                raise MMLibError(f"the folder holds a study of layout {have.get('layout')}, this mmlib writes "
                                 f"layout {LAYOUT_VERSION}; use another --out", self.out_dir)
            # Twins and real data never share a folder, nor do two copies of a release (a copy keeps
            # sizes and times, so the data identity cannot tell them apart). A database found where it
            # was missing, or its release where a twin stood in, trains new models beside the others.
            for key in ("preset", "data_root"):
                if have.get(key) != want[key] and (key == "preset" or not self._may_add_sources(have)):
                    raise MMLibError(f"the folder holds a study with {key} {have.get(key)!r}, not {want[key]!r}; "
                                     f"use another --out so that their results do not mix", self.out_dir)
            if {k: have.get(k) for k in want} != want and distributed.is_main():
                earlier = have.get("earlier_sources", []) + ([have["sources"]] if have.get("sources") else [])
                atomic_write_json(stamp, {**want, "earlier_sources": earlier})
            return
        older = [p for p in ("results", "models") if (self.out_dir / p).is_dir() and any((self.out_dir / p).iterdir())]
        if older:
            raise MMLibError(f"the folder holds {' and '.join(older)} of an older mmlib layout (no study.json); "
                             f"they cannot be mixed with this version's: use another --out", self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(stamp, want)

    def _may_add_sources(self, have: dict) -> bool:
        """Whether this run's databases may join the folder's: both real data, and no release of the
        folder's found in another folder now."""
        before = have.get("sources")
        if None in (have.get("data_root"), self._data_source()) or not isinstance(before, dict):
            return False
        return not any(old.get("kind") == RELEASE and n in self.sources and self.sources[n].kind == RELEASE
                       and old.get("root") != self.sources[n].root for n, old in before.items())

    def _data_source(self) -> str | dict | None:
        """Where the data comes from, as study.json records it: None for twins, a folder, or the
        per-database variables."""
        if self.twins:
            return None
        if self.data_root is not None:
            return str(self.data_root.resolve())
        return {k: str(Path(v).resolve()) for k, v in sorted(os.environ.items())
                if k.startswith("MMLIB_") and k.endswith("_ROOT") and v}

    # -- data ------------------------------------------------------------------------------------
    def databases(self, names) -> dict[str, Database]:
        """Prepared databases by name (made, preprocessed and cached on first use; under torchrun
        by rank 0 first, so that the others read its files and all see the same data identity)."""
        names = list(names)
        distributed.main_first(self._load, names)
        return {n: self._dbs[n] for n in names}

    def _load(self, names) -> None:
        for name in [n for n in names if n not in self._dbs]:
            source = self.sources.get(name)
            if source is None or not source.available:
                why = "not a database of this study" if source is None else source.why
                raise MMLibError(f"database {name} is not available ({why})", self.out_dir)
            manifest = study_manifest(name, self.manifests)
            if self.twins:
                root = ensure_twins(self.out_dir / "data", self.preset, seed=0, progress=self.progress) / name
            elif source.kind == TWIN:  # asked for: made alone, beside the releases
                root = make_twins(self.out_dir / "data", self.preset, seed=0, databases=[name], progress=self.progress,
                                  reuse=True)[name]
            else:
                root = Path(source.root)
            if source.manifest:  # your own database: its integrity check first, every problem named
                problems = check_database(manifest, root, progress=False).problems
                if problems:
                    raise MMLibError(f"database {name} fails `mmlib check` ({len(problems)} problem(s)): "
                                     + "; ".join(f"{p.file}: {p.problem}" for p in problems[:5]), source.manifest)
            cases = prepare_database(manifest, root, self.preset.spacing_mm, self.out_dir / "cache",
                                     progress=self.progress)
            train, test = ([], list(cases)) if manifest.evaluation_only else split_cases(manifest, cases)
            # Validation cases: the last training cases by name (as the test cases are the last).
            n_val = self.preset.validation_count(len(train))
            train, val = list(train[:len(train) - n_val]), list(train[len(train) - n_val:])
            # A twin asked for beside releases says so in its identity (a release later trains anew).
            mark = "twin-" if source.kind == TWIN and not self.twins else ""
            db = self._dbs[name] = Database(manifest, root, train, list(test),
                                            mark + prepared_identity(manifest, root, train + val) + f"-v{n_val}",
                                            mark + prepared_identity(manifest, root, test), val)
            if distributed.is_main():  # what the study got: release (its folder) or twin, and its data identity
                atomic_write_json(self.out_dir / "databases" / f"{name}.json", {
                    **source.to_json(), "train_id": db.train_id, "test_id": db.test_id,
                    "cases": {"train": len(train), "validation": n_val, "test": len(test)}})

    def data_ids(self, names) -> dict[str, str]:
        """The identity of each database's training cases (what a model's identity holds)."""
        return {n: d.train_id for n, d in self.databases(names).items()}

    def _spec_data_ids(self, spec: ModelSpec) -> dict[str, str]:
        return self.data_ids(sorted(_lineage(spec)))

    # -- models ----------------------------------------------------------------------------------
    def model_dir(self, spec: ModelSpec) -> Path:
        return self.models_dir / spec.folder_name(self.preset, self._spec_data_ids(spec))

    def is_trained(self, spec: ModelSpec) -> bool:
        final = self.model_dir(spec) / "final.pt"
        return distributed.on_main(final.is_file)

    def train(self, spec: ModelSpec):
        """The trained model of `spec` (trained now if it is not saved yet) -> (model, channel map)."""
        run_dir = self.model_dir(spec)
        final = run_dir / "final.pt"
        if self.is_trained(spec):
            model, cmap, _ = load_model(final, device=self.device)
            return model, ChannelMap.from_dict(cmap)
        dbs = self.databases(spec.databases)
        sets = {n: (d.train[:spec.n_cases] if spec.n_cases else d.train) for n, d in dbs.items()}
        if spec.parent is None:
            cmap = ChannelMap.from_databases([d.manifest for d in dbs.values()])
        else:
            base, parent_map = self.train(spec.parent)
            cmap = eval_channel_map(parent_map, dbs[spec.databases[0]].manifest.modalities)
        # The seed owns the initial weights too: seed before building (or copying) the network.
        seed_everything(spec.seed)
        if spec.parent is None:
            model = build_model(spec.arch, len(cmap), self.preset.width)
        else:
            model = ProgressiveUNet(base.cpu()) if spec.start == "progressive" else base.cpu()
        batches = JointBatches(sets, cmap, crop=self.preset.crop,
                               batch_per_database=batch_per_database(self.preset, len(sets)),
                               drop=spec.trained.drop, rotate_p=self.preset.rotate_p,
                               lesion_crop_p=self.preset.lesion_crop_p, seed=spec.seed,
                               rotate_planes=self.preset.rotate_planes)
        plan = schedule(spec, self.preset, batches.epoch_length())
        distributed.on_main(atomic_write_json, run_dir / "spec.json", asdict(spec))
        config = {"arch": spec.net, "width": self.preset.width, "dice_batch": self.preset.dice_batch,
                  "loss": self.preset.loss, "lr_schedule": self.preset.lr_schedule, "warmup_steps": plan.warmup_steps,
                  "name": spec.trained.name, "identity": run_dir.name,
                  "preprocessing": study_preprocessing(self.preset)}  # so `mmlib predict` needs no study
        settings = TrainSettings(plan.steps, self.preset.lr, plan.lr_drop_step, device=self.device, amp=self.preset.amp,
                                 seed=spec.seed, progress=self.progress,
                                 select_best=self.preset.model_selection == "best")
        train(model, batches, settings, run_dir, config, cmap.to_dict(), self._validation(dbs, cmap))
        return model, cmap

    def _validation(self, dbs: dict[str, Database], cmap) -> Validation | None:
        """Validation Dice of a model during training on its databases' validation cases (all of
        each one's modalities, pooled over the cases: mmlib.metrics.pooled_dice), and the
        label-free floor on the same cases."""
        held = {n: d.val for n, d in dbs.items() if d.val}
        if not held:
            return None
        settings = self.eval_settings(progress=False, across_ranks=False)

        def measure(model) -> dict[str, float]:
            return {n: pooled_dice(evaluate_cases(model, cases, cmap, settings)) for n, cases in held.items()}

        floor = {n: pooled_dice(outlier_baseline(cases, single_test_modality(dbs[n].manifest.modalities)))
                 for n, cases in held.items()}
        return Validation(measure, floor, self.preset.val_points)

    def learning(self, spec: ModelSpec) -> dict:
        """A trained model's record (training.json: precision, validation curve, whether it learnt
        and converged); {} for a model trained before mmlib kept one."""
        record = distributed.on_main(read_json, self.model_dir(spec) / "training.json", {})
        return record if isinstance(record, dict) else {}

    # -- evaluations -----------------------------------------------------------------------------
    def eval_settings(self, progress: bool, across_ranks: bool) -> EvalSettings:
        """How this study evaluates a model: the preset's window, overlap and precision on its device."""
        return EvalSettings(roi=self.preset.crop, overlap=self.preset.sw_overlap, device=self.device,
                            amp=self.preset.amp, progress=progress, across_ranks=across_ranks)

    def evaluation_settings(self) -> str:
        """Hash of the settings that change evaluation rows but not the trained model."""
        return short_hash({"roi": self.preset.crop, "overlap": self.preset.sw_overlap, "amp": self.preset.amp,
                           "version": EVALUATION_VERSION})

    def _evaluation_file(self, spec: ModelSpec, ev: Evaluation) -> Path:
        db = self.databases([ev.database])[ev.database]
        key = short_hash({"evaluation": asdict(ev), "settings": self.evaluation_settings(), "data": db.test_id})
        return self.out_dir / "evaluations" / self.model_dir(spec).name / f"{ev.database}-{key}.csv"

    def evaluate(self, spec: ModelSpec, ev: Evaluation, model=None, cmap=None) -> pd.DataFrame:
        """The rows of `spec` evaluated as `ev` says (run now, or read back)."""
        path = self._evaluation_file(spec, ev)
        saved = distributed.on_main(lambda: read_rows(path) if path.is_file() else None)
        if saved is not None:
            return saved
        if model is None:
            model, cmap = self.train(spec)
        rows = self._run_evaluation(spec, ev, model, cmap)
        rows = rows.assign(**spec.row_columns(), **learning_columns(self.learning(spec), ev.database),
                           preset=self.preset.name, model_id=self.model_dir(spec).name,
                           eval_settings=self.evaluation_settings(),
                           synthetic_databases=self.synthetic(_lineage(spec) | {ev.database}),
                           eval_data_id=self.databases([ev.database])[ev.database].test_id)
        distributed.on_main(write_rows, rows, path)
        return rows

    def _run_evaluation(self, spec: ModelSpec, ev: Evaluation, model, cmap) -> pd.DataFrame:
        db = self.databases([ev.database])[ev.database]
        if ev.database not in spec.databases:  # a database the model never saw (Appendix B)
            cmap = eval_channel_map(cmap, db.manifest.modalities)
        settings, name = self.eval_settings(progress=self.progress, across_ranks=True), spec.trained.name
        if ev.combinations:
            rows = evaluate_all_combinations(model, db.test, cmap, settings, model_name=name)
        else:
            # Subsets the model has no channel for are the paper's n/a cells; () = all modalities.
            subsets = [s or None for s in ev.subsets if not s or all(_has_channel(cmap, m) for m in s)]
            rows = (evaluate_cases(model, db.test, cmap, settings, subsets=subsets, model_name=name) if subsets
                    else pd.DataFrame(columns=["database", "subset"]))
        full = "+".join(sort_modalities(db.manifest.modalities))
        return rows.assign(all_modalities=rows["subset"] == full)

    # -- running jobs ----------------------------------------------------------------------------
    def run(self, jobs: list[Job]) -> pd.DataFrame:
        """Train and evaluate what `jobs` need and is not saved yet (through the executor, parents
        before the models fine-tuned from them); every job's rows."""
        jobs = with_parents(jobs)
        pending = distributed.on_main(lambda: [j for j in jobs if not self.is_trained(j.spec) or any(
            not self._evaluation_file(j.spec, e).is_file() for e in j.evaluations)])
        while pending:
            ready = [j for j in pending if j.spec.parent is None or self.is_trained(j.spec.parent)]
            self._work(ready)
            pending = [j for j in pending if j not in ready]
        frames = [self.evaluate(j.spec, e) for j in jobs for e in j.evaluations]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def _work(self, jobs: list[Job]) -> None:
        if distributed.collective():  # under torchrun the ranks train each model together
            return InlineExecutor().run(self, jobs)
        self.executor.run(self, jobs)

    def do_job(self, job: Job) -> None:
        """Train the job's model (or find it trained) and run the evaluations it owes."""
        model, cmap = self.train(job.spec)
        for ev in job.evaluations:
            self.evaluate(job.spec, ev, model, cmap)

    def reopener(self) -> partial:
        """A picklable call that opens this study again in another process (an executor's worker):
        same folder, preset, data, device and seeds, no progress bars, its jobs run inline."""
        return partial(type(self), self.out_dir, self.preset, data_root=self.data_root, device=self.device,
                       seeds=self.seeds, progress=False, processes=1, executor="inline",
                       databases_asked=self.choice.to_json()["databases"], fill_with_twins=self.fill_with_twins)

    # -- reading results back ----------------------------------------------------------------------
    def results(self) -> pd.DataFrame:
        """Every result row in the study folder that belongs to the current protocol: models whose
        identity is current, evaluated with the current settings on the current data."""
        folder = self.out_dir / "evaluations"
        frames = []
        current_settings = self.evaluation_settings()
        for model_dir in sorted(folder.glob("*")) if folder.is_dir() else []:
            if not self.is_current_model(model_dir.name):
                continue
            for path in sorted(model_dir.glob("*.csv")):
                rows = read_rows(path)
                db = rows["database"].iloc[0] if len(rows) else None
                if db is None or rows["eval_settings"].iloc[0] != current_settings or not self.available([db]):
                    continue
                if rows["eval_data_id"].iloc[0] != self.databases([db])[db].test_id:
                    continue
                frames.append(rows)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def is_current_model(self, folder: str) -> bool:
        if folder.startswith("rule-"):
            return True  # baselines: their data identity is checked per file
        spec_file = self.models_dir / folder / "spec.json"
        if not spec_file.is_file():
            return False
        try:
            spec = spec_from_dict(json.loads(spec_file.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise MMLibError(f"unreadable model description ({exc})", spec_file) from None
        if len(self.available(_lineage(spec))) < len(_lineage(spec)):
            return False  # trained on a database this run does not have
        return self.model_dir(spec).name == folder


def _lineage(spec: ModelSpec) -> set[str]:
    """Every database a model learnt from: its own and its parents'."""
    names = set()
    while spec is not None:
        names.update(spec.databases)
        spec = spec.parent
    return names


def learning_columns(record: dict, database: str) -> dict:
    """The columns a model's result rows on `database` carry from its training record: whether it
    learnt that database (above the label-free floor on its validation cases; for a database it
    never trained on: learnt as a whole), converged ('' where unknown), that validation Dice and
    floor, and the precision it trained in."""
    learning = judge_record(record).to_json() if record else {}
    own = (learning.get("databases") or {}).get(database)

    def flag(value) -> object:
        return "" if value is None else bool(value)

    if own is not None:
        learnt, dice, floor = own["learnt"], own["dice"], own["floor"]
    else:
        learnt, dice, floor = learning.get("learnt"), learning.get("final_dice"), None
    return {"learnt": flag(learnt), "converged": flag(learning.get("converged")), "val_dice": dice,
            "val_floor": floor, "train_precision": record.get("precision", "")}


def _has_channel(cmap, modality: str) -> bool:
    try:
        cmap.index(modality)
    except Exception:
        return False
    return True


def eval_channel_map(cmap, modalities):
    """The channel map extended for a database the model never saw: its modalities without a
    channel take free channels (Appendix B; SWI -> PD for TBI). Unchanged when none is free."""
    new = [m for m in modalities if not _has_channel(cmap, m)]
    if not new:
        return cmap
    try:
        mapping = assign_new_modalities(cmap.modalities, modalities)
    except MMLibError:
        return cmap  # subsets that need them are skipped (n/a)
    return cmap.with_assignments({m: mapping[m] for m in new})


__all__ = ["LAYOUT_VERSION", "Database", "Evaluation", "Job", "Study", "eval_channel_map",
           "learning_columns"]
