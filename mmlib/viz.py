"""Figures from tidy result tables (matplotlib / seaborn); each returns a Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from mmlib.data.modalities import MODALITIES, subset_sort_key


def plot_combination_dice(results: pd.DataFrame, baseline: pd.DataFrame | None = None):
    """One panel per database: mean Dice for every modality subset given at test time,
    all-modalities bar highlighted; the best threshold rule's Dice as a dashed line."""
    dbs = list(dict.fromkeys(results["database"]))
    heights = [max(1.2, 0.22 * results[results.database == d]["subset"].nunique()) for d in dbs]
    fig, axes = plt.subplots(len(dbs), 1, figsize=(7, sum(heights) + 0.6 * len(dbs)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, db in zip(axes[:, 0], dbs):
        df = results[results.database == db]
        means = (df.groupby(["subset", "n_modalities"])["dice"].mean().reset_index()
                 .sort_values(["n_modalities", "dice"], ascending=[False, False]))
        full = means["n_modalities"] == means["n_modalities"].max()
        ax.barh(means["subset"], means["dice"], color=["#1f77b4" if f else "#9ecae1" for f in full])
        if baseline is not None and (baseline.database == db).any():
            ax.axvline(baseline[baseline.database == db]["dice"].mean(), ls="--", c="k", lw=1,
                       label="best threshold rule")
            ax.legend(loc="lower right", fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(db, fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("Dice (mean over test cases)")
    fig.tight_layout()
    return fig


def _lesion_slice(case) -> int:
    """The axial slice with the most lesion (the middle slice when there is none)."""
    per_slice = (case.label == 1).sum(axis=(0, 1))
    return int(per_slice.argmax()) if per_slice.any() else case.label.shape[2] // 2


def plot_database_grid(databases: dict, modalities=None):
    """The paper's overview figure: one row per database, one column per modality, an axial
    slice of one case with its lesion outlined (empty panels where a database lacks the modality).
    `databases`: name -> list of PreparedCase (the first case with a lesion is shown)."""
    mods = list(modalities or [m for m in MODALITIES
                               if any(m in cs[0].modalities for cs in databases.values() if cs)])
    fig, axes = plt.subplots(len(databases), len(mods), figsize=(1.6 * len(mods), 1.7 * len(databases)),
                             squeeze=False)
    for r, (name, cases) in enumerate(databases.items()):
        case = next((c for c in cases if (c.label == 1).any()), cases[0] if cases else None)
        for c, mod in enumerate(mods):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(mod, fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
            if case is None or mod not in case.modalities:
                ax.set_facecolor("#f0f0f0")
                continue
            z = _lesion_slice(case)
            img = case.image[case.modalities.index(mod)][:, :, z]
            lo, hi = np.percentile(img[case.brain[:, :, z]], [1, 99]) if case.brain[:, :, z].any() else (0, 1)
            ax.imshow(img.T, cmap="gray", origin="lower", vmin=lo, vmax=hi)
            if (case.label[:, :, z] == 1).any():
                ax.contour((case.label[:, :, z] == 1).T, levels=[0.5], colors="#ff3030", linewidths=0.8,
                           origin="lower")
    fig.tight_layout()
    return fig


def plot_lesion_volumes(databases: dict):
    """Lesion volume (ml) per case, one strip per database (log scale)."""
    rows = [{"database": name, "lesion_ml": max(c.lesion_volume_ml(), 1e-3)}
            for name, cases in databases.items() for c in cases]
    fig, ax = plt.subplots(figsize=(7, 3))
    sns.stripplot(data=pd.DataFrame(rows), x="database", y="lesion_ml", ax=ax, size=3, jitter=0.25)
    ax.set_yscale("log")
    ax.set_ylabel("lesion volume (ml)")
    ax.set_xlabel("")
    fig.tight_layout()
    return fig


def plot_subset_heatmap(results: pd.DataFrame, metric: str = "dice", by: str = "model"):
    """Heatmap of mean `metric` by modality subset (rows) x database (columns), one panel per
    value of `by` (e.g. model). NaN where a database lacks the subset's modalities."""
    groups = list(dict.fromkeys(results[by]))
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups) + 1.5,
                                                      0.25 * results["subset"].nunique() + 1.5),
                             squeeze=False, sharey=True)

    order = sorted(results["subset"].unique(), key=subset_sort_key)
    for ax, g in zip(axes[0], groups):
        table = (results[results[by] == g].groupby(["subset", "database"])[metric].mean()
                 .unstack("database").reindex(order))
        sns.heatmap(table, ax=ax, vmin=0, vmax=1, cmap="viridis", annot=table.shape[1] <= 6,
                    fmt=".2f", annot_kws={"fontsize": 6}, cbar=ax is axes[0, -1])
        ax.set_title(str(g), fontsize=8)
        ax.set_xlabel("")
        ax.set_ylabel("modalities given" if ax is axes[0, 0] else "")
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def plot_learning_curves(curves: pd.DataFrame, columns: int = 4):
    """Validation Dice (held-out training cases) against the share of training, one panel per
    model, one line per database: a curve still rising at the right edge had not converged."""
    models = list(dict.fromkeys(curves["model"]))
    rows = max(1, -(-len(models) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False, sharey=True)
    for ax, model in zip(axes.flat, models):
        for db, part in curves[curves["model"] == model].groupby("database", sort=False):
            ax.plot(part["share"], part["dice"], marker=".", label=db)
        ax.axvspan(0.75, 1.0, color="0.92", zorder=0)  # the last quarter the convergence rule reads
        ax.set_title(model, fontsize=8)
        ax.set_xlim(0, 1.02)
        ax.legend(fontsize=6, loc="lower right")
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("share of training")
    for ax in axes[:, 0]:
        ax.set_ylabel("validation Dice")
    fig.tight_layout()
    return fig

def plot_beside_paper(table: pd.DataFrame, title: str = "", metric: str = "Dice"):
    """A table of the paper built beside ours (`TableSpec.side_by_side`: rows (row, source), one
    column per cell of the paper, a `seeds` column) as bars: one panel per column, one group per
    row, our bar (and each reference run's) beside the paper's, hatched. A missing cell has no bar."""
    columns = [c for c in table.columns if (c[0] if isinstance(c, tuple) else c) != "seeds"]
    rows = list(dict.fromkeys(table.index.get_level_values(0)))
    sources = list(dict.fromkeys(table.index.get_level_values(1)))
    light = iter(["#9ecae1", "#a1d99b", "#fdae6b", "#bcbddc"] * len(sources))  # one per reference run
    colours = {s: ("#1f77b4" if s == "ours" else "#bbbbbb" if s == "paper" else next(light)) for s in sources}
    height = 0.8 / len(sources)
    fig, axes = plt.subplots(1, len(columns), figsize=(2.6 * len(columns) + 1.6, 0.28 * len(rows) * len(sources) + 1.4),
                             sharey=True, squeeze=False)
    for ax, column in zip(axes[0], columns):
        for j, source in enumerate(sources):
            values = [table[column].get((row, source), float("nan")) for row in rows]
            ax.barh([i + j * height for i in range(len(rows))], values, height=height, color=colours[source],
                    hatch="//" if source == "paper" else None, edgecolor="white", label=source)
        ax.set_xlim(0, 1)
        ax.set_title(" ".join(map(str, column)) if isinstance(column, tuple) else str(column), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel(metric, fontsize=7)
    axes[0, 0].set_yticks([i + height * (len(sources) - 1) / 2 for i in range(len(rows))], rows)
    axes[0, 0].invert_yaxis()
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=len(sources), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
