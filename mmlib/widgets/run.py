"""A study folder opened for the explorers: its results, its joint model and the test cases."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mmlib.data.cases import PreparedCase
from mmlib.data.loaders import ChannelMap
from mmlib.experiments.plan.specs import joint_spec
from mmlib.experiments.results.learning import model_records
from mmlib.experiments.run.joint import run_joint
from mmlib.experiments.run.study import Study
from mmlib.widgets.results_explorer import load_results


@dataclass
class OpenedRun:
    """What the explorers need from a study folder."""

    results: pd.DataFrame
    model: Any
    channel_map: ChannelMap
    cases: list[PreparedCase]
    roi: int
    overlap: float
    model_dir: Path
    records: list = field(default_factory=list)  # the models' training records (did each learn?)
    roots: dict = field(default_factory=dict)  # each training database's folder, release or twin
    unavailable: dict = field(default_factory=dict)  # the paper's databases the study lacks, with why


def open_run(out_dir: str | Path, preset: str = "quick", data_root: str | Path | None = None, device: str = "cpu",
             seed: int | None = None) -> OpenedRun:
    """The study in `out_dir` (the README's main command writes runs/quick): its current result rows,
    its joint Multi-Unet with drop and the training databases' test cases. A folder without that
    model gets it from `mmlib joint`'s pipeline, the model notebook 02 would train."""
    study = Study(Path(out_dir), preset, data_root=data_root, device=device, progress=False)
    names = study.training_names()  # the paper's five, or those the study has
    spec = joint_spec("multiunet", True, study.seeds[0] if seed is None else seed, pool=names)
    if not study.is_trained(spec):
        run_joint(study.out_dir, preset=study.preset, data_root=data_root, seed=spec.seed, device=device,
                  progress=False)
    model, cmap = study.train(spec)
    dbs = study.databases(names)
    cases = [c for db in dbs.values() for c in db.test]
    return OpenedRun(load_results(study), model, cmap, cases, study.preset.crop, study.preset.sw_overlap,
                     study.model_dir(spec), model_records(study), {n: db.root for n, db in dbs.items()},
                     study.unavailable())
