"""Figures from tidy tables: what each one draws, checked on the figure's own artists."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmlib.viz import plot_beside_paper


@pytest.fixture()
def table4():
    """Table 4's shape: rows (row, source), one column per cell of the paper, a seeds column."""
    index = pd.MultiIndex.from_product([["ATLAS only", "all five (drop)"], ["ours", "reference long-cpu", "paper"]])
    return pd.DataFrame({"ISLES (T1)": [0.02, 0.01, 0.053, 0.30, 0.20, 0.348],
                         "Tumor 2 (T1)": [np.nan, np.nan, np.nan, 0.40, 0.45, 0.70],
                         "seeds": [1, 1, 3, 1, 1, 3]}, index=index)


def test_the_table_beside_the_paper_draws_one_panel_per_paper_column_and_hatches_the_papers_bars(table4):
    fig = plot_beside_paper(table4, "Table 4")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["ISLES (T1)", "Tumor 2 (T1)"]  # no panel for seeds
    bars = list(panels[0].patches)
    assert sorted(round(b.get_width(), 3) for b in bars) == [0.01, 0.02, 0.053, 0.2, 0.3, 0.348]
    hatched = sorted(round(b.get_width(), 3) for b in bars if b.get_hatch())
    assert hatched == [0.053, 0.348]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["ours", "reference long-cpu", "paper"]


def test_a_cell_the_paper_leaves_empty_gets_no_bar(table4):
    fig = plot_beside_paper(table4)
    tumour = next(ax for ax in fig.axes if ax.get_title() == "Tumor 2 (T1)")
    widths = [b.get_width() for b in tumour.patches]
    assert sorted(w for w in widths if not np.isnan(w) and w > 0) == [0.40, 0.45, 0.70]
