"""The results explorer: a study's result rows as a heatmap by modality subset, bars with the spread
over seeds beside the paper's number, and any of the paper's tables the rows fill, ours beside the
paper's. Rows come from the study layer (`Study.results()`: the current protocol's rows only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import Image
from matplotlib.figure import Figure

from mmlib.data.manifest import ALL_DATABASES
from mmlib.data.modalities import subset_sort_key
from mmlib.errors import MMLibError
from mmlib.experiments.results.availability import mark_table
from mmlib.experiments.results.learning import curves_frame, learning_frame, learning_summary
from mmlib.experiments.results.paper import paper_value
from mmlib.experiments.results.reference import reference_results
from mmlib.experiments.results.rows import read_rows
from mmlib.experiments.results.tables import (PERCENT_METRICS, TABLE3_ROWS, TABLE4_COLUMNS, TABLE4_ROWS, TABLES,
                                              format_table, table_by_name, tidy_results)
from mmlib.experiments.run.study import Study
from mmlib.viz import plot_learning_curves
from mmlib.widgets._render import DPI, METRICS, figure_png, held


def sort_databases(names) -> list[str]:
    """Databases in the paper's order (training ones first), unknown names last."""
    order = {n: i for i, n in enumerate(ALL_DATABASES)}
    return sorted(set(names), key=lambda n: (order.get(n, len(order)), n))


def load_results(source) -> pd.DataFrame:
    """Tidy result rows: a DataFrame, a CSV of tidy rows, or a study folder (its current rows,
    read through `Study.results`)."""
    if isinstance(source, Study):
        return tidy_results(source.results())
    if isinstance(source, pd.DataFrame):
        return tidy_results(source)
    path = Path(source)
    if path.is_file():
        return tidy_results(read_rows(path))
    return tidy_results(Study.open(path).results())


def setting_label(training: str, drop: bool) -> str:
    """How the paper names a training setting: 'MD (drop)', 'SD (all mods)'."""
    return f"{training or '?'} ({'drop' if drop else 'all mods'})"


def busiest_choice(results: pd.DataFrame) -> tuple[str, str, str]:
    """(database, arch, setting) with the most result rows: what the explorer opens on, so that
    its first picture is never an empty combination."""
    keys = pd.DataFrame({"database": results["database"], "arch": results["arch"].fillna(""),
                         "setting": [setting_label(t, d) for t, d in zip(results["training"], results["drop"])]})
    if (keys["arch"] != "").any():  # rows without an architecture (baseline rules) are not offered
        keys = keys[keys["arch"] != ""]
    return keys.value_counts(sort=True).index[0]


def _filter(results: pd.DataFrame, arch: str | None = None, setting: str | None = None) -> pd.DataFrame:
    df = results
    if arch:
        df = df[df["arch"] == arch]
    if setting:
        df = df[[setting_label(t, d) == setting for t, d in zip(df["training"], df["drop"])]]
    return df


def _subset_order(df: pd.DataFrame) -> list[str]:
    """Subsets with the most modalities first, then mmlib's order (subset_sort_key)."""
    return sorted(df["subset"].unique(), key=lambda s: subset_sort_key(s, most_first=True))


