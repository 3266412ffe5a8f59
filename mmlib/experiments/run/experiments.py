"""The study's experiments, one function per notebook, each returning tidy rows.

Every function takes its notebook's jobs (mmlib.experiments.plan.jobs) and hands them to
`Study.run`, which trains and evaluates only what is not saved yet; the label-free and threshold
rules of Table 5 are run (or read back) here too.
"""

from __future__ import annotations

import pandas as pd

from mmlib.data.identity import short_hash
from mmlib.data.manifest import EVALUATION_DATABASES
from mmlib.engine.baselines import outlier_baseline, threshold_baseline
from mmlib.experiments.plan.jobs import (NEW_MODALITY_SOURCES, joint_jobs, new_modality_jobs, single_database_jobs,
                                         unseen_pathology_jobs)
from mmlib.experiments.plan.specs import single_test_modality
from mmlib.experiments.results.rows import read_rows, write_rows
from mmlib.experiments.run.study import Study
from mmlib.presets import JointVariant


def single_database(study: Study, databases=None, fusion: bool = True) -> pd.DataFrame:
    """Table 2 and the SD rows of Table 3 (plan.jobs.single_database_jobs); `databases` None: the
    study's training databases (those it has)."""
    names = study.training_names() if databases is None else databases
    return study.run(single_database_jobs(study.preset, study.seeds, study.databases(names), fusion))


def joint_training(study: Study, variants: list[JointVariant] | None = None) -> pd.DataFrame:
    """Table 3 (and 7-8): the plan's joint variants (default) on the study's training databases
    (the paper's five, or the four a user without TBI has: a model of its own)."""
    return study.run(joint_jobs(study.preset, study.seeds, variants, study.training_names()))


def new_modality_sets(study: Study) -> pd.DataFrame:
    """Table 4 (and 9-10): the new modality sets of ISLES and Tumor 2 (plan.jobs.new_modality_jobs),
    those of the two the study has."""
    targets = study.available(EVALUATION_DATABASES)
    jobs = new_modality_jobs(study.preset, study.seeds, study.databases(NEW_MODALITY_SOURCES),
                             study.training_names(), targets)
    study.databases(targets)
    return study.run(jobs)


def unseen_pathologies(study: Study, targets=None, finetune: bool = True) -> pd.DataFrame:
    """Tables 5 and 6 per held-out database (plan.jobs.unseen_pathology_jobs), beside the label-free
    floor and the supervised threshold rule on 'FLAIR or T1'. A target the study lacks is left out
    (the tables say 'not available')."""
    jobs, rules = [], []
    for target in study.available(targets or study.preset.study.loo_targets):
        held = study.databases([target])[target]
        jobs += unseen_pathology_jobs(study.preset, study.seeds, target, held, finetune, study.training_names())
        rules.append(baselines(study, target, single_test_modality(held.manifest.modalities)))
    return pd.concat([study.run(jobs), *rules], ignore_index=True)


def baselines(study: Study, database: str, modality: str | None,
              kinds: tuple[str, ...] = ("outlier", "threshold")) -> pd.DataFrame:
    """The label-free outlier rule and the best supervised threshold rule on `modality` of the
    database's test cases (the threshold learnt on its training cases; `modality` None: the best
    over all of its modalities, and no outlier rule); read back when saved."""
    db = study.databases([database])[database]
    frames = []
    for kind in kinds if modality else ("threshold",):
        key = short_hash({"train": db.train_id, "test": db.test_id, "modality": modality})
        path = study.out_dir / "evaluations" / f"rule-{kind}" / f"{database}-{modality or 'any'}-{key}.csv"
        if path.is_file():
            frames.append(read_rows(path))
            continue
        if kind == "outlier":
            rows = outlier_baseline(db.test, modality).assign(train_databases="", labels="none")
        else:
            rows = threshold_baseline(db.train, db.test, modalities=None if modality is None else (modality,)
                                      ).assign(train_databases=database, labels="all")
        rows = rows.assign(model=f"{kind} rule", arch=kind, training="rule", drop=False, seed=0, method="",
                           held_out="", n_train_cases="", preset=study.preset.name, model_id=f"rule-{kind}",
                           eval_settings=study.evaluation_settings(), eval_data_id=db.test_id,
                           synthetic_databases=study.synthetic([database]),
                           all_modalities=False)
        frames.append(rows)
        write_rows(rows, path)
    return pd.concat(frames, ignore_index=True)


__all__ = ["single_database", "joint_training", "new_modality_sets", "unseen_pathologies", "baselines"]
