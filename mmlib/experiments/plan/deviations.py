"""How the study's protocol departs from the paper's, aspect by aspect, at a preset: one table
(`deviations_frame`), shown once at the top of a notebook and of report.md; each result table
under it carries one line (`deviation_note`): how many aspects of the protocol differ (they bear
on every table) and which of the paper's models for that table the preset leaves out."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from mmlib.data.manifest import TRAINING_DATABASES
from mmlib.data.sources import NO_DATA_GIVEN, RELEASE, TWIN
from mmlib.engine.convergence import RULE as CONVERGENCE_RULE
from mmlib.engine.train import COSINE_FLOOR
from mmlib.experiments.plan.schedule import Schedule, batch_per_database
from mmlib.experiments.plan.specs import ARCHITECTURES
from mmlib.presets import Preset

#: The authors' schedule: 600 epochs of the largest training database (ATLAS, 459 cases) in
#: batches of 2 per database, i.e. 229 steps an epoch.
PAPER_STEPS = 600 * (459 // 2)
PAPER_CROPS_PER_DATABASE = PAPER_STEPS * 2


@dataclass(frozen=True)
class Deviation:
    """One aspect of the protocol: the paper's value, ours at a preset, and whether they differ."""

    aspect: str
    paper: str
    ours: str
    differs: bool = field(default=True)