def per_run(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean over cases for each database × subset × model × seed (one value per run)."""
    df = results[results[metric].notna()]
    return df.groupby(["database", "subset", "model", "seed"], as_index=False)[metric].mean()


def metric_grid(results: pd.DataFrame, metric: str = "dice", arch: str | None = None,
                setting: str | None = None) -> pd.DataFrame:
    """The heatmap's data: mean over runs of the mean over cases, index subset (most modalities
    first), columns database (paper order); NaN where a database lacks the subset."""
    runs = per_run(_filter(results, arch, setting), metric)
    if runs.empty:
        return pd.DataFrame()
    grid = runs.groupby(["subset", "database"])[metric].mean().unstack("database")
    return grid.reindex(index=_subset_order(runs), columns=sort_databases(runs["database"]))


def seed_spread(results: pd.DataFrame, database: str, metric: str = "dice", arch: str | None = None,
                setting: str | None = None) -> pd.DataFrame:
    """The bars' data for one database: per subset, the mean over runs, the standard deviation
    over seeds (NaN with one seed) and the number of seeds."""
    runs = per_run(_filter(results, arch, setting), metric)
    runs = runs[runs["database"] == database]
    if runs.empty:
        return pd.DataFrame(columns=["subset", "mean", "std", "seeds"])
    out = (runs.groupby("subset")[metric].agg(mean="mean", std="std", seeds="count")
           .reindex(_subset_order(runs)).reset_index())
    return out


def paper_number(database: str, subset: str, metric: str, arch: str | None, setting: str | None,
                 all_modalities: bool) -> float:
    """The paper's number for the same model, database and subset (Tables 3/7/8 with all
    modalities, Tables 4/9/10 for ISLES and Tumor 2), NaN where the paper has none."""
    def matches(spec: dict) -> bool:
        return ((arch is None or spec.get("arch") == arch) and setting is not None
                and setting_label(spec.get("training", ""), spec.get("drop", False)) == setting)

    scale = 100.0 if metric in PERCENT_METRICS else 1.0  # the paper's percent
    try:
        if all_modalities:
            for row, spec in TABLE3_ROWS.items():
                if matches(spec):
                    return paper_value(3, row, database, metric) / scale
        for col, where in TABLE4_COLUMNS.items():
            if where == {"database": database, "subset": subset}:
                for row, spec in TABLE4_ROWS.items():
                    if matches(spec) and "train_databases" not in spec:
                        return paper_value(4, row, col, metric) / scale
    except KeyError:
        pass
    return float("nan")


def results_table(results: pd.DataFrame, n: int) -> pd.DataFrame:
    """Our Table `n` of the registry (mmlib.experiments.results.tables.TABLES) from tidy rows."""
    return table_by_name(n).build(results)


def _has_values(table: pd.DataFrame) -> bool:
    cols = [c for c in table.columns if (c[0] if isinstance(c, tuple) else c) != "seeds"]
    return bool(table[cols].notna().to_numpy().any())


def available_tables(results: pd.DataFrame) -> list[int]:
    """The registry's tables that these rows fill at least one cell of."""
    return [n for n, spec in TABLES.items() if _has_values(spec.build(results))]


def table_with_paper(results: pd.DataFrame, n: int) -> pd.DataFrame:
    """Our Table `n` with the paper's row under each of ours (index row × source)."""
    return table_by_name(n).side_by_side(results)


def _style_table(df: pd.DataFrame) -> str:
    return f"<pre style='font-size:11px'>{format_table(df)}</pre>"


