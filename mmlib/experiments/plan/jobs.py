"""Each notebook's jobs: which models it trains and the evaluations each owes, as pure functions
of the preset, the seeds and the prepared databases (`dbs`: name -> a database with `.manifest` and
`.train`, as `Study.databases` gives them). A model of notebook 01 is found again by notebooks
02-04 and by `mmlib joint` because its spec, and so its identity, is the same."""

from __future__ import annotations

from mmlib.data.manifest import TRAINING_DATABASES
from mmlib.experiments.plan.specs import (NEW_MODALITY_SETS, Evaluation, Job, finetune_spec, joint_spec,
                                          limited_label_count, loo_spec, pool_order, sd_spec, single_test_modality)
from mmlib.presets import JointVariant, Preset


def _sd(preset: Preset, name: str, db, arch: str, drop: bool, seed: int, n_cases: int | None = None):
    return sd_spec(name, arch, drop, seed, len(db.manifest.modalities), preset.study.sd_fraction,
                   n_cases)


def sd_jobs(preset: Preset, seeds, dbs: dict, archs=("multiunet",), drops=(False, True)) -> list[Job]:
    """Single-database models of `dbs`, each evaluated on every modality combination of its test cases."""
    return [Job(_sd(preset, name, db, arch, drop, seed), (Evaluation(name, combinations=True),))
            for name, db in dbs.items() for arch in archs for drop in drops for seed in seeds]


def single_database_jobs(preset: Preset, seeds, dbs: dict, fusion: bool = True) -> list[Job]:
    """Table 2 and the SD rows of Table 3: Multi-Unet per database with and without drop, and the
    plan's fusion architectures (LFUnet, MAFUnet) on the plan's fusion databases."""
    plan = preset.study
    jobs = sd_jobs(preset, seeds, dbs)
    if fusion:
        jobs += sd_jobs(preset, seeds, {n: d for n, d in dbs.items() if n in plan.fusion_databases},
                        plan.fusion_archs)
    return jobs


def joint_jobs(preset: Preset, seeds, variants: list[JointVariant] | None = None, pool=TRAINING_DATABASES,
               evaluation_only=()) -> list[Job]:
    """Joint models of the training databases `pool` (the paper's five, or those a user has), each
    evaluated on every pool database's test cases and, with each case's own modalities, on the
    `evaluation_only` databases (a user's own: its new modalities placed as in Appendix B)."""
    plan = preset.study
    evaluations = tuple(Evaluation(db, combinations=plan.joint_all_combinations) for db in pool_order(pool))
    evaluations += tuple(Evaluation(db) for db in evaluation_only)
    return [Job(joint_spec(v.arch, v.drop, seed, pool=pool), evaluations)
            for v in (variants or plan.joint_variants) for seed in seeds]


#: The training databases whose models notebook 03 evaluates on the new modality sets.
NEW_MODALITY_SOURCES = ("ATLAS", "BRATS")


def new_modality_jobs(preset: Preset, seeds, dbs: dict, pool=TRAINING_DATABASES, targets=tuple(NEW_MODALITY_SETS)
                      ) -> list[Job]:
    """Table 4 (and 9-10): ISLES with T1; T1,T2; FLAIR,T1,T2 and Tumor 2 with T1 (those of `targets`
    the study has), segmented by the ATLAS-only, BRATS-only (drop) and joint (with and without drop)
    models of `pool` (`dbs`: ATLAS, BRATS)."""
    evaluations = tuple(Evaluation(db, subsets) for db, subsets in NEW_MODALITY_SETS.items() if db in targets)
    jobs = []
    for seed in seeds:
        specs = (_sd(preset, "ATLAS", dbs["ATLAS"], "multiunet", False, seed),
                 _sd(preset, "BRATS", dbs["BRATS"], "multiunet", True, seed),
                 joint_spec("multiunet", False, seed, pool=pool), joint_spec("multiunet", True, seed, pool=pool))
        jobs += [Job(spec, evaluations) for spec in specs]
    return jobs


def unseen_pathology_jobs(preset: Preset, seeds, target: str, held, finetune: bool = True,
                          pool=TRAINING_DATABASES) -> list[Job]:
    """Tables 5 and 6 for one held-out database `target` (prepared: `held`): a joint Multi-Unet (drop) of the other four,
    0-shot from 'FLAIR or T1' and from all modalities, beside the single-database upper bound; then
    (Table 6) models trained on it from scratch (no drop, as Unet-SD), fine-tuned from the joint
    model, and as progressive nets on it, with limited and with all labels. `pool`: the study's training
    databases (the paper's five, or those a user has)."""
    plan = preset.study
    single = single_test_modality(held.manifest.modalities)
    limited = limited_label_count(target, len(held.train), held.manifest.split_train)
    jobs = []
    for seed in seeds:
        loo = loo_spec(target, seed, pool)
        jobs.append(Job(loo, (Evaluation(target, ((single,), ())),)))
        upper = _sd(preset, target, held, "multiunet", False, seed)
        jobs.append(Job(upper, (Evaluation(target, combinations=True),)))  # notebook 01's evaluation
        if finetune:
            own = (Evaluation(target),)
            jobs.append(Job(_sd(preset, target, held, "multiunet", False, seed, n_cases=limited), own))
            for start in ("finetune", "progressive"):
                for n in (limited, None):
                    jobs.append(Job(finetune_spec(loo, target, start, n, plan.finetune_fraction), own))
    return jobs


__all__ = ["sd_jobs", "single_database_jobs", "joint_jobs", "NEW_MODALITY_SOURCES", "new_modality_jobs",
           "unseen_pathology_jobs"]