def _fraction(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def deviations(preset: Preset, precision: str | None = None, sources: dict | None = None) -> list[Deviation]:
    """Every aspect of the training and evaluation protocol, the paper's value beside the preset's
    (the paper's: its Methods, Appendix A and the authors' published code). `precision`: what a
    run's models really trained in (mmlib.experiments.results.learning.run_precision), where known.
    `sources`: each database's source (mmlib.data.sources) where a run uses releases: the databases
    used and the twins standing in for releases are two more aspects."""
    plan = preset.study
    joint = Schedule(preset.steps, 0, batch_per_database(preset, len(TRAINING_DATABASES))) if preset.steps else None
    sd_batch = batch_per_database(preset, 1)
    if preset.steps:
        sd_steps = max(1, round(preset.steps * plan.sd_fraction))
        ft_steps = max(1, round(preset.steps * plan.finetune_fraction))
        crops = (f"joint {joint.crops_per_database:,}; single-database {sd_steps * sd_batch:,}; "
                 f"fine-tuning {ft_steps * sd_batch:,}")
        steps = (f"{preset.steps:,} steps (single-database x{_fraction(plan.sd_fraction)}, fine-tuning "
                 f"x{_fraction(plan.finetune_fraction)}); {_lr_words(preset)}")
    else:  # by epochs: on the real databases, the paper's schedule
        crops = (f"{PAPER_CROPS_PER_DATABASE:,} (2 per step)" if (preset.epochs, preset.batch_per_database) == (600, 2)
                 else f"{preset.epochs} epochs x {preset.batch_per_database} per step")
        steps = (f"600 epochs ({PAPER_STEPS:,} steps); lr x0.1 after 0.25 of them"
                 if (preset.epochs, preset.lr_drop_fraction) == (600, 0.25) else
                 f"{preset.epochs} epochs of the largest database; lr x0.1 after {_fraction(preset.lr_drop_fraction)} of them")
    planes = ", ".join(f"({a}, {b})" for a, b in preset.rotate_planes)
    skipped = [text for text, _ in skipped_models(preset)]
    rows = [
        ("voxel spacing", "1 mm", f"{preset.spacing_mm:g} mm"),
        ("training crop and sliding window", "128³", f"{preset.crop}³"),
        ("crop sampling", "uniform random crops",
         "uniform random crops" if not preset.lesion_crop_p else
         f"{_fraction(preset.lesion_crop_p)} of crops centred on a lesion voxel, the rest uniform"),
        ("network width", "x1 (16-256 channels)", f"x{preset.width:g}"),
        ("schedule", f"600 epochs ({PAPER_STEPS:,} steps); lr x0.1 after 0.25 of them", steps),
        ("crops seen per database by one model", f"{PAPER_CROPS_PER_DATABASE:,} (2 per step)", crops),
        ("precision", "float32", precision or (
            "bf16 autocast, training and evaluation, where the network passes a bf16 self-check on the machine "
            "(else, and on a CPU without native bf16, float32; a non-finite value under bf16 goes back to the "
            "last finite state in float32)" if preset.amp else "float32")),
        ("rotation", "90° in plane (0, 2), p 0.1", f"90° in plane{'s' if len(preset.rotate_planes) > 1 else ''} "
                                                   f"{planes}, p {preset.rotate_p:g}"),
        ("seeds per model", "3", str(len(preset.seeds))),
        ("train/test split", "case files sorted by name, the last ones are test",
         "same, with the paper's counts (scaled to a twin's size)"),
        ("background outside the brain", "-mean/std (the whole volume z-scored with the brain's statistics)",
         "0 (z-scored inside the brain, zero outside)"),
        ("validation during training", "Dice on held-out cases, to pick the checkpoint",
         f"{preset.val_fraction:.0%} of each database's training cases held out (the last by name; "
         f"{preset.val_min_cases} to {preset.val_max_cases}), Dice at {preset.val_points} points of training; "
         f"{CONVERGENCE_RULE}"),
        ("model selection", "the checkpoint with the best Dice on the held-out cases",
         "the final weights (nothing is chosen on test cases)" if preset.model_selection == "final" else
         "the weights with the best validation Dice (held-out training cases, never test cases)"),
        ("Dice loss", "per sample (MONAI default)", "per batch" if preset.dice_batch else "per sample (MONAI default)"),
        ("loss", "Dice", "Dice" if preset.loss == "dice" else "Dice + binary cross-entropy (equal weights)"),
        ("models trained", "all of the paper's", "; ".join(skipped) if skipped else "all of the paper's"),
    ]
    return [Deviation(a, p, o, differs=p != o) for a, p, o in rows + database_rows(sources)]


def database_rows(sources: dict | None) -> list[tuple[str, str, str]]:
    """The databases a run used and the twins standing in for releases, beside the paper's; none for
    the default study of twins only (its twins are the study's premise, stated in the README)."""
    if not sources or all(s.why == NO_DATA_GIVEN for s in sources.values() if s.available):
        return []
    paper = "the seven releases: BRATS, ATLAS, MSSEG, TBI, WMH to train; ISLES, Tumor 2 to evaluate (Section 3)"
    used = "; ".join(f"{n}: {s.describe()}" for n, s in sources.items())
    twins = [n for n, s in sources.items() if s.kind == TWIN]
    ours = "; ".join(f"{n}'s synthetic twin stands in for its release" for n in twins)
    return [("databases", paper, used if any(s.kind != RELEASE for s in sources.values()) else paper),
            ("synthetic twins", "none", ours or "none")]


def sources_note(sources: dict | None, table: int | None = None) -> str:
    """The databases' part of the line under each table: twins standing in, databases missing (and
    under Table 2, that its means are over the training databases present)."""
    if not database_rows(sources):
        return ""
    twins = [n for n, s in sources.items() if s.kind == TWIN]
    missing = [f"{n} ({s.why})" for n, s in sources.items() if not s.available]
    pool = [n for n in TRAINING_DATABASES if sources.get(n) is not None and sources[n].available]
    return ("" if not twins else
            f" Synthetic twins stand in for {', '.join(twins)}: their cells are not the release's.") + \
        ("" if not missing else f" Not available: {', '.join(missing)}; the joint and leave-one-out models train on "
                                f"the {len(pool)} training databases present ({', '.join(pool)}), and cells that need "
                                f"a missing database say so.") + \
        (f" Table 2 averages those {len(pool)}, the paper's all five." if missing and table == 2
         and len(pool) < len(TRAINING_DATABASES) else "")


def _lr_words(preset: Preset) -> str:
    """The learning-rate schedule of a preset counted in steps, in words."""
    warm = f"linear warm-up over {_fraction(preset.warmup_fraction)} of them, then " if preset.warmup_fraction else ""
    if preset.lr_schedule == "cosine":
        return f"{warm}cosine decay of the lr to {COSINE_FLOOR:g} x its base rate"
    return f"{warm}lr x0.1 after {_fraction(preset.lr_drop_fraction)} of them"


def skipped_models(preset: Preset) -> list[tuple[str, tuple[int, ...] | None]]:
    """What the preset's study plan leaves out of the paper's grid of models, each with the numbers
    of the tables whose rows it empties or changes (None: every table)."""
    plan, full = preset.study, type(preset.study)()
    out = []
    for arch in full.fusion_archs:
        dbs = plan.fusion_databases if arch in plan.fusion_archs else ()
        if set(dbs) != set(full.fusion_databases):
            name = ARCHITECTURES[arch].paper_name
            out.append((f"single-database {name} on {', '.join(dbs)} only" if dbs else f"no single-database {name}",
                        (2,)))
    missing = [v for v in full.joint_variants if v not in plan.joint_variants]
    if missing:
        tables = (3, 7) + ((4, 9) if any(v.arch == "multiunet" for v in missing) else ())
        out.append((f"no joint {', '.join(str(v) for v in missing)}", tables))
    if not plan.joint_all_combinations:
        out.append(("joint models evaluated with all modalities only", (3, 7)))
    if set(plan.loo_targets) != set(full.loo_targets):
        out.append((f"leave-one-out on {', '.join(plan.loo_targets) or 'none'} only", (5, 6)))
    if plan.sd_fraction < 1 or plan.finetune_fraction < 1:
        out.append(("shorter single-database and fine-tuning schedules (see schedule)", None))
    return out


def deviations_frame(preset: Preset, precision: str | None = None, sources: dict | None = None) -> pd.DataFrame:
    """The deviations table: one row per aspect, the paper's value beside the preset's (`precision`:
    what a run's models really trained in, where known; `sources`: the run's databases) and whether
    they differ."""
    return pd.DataFrame([{"aspect": d.aspect, "paper": d.paper, f"ours ({preset.name})": d.ours,
                          "differs": "yes" if d.differs else ""} for d in deviations(preset, precision, sources)]
                        ).set_index("aspect")


def deviation_note(preset: Preset, table: int, sources: dict | None = None) -> str:
    """One line under Table `table`: how many aspects of the protocol differ from the paper's (the
    deviations table, shown once above, states them; each bears on every table) and which of this
    table's models the preset leaves out or changes."""
    differ = [d for d in deviations(preset) if d.differs and d.aspect != "models trained"]
    left_out = [text for text, tables in skipped_models(preset) if tables is None or table in tables]
    return (f"Protocol at preset {preset.name}: {len(differ) or 'no'} aspect{'s' * (len(differ) != 1)} of "
            f"training and evaluation differ from the paper's (deviations table above); "
            + (f"this table's models left out or changed: {'; '.join(left_out)}." if left_out
               else "every model of this table is trained as in the paper's grid.") + sources_note(sources, table))


__all__ = ["PAPER_STEPS", "PAPER_CROPS_PER_DATABASE", "Deviation", "deviations", "skipped_models",
           "deviations_frame", "deviation_note", "database_rows", "sources_note"]