class ResultsExplorer:
    """Explore tidy results: a heatmap of a metric by modality subset × database, bars with the
    spread over seeds for one database beside the paper's number, and any of the paper's tables
    that the rows fill, ours beside the shipped reference runs' and the paper's. `references`
    (default: every reference run shipped) can also be explored in place of the run (`source`),
    always labelled as reference. `records`: the run's training records (mmlib.experiments.results.learning):
    then it also shows whether each model learnt, and one model's validation curve. `unavailable`:
    the paper's databases the run lacks, with why ({'TBI': 'TBI is private'}; None: a study's own,
    else none); the cells of ours that need one read 'not available (...)', as in the report."""

    def __init__(self, source: str | Path | pd.DataFrame, dpi: int = DPI,
                 references: dict[str, pd.DataFrame] | None = None, records: list[dict] | None = None,
                 unavailable: dict[str, str] | None = None):
        if isinstance(source, (str, Path)) and Path(source).is_dir():
            source = Study.open(Path(source))  # opened once: its rows and its missing databases
        own = load_results(source)
        if unavailable is None and isinstance(source, Study):
            unavailable = source.unavailable()
        self.unavailable = dict(unavailable or {})
        if own.empty:
            raise MMLibError("no result rows to explore")
        refs = reference_results() if references is None else references
        self.references = {n: tidy_results(r) for n, r in refs.items()}
        self.sources = {"this run": own, **{f"reference {n}": r for n, r in self.references.items()}}
        self.results = own
        self.dpi = dpi
        self._hold = 0
        self.tables = available_tables(self.results)
        self.heatmap_figure: Figure | None = None
        self.bars_figure: Figure | None = None
        self.grid = pd.DataFrame()
        self.spread = pd.DataFrame()
        self.table = pd.DataFrame()
        r = self.results
        archs = sorted(a for a in r["arch"].unique() if a) or [""]
        settings = sorted({setting_label(t, d) for t, d in zip(r["training"], r["drop"])})
        metrics = [m for m in METRICS if m in r.columns and r[m].notna().any()]
        self.table_choice = W.Dropdown(options=[(f"Table {n}", n) for n in self.tables] or [("none", None)],
                                       description="table")
        self.database = W.Dropdown(options=sort_databases(r["database"]), description="database")
        self.arch = W.Dropdown(options=[(a or "(any)", a) for a in archs], description="architecture")
        self.setting = W.Dropdown(options=settings, description="training")
        self.metric = W.Dropdown(options=metrics, description="metric")
        self.source = W.Dropdown(options=list(self.sources), description="results")
        self._choose(*busiest_choice(r))
        self.bars = W.Image(format="png")
        self.table_html = W.HTML()
        self.heatmap = W.Image(format="png")
        self.records = list(records or [])
        self.learning = pd.DataFrame()
        self.curve_figure: Figure | None = None
        self.curve_model = W.Dropdown(options=[r.get("name") or r["model_id"] for r in self.records],
                                      description="model")
        self.curve = W.Image(format="png")
        self.learning_html = W.HTML()
        learning = [W.HTML("<b>Did each model learn?</b>"), self.learning_html,
                    self.curve_model, self.curve] if self.records else []
        self.widget = W.VBox([
            W.HBox([self.source, self.database, self.arch, self.setting, self.metric]),
            # flex-start: a stretched row would distort the shorter of the two pictures.
            W.HBox([self.heatmap, self.bars], layout=W.Layout(align_items="flex-start")),
            self.table_choice, self.table_html, *learning])
        self.curve_model.observe(lambda _: self.render_learning(), "value")
        self.widget.add_class("mmlib-results-explorer")
        for w in (self.database, self.arch, self.setting, self.metric):
            w.observe(lambda _: self.render(), "value")
        self.source.observe(lambda _: self._switch_source(), "value")
        self.table_choice.observe(lambda _: self.render_table(), "value")
        self.render()
        self.render_table()
        self.render_learning()

    def render_learning(self) -> None:
        """The 'did each model learn?' table and the chosen model's validation curve."""
        if not self.records:
            return

        self.learning = learning_frame(self.records)
        self.learning_html.value = f"<p>{learning_summary(self.records)}</p>" + _style_table(self.learning)
        curves = curves_frame(self.records)
        curves = curves[curves["model"] == self.curve_model.value]
        if curves.empty:
            return

        self.curve_figure = plot_learning_curves(curves, columns=1)
        self.curve.value = figure_png(self.curve_figure, self.dpi)
        plt.close(self.curve_figure)

    @property
    def figure(self) -> Figure | None:
        return self.heatmap_figure

    def _switch_source(self) -> None:
        """Show another set of rows (this run or a reference run) in the heatmap and the bars."""
        self.results = r = self.sources[self.source.value]
        with held(self):
            for widget, options in ((self.database, sort_databases(r["database"])),
                                    (self.arch, [(a or "(any)", a) for a in sorted(a for a in r["arch"].unique() if a)]),
                                    (self.setting, sorted({setting_label(t, d) for t, d in zip(r["training"], r["drop"])}))):
                keep = widget.value
                widget.options = options
                values = [o[1] if isinstance(o, tuple) else o for o in options]
                widget.value = keep if keep in values else (values[0] if values else None)
            if _filter(r[r["database"] == self.database.value], **self._selection()).empty:
                self._choose(*busiest_choice(r))
        self.render()

    def _choose(self, database: str, arch: str, setting: str) -> None:
        self.database.value, self.arch.value, self.setting.value = database, arch, setting

    def _selection(self) -> dict[str, Any]:
        return dict(arch=self.arch.value or None, setting=self.setting.value)

    def render(self) -> None:
        """Redraw the heatmap and the bars for the current choices."""
        if self._hold:
            return
        metric, db, sel = self.metric.value, self.database.value, self._selection()
        self.grid = metric_grid(self.results, metric, **sel)
        self.spread = seed_spread(self.results, db, metric, **sel)
        bounded = metric != "assd"
        fig = Figure(figsize=(1.2 + 0.75 * max(len(self.grid.columns), 1),
                              1.0 + 0.2 * max(len(self.grid), 1)))
        ax = fig.subplots()
        if not self.grid.empty:
            sns.heatmap(self.grid, ax=ax, annot=True, fmt=".2f", annot_kws={"fontsize": 7},
                        cmap="viridis" if bounded else "viridis_r",
                        vmin=0 if bounded else None, vmax=1 if bounded else None,
                        cbar_kws={"label": metric})
        ax.set_title(f"{metric} by modality subset · {sel['arch'] or 'any'} · {sel['setting']}", fontsize=9)
        ax.set_xlabel(""), ax.set_ylabel("modalities given")
        ax.tick_params(labelsize=7)
        fig.tight_layout()
        self.heatmap_figure = fig
        self.heatmap.value = figure_png(fig, self.dpi)
        self.bars_figure = self._draw_bars(db, metric, sel)
        self.bars.value = figure_png(self.bars_figure, self.dpi)

    def _draw_bars(self, db: str, metric: str, sel: dict) -> Figure:
        sp = self.spread
        fig = Figure(figsize=(4.8, 1.2 + 0.2 * max(len(sp), 1)))
        ax = fig.subplots()
        if len(sp):
            full = max(len(s.split("+")) for s in sp["subset"])
            y = np.arange(len(sp))
            spread = sp["std"].to_numpy(float)
            ax.barh(y, sp["mean"], xerr=spread if np.isfinite(spread).any() else None, capsize=2,
                    color=["#1f77b4" if len(s.split("+")) == full else "#9ecae1" for s in sp["subset"]],
                    label=f"{self.source.value} (mean ± sd over {int(sp['seeds'].max())} seed(s))")
            paper = [paper_number(db, s, metric, sel["arch"], sel["setting"], len(s.split("+")) == full)
                     for s in sp["subset"]]
            if np.isfinite(paper).any():
                ax.plot(paper, y, "kD", ms=5, label="paper")
            ax.set_yticks(y, sp["subset"])
            ax.invert_yaxis()
            ax.legend(fontsize=7, loc="lower right")
            if metric != "assd":
                ax.set_xlim(0, 1)
        ax.set_title(f"{db}: {metric} per modality subset", fontsize=9)
        ax.tick_params(labelsize=7)
        fig.tight_layout()
        return fig

    def render_table(self) -> None:
        """Our chosen table with the paper's numbers beside it."""
        n = self.table_choice.value
        if n is None:
            self.table = pd.DataFrame()
            self.table_html.value = ("<i>these results fill none of the paper's tables 2-10 "
                                     "(they need the columns arch, training, drop ...)</i>")
            return

        spec = table_by_name(n)
        self.table = mark_table(n, spec.side_by_side(self.sources["this run"], self.references), self.unavailable,
                                self.sources["this run"])
        self.table_html.value = f"<b>{spec.name}</b>: {spec.caption}" + _style_table(self.table)

    def snapshot(self):
        """Heatmap and bars as IPython Images (static pictures for stored notebook outputs)."""
        return [Image(data=figure_png(f, self.dpi)) for f in (self.heatmap_figure, self.bars_figure)]

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


# ----------------------------------------------------------------------------- a run, opened
