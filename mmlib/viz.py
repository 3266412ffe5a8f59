"""Figures from tidy result tables (matplotlib / seaborn); each returns a Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd


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
