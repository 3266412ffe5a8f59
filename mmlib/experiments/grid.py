"""The study's models and evaluations, one function per notebook, each returning tidy rows.

Every function lists its jobs (a `ModelSpec` and the evaluations it owes) and hands them to
`Study.run`, which trains and evaluates only what is not saved yet: a model of notebook 01 is
found again by notebooks 02-04 and by `mmlib joint` when its identity matches.
"""

from __future__ import annotations

import pandas as pd

from mmlib.data.manifest import EVALUATION_DATABASES, TRAINING_DATABASES
from mmlib.experiments.protocol import (NEW_MODALITY_SETS, finetune_spec, joint_spec, limited_label_count,
                                        loo_spec, sd_spec, short_hash, single_test_modality)
from mmlib.experiments.study import Evaluation, Job, Study
from mmlib.presets import JointVariant


def _sd(study: Study, database: str, arch: str, drop: bool, seed: int, n_cases: int | None = None):
    db = study.databases([database])[database]
    return sd_spec(database, arch, drop, seed, len(db.manifest.modalities), study.preset.study.sd_fraction, n_cases)


def sd_jobs(study: Study, databases=TRAINING_DATABASES, archs=("multiunet",), drops=(False, True)) -> list[Job]:
    """Single-database models, each evaluated on every modality combination of its test cases."""
    return [Job(_sd(study, db, arch, drop, seed), (Evaluation(db, combinations=True),))
            for db in databases for arch in archs for drop in drops for seed in study.seeds]


def single_database(study: Study, databases=TRAINING_DATABASES, fusion: bool = True) -> pd.DataFrame:
    """Table 2 and the SD rows of Table 3: Multi-Unet per database with and without drop, and the
    plan's fusion architectures (LFUnet, MAFUnet) on the plan's fusion databases."""
    plan = study.preset.study
    jobs = sd_jobs(study, databases)
    if fusion:
        jobs += sd_jobs(study, [d for d in databases if d in plan.fusion_databases], plan.fusion_archs)
    return study.run(jobs)


def joint_jobs(study: Study, variants=None, seeds=None) -> list[Job]:
    """Joint models of the five training databases, evaluated on each database's test cases."""
    plan = study.preset.study
    combos = plan.joint_all_combinations
    evaluations = tuple(Evaluation(db, combinations=combos) for db in TRAINING_DATABASES)
    return [Job(joint_spec(v.arch, v.drop, seed), evaluations)
            for v in (variants or plan.joint_variants) for seed in (seeds or study.seeds)]


def joint_training(study: Study, variants: list[JointVariant] | None = None) -> pd.DataFrame:
    """Table 3 (and 7-8): the plan's joint variants (default) on the five training databases."""
    return study.run(joint_jobs(study, variants))


def new_modality_sets(study: Study) -> pd.DataFrame:
    """Table 4 (and 9-10): ISLES with T1; T1,T2; FLAIR,T1,T2 and Tumor 2 with T1, segmented by the
    ATLAS-only, BRATS-only (drop) and joint (with and without drop) models."""
    evaluations = tuple(Evaluation(db, subsets) for db, subsets in NEW_MODALITY_SETS.items())
    jobs = []
    for seed in study.seeds:
        specs = (_sd(study, "ATLAS", "multiunet", False, seed), _sd(study, "BRATS", "multiunet", True, seed),
                 joint_spec("multiunet", False, seed), joint_spec("multiunet", True, seed))
        jobs += [Job(spec, evaluations) for spec in specs]
    study.databases(EVALUATION_DATABASES)
    return study.run(jobs)


def unseen_pathologies(study: Study, targets=None, finetune: bool = True) -> pd.DataFrame:
    """Tables 5 and 6: per held-out database a joint Multi-Unet (drop) of the other four, 0-shot
    from 'FLAIR or T1' and from all modalities; beside it the single-database upper bound, the
    label-free floor and the supervised threshold rule; then (Table 6) models trained on the
    held-out database from scratch (no drop, as Unet-SD), fine-tuned from the joint model, and as
    progressive nets on it, with limited and with all labels."""
    plan = study.preset.study
    jobs, rules = [], []
    for target in targets or plan.loo_targets:
        held = study.databases([target])[target]
        single = single_test_modality(held.manifest.modalities)
        limited = limited_label_count(target, len(held.train), held.manifest.split_train)
        for seed in study.seeds:
            loo = loo_spec(target, seed)
            jobs.append(Job(loo, (Evaluation(target, ((single,), ())),)))
            upper = _sd(study, target, "multiunet", False, seed)
            jobs.append(Job(upper, (Evaluation(target, combinations=True),)))  # notebook 01's evaluation
            if finetune:
                own = (Evaluation(target),)
                jobs.append(Job(_sd(study, target, "multiunet", False, seed, n_cases=limited), own))
                for start in ("finetune", "progressive"):
                    for n in (limited, None):
                        jobs.append(Job(finetune_spec(loo, target, start, n, plan.finetune_fraction), own))
        rules.append(baselines(study, target, single))
    return pd.concat([study.run(jobs), *rules], ignore_index=True)


def baselines(study: Study, database: str, modality: str | None,
              kinds: tuple[str, ...] = ("outlier", "threshold")) -> pd.DataFrame:
    """The label-free outlier rule and the best supervised threshold rule on `modality` of the
    database's test cases (the threshold learnt on its training cases; `modality` None: the best
    over all of its modalities, and no outlier rule); read back when saved."""
    from mmlib.engine.baselines import outlier_baseline, threshold_baseline
    from mmlib.experiments.study import _read_rows, write_rows

    db = study.databases([database])[database]
    frames = []
    for kind in kinds if modality else ("threshold",):
        key = short_hash({"train": db.train_id, "test": db.test_id, "modality": modality})
        path = study.out_dir / "evaluations" / f"rule-{kind}" / f"{database}-{modality or 'any'}-{key}.csv"
        if path.is_file():
            frames.append(_read_rows(path))
            continue
        if kind == "outlier":
            rows = outlier_baseline(db.test, modality).assign(train_databases="", labels="none")
        else:
            rows = threshold_baseline(db.train, db.test, modalities=None if modality is None else (modality,)
                                      ).assign(train_databases=database, labels="all")
        rows = rows.assign(model=f"{kind} rule", arch=kind, training="rule", drop=False, seed=0, method="",
                           held_out="", n_train_cases="", preset=study.preset.name, model_id=f"rule-{kind}",
                           eval_settings=study.evaluation_settings(), eval_data_id=db.test_id,
                           all_modalities=False)
        frames.append(rows)
        write_rows(rows, path)
    return pd.concat(frames, ignore_index=True)


__all__ = ["sd_jobs", "single_database", "joint_jobs", "joint_training", "new_modality_sets",
           "unseen_pathologies", "baselines"]
