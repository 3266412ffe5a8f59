"""The paper's results tables, built from tidy result rows (docs/RESULTS_SCHEMA.md).

Every cell is a weighted sum of *terms*; a term is one database's per-case values of one model
per seed (Table 3's cell: one term; its Avg: five terms of weight 1/5; Table 2's cell: one
term per database). A term's value is the mean over cases for each seed, then the mean over
seeds; the `seeds` column says how many seeds a row's cells average (the fewest). The findings
bootstrap the same terms over cases and seeds (mmlib.experiments.results.findings), so a table and the
finding read from it measure the same thing. Tables come back in the paper's layout; a cell
whose rows are missing is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from mmlib.data.manifest import TRAINING_DATABASES, load_manifest
from mmlib.data.modalities import sort_modalities
from mmlib.experiments.plan.specs import ARCHITECTURES, DISPLAY_NAMES, NEW_MODALITY_SETS, single_test_modality
from mmlib.experiments.results.paper import paper_layout, paper_metric_table, paper_table

NAN = float("nan")
_BOOL_COLUMNS = ("drop", "all_modalities", "single_modality")
_TEXT_COLUMNS = ("database", "case_id", "subset", "model", "arch", "training", "train_databases",
                 "method", "labels", "preset", "held_out")
_TRUE = {"true", "1", "yes", "t", "y"}
#: Metrics the paper gives in percent.
PERCENT_METRICS = ("sensitivity", "precision")

#: Table 2's columns: the paper's names of mmlib's architectures.
PAPER_ARCHITECTURES = {a.paper_name: a.key for a in ARCHITECTURES.values()}
_SD = dict(arch="multiunet", training="SD", own=True, labels="all")
#: Table 3's rows: which models each one averages (SD models on their own database, all labels).
TABLE3_ROWS: dict[str, dict[str, Any]] = {
    "Unet-SD (all mods)": dict(_SD, drop=False),
    "Unet-SD (drop)": dict(_SD, drop=True),
    "MultiUnet-MD (drop)": dict(arch="multiunet", training="MD", drop=True),
    "MultiUnet-MD (all mods)": dict(arch="multiunet", training="MD", drop=False),
    "MAFUnet-MD (drop)": dict(arch="mafunet", training="MD", drop=True),
}
#: Table 4's rows and columns (database, test-time subset); columns from the protocol's sets.
TABLE4_ROWS: dict[str, dict[str, Any]] = {
    "ATLAS only": dict(arch="multiunet", training="SD", train_databases="ATLAS", labels="all"),
    "BRATS only (drop)": dict(arch="multiunet", training="SD", train_databases="BRATS", drop=True, labels="all"),
    "all five (all mods)": dict(arch="multiunet", training="MD", drop=False),
    "all five (drop)": dict(arch="multiunet", training="MD", drop=True),
}
TABLE4_COLUMNS: dict[str, dict[str, Any]] = {
    f"{DISPLAY_NAMES[db]} ({','.join(s)})": dict(database=db, subset="+".join(s))
    for db, sets in NEW_MODALITY_SETS.items() for s in sets}
#: Table 5's rows of our baselines (not in the paper), shown under the paper's rows.
FLOOR_ROW = "Intensity-outlier rule (label-free), FLAIR or T1"
THRESHOLD_ROW = "Best threshold rule (supervised), FLAIR or T1"
#: Table 6's columns: (method, labels).
TABLE6_COLUMNS: dict[str, tuple[str, str]] = {
    "0-shot": ("0-shot", ""), "limited scratch": ("scratch", "limited"),
    "limited finetune": ("finetune", "limited"), "limited progressive": ("progressive", "limited"),
    "all scratch": ("scratch", "all"), "all finetune": ("finetune", "all"),
    "all progressive": ("progressive", "all"),
}


# -- tidy rows and per-case terms ------------------------------------------------------------------
def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return bool(value) if pd.notna(value) else False


def _canonical_subset(subset: str) -> str:
    try:
        return "+".join(sort_modalities(subset.split("+")))
    except Exception:  # an unknown name stays as written
        return subset


def tidy_results(results: pd.DataFrame) -> pd.DataFrame:
    """A copy of `results` with every schema column present and typed (bools from CSV text,
    empty strings for missing text, subsets in mmlib's modality order)."""
    df = results.copy()
    for col in _TEXT_COLUMNS:
        df[col] = df[col].astype(object).fillna("").astype(str) if col in df else ""
    df["subset"] = df["subset"].map({s: _canonical_subset(s) for s in df["subset"].unique()})
    df["seed"] = df["seed"].fillna(0).astype(int) if "seed" in df else 0  # a run without seeds is one run
    if "n_modalities" not in df:
        df["n_modalities"] = df["subset"].map(lambda s: len([m for m in s.split("+") if m]))
    if "all_modalities" not in df:
        df["all_modalities"] = df["n_modalities"] == df.groupby("database")["n_modalities"].transform("max")
    for col in _BOOL_COLUMNS:
        df[col] = df[col].map(_as_bool) if col in df else False
    if (df["model"] == "").any():
        fallback = df["arch"] + "-" + df["training"] + "-" + df["train_databases"] + "-" + df["drop"].astype(str)
        df["model"] = df["model"].where(df["model"] != "", fallback)
    return df


def select(df: pd.DataFrame, where: dict[str, Any]) -> pd.DataFrame:
    """Rows matching every condition. `own`: trained on the evaluated database (SD);
    `held_out`: the evaluated database is not among the training databases (LOO);
    `labels`: 'all' also matches rows that do not say; `drop` True also matches a model of a
    one-modality database (drop changes nothing there: one model serves both rows)."""
    first = [k for k in ("database", "subset") if k in where]  # the most selective first
    for col in first + [k for k in where if k not in first]:
        if df.empty:
            break
        want = where[col]
        if col == "own":
            mask = (df["train_databases"] == df["database"]) | (df["train_databases"] == "")
        elif col == "held_out":
            mask = [db not in t.split("+") for db, t in zip(df["database"], df["train_databases"])]
        elif col == "labels" and want == "all":
            mask = df["labels"].isin(["all", ""])
        elif col == "drop" and want is True:
            mask = df["drop"] | df["single_modality"]
        elif isinstance(want, (set, frozenset, tuple, list)):
            mask = df[col].isin(list(want))
        else:
            mask = df[col] == want
        df = df[np.asarray(mask, dtype=bool)]
    return df


@dataclass
class Term:
    """`weight` x (mean over seeds of the mean over cases of `values`), `values` one number per
    (seed, case_id) of one database's test cases."""

    weight: float
    database: str
    values: pd.Series
    models: tuple[str, ...] = ()  # the model_id of every row it averages (the findings' preconditions)

    def value(self) -> float:
        return float(self.values.groupby(level="seed").mean().mean())

    @property
    def seeds(self) -> int:
        return int(self.values.index.get_level_values("seed").nunique())


def per_case(rows: pd.DataFrame, metric: str = "dice") -> pd.Series:
    """One value per (seed, case_id): the mean of `metric` over the given rows."""
    rows = rows[rows[metric].notna()] if metric in rows else rows.iloc[:0]
    if rows.empty:
        return pd.Series(dtype=float, index=pd.MultiIndex.from_tuples([], names=["seed", "case_id"]))
    return rows.groupby(["seed", "case_id"])[metric].mean()


def model_ids(rows: pd.DataFrame) -> tuple[str, ...]:
    """The models behind some rows (their model_id; none for rows that do not say)."""
    return tuple(sorted(set(rows["model_id"].astype(str)) - {""})) if "model_id" in rows else ()


def _term(df: pd.DataFrame, where: dict[str, Any], metric: str, weight: float = 1.0) -> list[Term]:
    sel = select(df, where)
    values = per_case(sel, metric)
    return [Term(weight, str(where.get("database", "")), values, model_ids(sel))] if len(values) else []


def combine(terms: list[Term] | None) -> tuple[float, int]:
    """(value of a cell made of `terms`, its number of seeds); NaN and 0 when it has none."""
    if not terms:
        return NAN, 0
    return float(sum(t.weight * t.value() for t in terms)), min(t.seeds for t in terms)


def cell(df: pd.DataFrame, where: dict[str, Any], metric: str = "dice") -> tuple[float, int]:
    """(mean over seeds of the mean over cases, number of seeds) of the rows `where` selects."""
    return combine(_term(df, where, metric))


# -- each table's cells as terms -----------------------------------------------------------------------
def _table2_databases(df: pd.DataFrame, arch: str) -> list[str]:
    """Databases where the architecture's SD model ran both with and without drop (Table 2
    compares the two rows on the same databases)."""
    sd = dict(arch=arch, training="SD", own=True, labels="all")
    both = set(select(df, dict(sd, drop=True))["database"]) & set(select(df, dict(sd, drop=False))["database"])
    return [d for d in TRAINING_DATABASES if d in both] + sorted(both - set(TRAINING_DATABASES))


def _change_per_case(rows: pd.DataFrame) -> pd.Series:
    """Per (seed, case): mean Dice over subsets with a modality missing minus all-modality Dice."""
    full = per_case(rows[rows["all_modalities"]])
    part = rows[~rows["all_modalities"] & rows["dice"].notna()]
    if part.empty or full.empty:
        return per_case(part)
    dropped = part.groupby(["seed", "case_id", "subset"])["dice"].mean().groupby(level=["seed", "case_id"]).mean()
    return (dropped - full).dropna()


def _table2_terms(df: pd.DataFrame, row: str, col: tuple[str, str]) -> list[Term]:
    arch, metric = PAPER_ARCHITECTURES[col[0]], col[1]
    drop = row == "modality drop"
    terms = []
    for db in _table2_databases(df, arch):
        rows = select(df, dict(arch=arch, training="SD", own=True, labels="all", drop=drop, database=db))
        values = per_case(rows[rows["all_modalities"]]) if metric == "dice" else _change_per_case(rows)
        if len(values):
            terms.append(Term(1.0, db, values, model_ids(rows)))
    for t in terms:
        t.weight = 1.0 / len(terms)
    return terms


def _table3_terms(df: pd.DataFrame, row: str, col: str, metric: str = "dice") -> list[Term]:
    if row not in TABLE3_ROWS:
        return []
    if col == "Avg":
        parts = [_table3_terms(df, row, db, metric) for db in _table3_databases()]
        if not all(parts):
            return []  # as the paper's Avg: only over all five databases
        return [Term(1.0 / len(parts), t.database, t.values, t.models) for p in parts for t in p]
    return _term(df, dict(TABLE3_ROWS[row], database=col, all_modalities=True), metric)


def _table3_databases() -> list[str]:
    return [c for c in paper_layout(3)[1] if c != "Avg"]


def _table4_terms(df: pd.DataFrame, row: str, col: str, metric: str = "dice") -> list[Term]:
    return _term(df, dict(TABLE4_ROWS[row], **TABLE4_COLUMNS[col]), metric)


def database_modalities(results: pd.DataFrame, database: str) -> tuple[str, ...]:
    """A database's modalities: its all-modality subset in `results`, else its manifest."""
    full = results.loc[(results["database"] == database) & results["all_modalities"], "subset"]
    if len(full):
        return tuple(full.iloc[0].split("+"))
    try:
        return tuple(load_manifest(database).modalities)
    except Exception:
        return ()


def flair_or_t1(results: pd.DataFrame, database: str) -> str:
    """Table 5's 'FLAIR or T1' subset of a database seen in `results`."""
    return single_test_modality(database_modalities(results, database))


_LOO = dict(arch="multiunet", training="LOO", drop=True, held_out=True)


def _table5_terms(df: pd.DataFrame, row: str, db: str) -> list[Term]:
    single = dict(database=db, subset=flair_or_t1(df, db))
    where = {"Unet-SD (upper bound), all": dict(TABLE3_ROWS["Unet-SD (all mods)"], database=db, all_modalities=True),
             "Multi-Unet (drop), FLAIR or T1": dict(_LOO, **single),
             "Multi-Unet (drop), all": dict(_LOO, database=db, all_modalities=True),
             FLOOR_ROW: dict(arch="outlier", **single),
             THRESHOLD_ROW: dict(arch="threshold", **single)}.get(row)
    return [] if where is None else _term(df, where, "dice")  # the paper's unsupervised models stay NaN


def _table6_terms(df: pd.DataFrame, target: str, col: str) -> list[Term]:
    method, labels = TABLE6_COLUMNS[col]
    if method == "0-shot":
        where = dict(_LOO, database=target, all_modalities=True)
    elif method == "scratch":  # the paper's scratch models are its Unet-SD (no drop)
        where = dict(TABLE3_ROWS["Unet-SD (all mods)"], database=target, all_modalities=True, labels=labels)
    else:
        where = dict(training="finetune", method=method, labels=labels, database=target, all_modalities=True)
    return _term(df, where, "dice")


#: Per table: (row, column, tidy rows) -> the cell's terms.
_TERMS: dict[int, Callable[[pd.DataFrame, str, Any], list[Term]]] = {
    2: _table2_terms, 3: _table3_terms, 4: _table4_terms, 5: _table5_terms, 6: _table6_terms}


def cell_terms(table: int, row: str, column: Any, results: pd.DataFrame, metric: str = "dice") -> list[Term]:
    """The terms of one cell of Table `table` (2-6) built from tidy `results`; Tables 3 and 4 also
    in another metric (their appendix Tables 7-10)."""
    if metric != "dice":
        if table not in (3, 4):
            raise ValueError(f"Table {table} reports Dice only, not {metric!r}")
        return _TERMS[table](results, row, column, metric)
    return _TERMS[table](results, row, column)


# -- the tables ----------------------------------------------------------------------------------------
def _grid(df: pd.DataFrame, table: int, rows: Sequence[str], columns: Sequence[Any],
          terms: Callable[[pd.DataFrame, str, Any], list[Term]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(values, seeds) of every cell; tuple columns become two-level columns."""
    cells = {c: [combine(terms(df, r, c)) for r in rows] for c in columns}
    values = pd.DataFrame({c: [v for v, _ in cells[c]] for c in columns}, index=list(rows))
    seeds = pd.DataFrame({c: [s for _, s in cells[c]] for c in columns}, index=list(rows))
    return values, seeds


def _finish(values: pd.DataFrame, seeds: pd.DataFrame, table: int, keep_extra: bool = True) -> pd.DataFrame:
    """Add the seeds column; drop rows that are not the paper's and have no results."""
    paper_rows, _ = paper_layout(table)
    keep = [r for r in values.index if r in paper_rows or (keep_extra and values.loc[r].notna().any())]
    out = values.loc[keep].copy()
    filled = seeds.loc[keep].where(seeds.loc[keep] > 0)
    out[("seeds", "") if isinstance(out.columns, pd.MultiIndex) else "seeds"] = filled.min(axis=1).fillna(0).astype(int)
    out.index.name = paper_table(table).index.name
    out.attrs.update(table=table)
    return out


def table2(results: pd.DataFrame) -> pd.DataFrame:
    """Table 2: per training (all modalities / modality drop) and architecture, the mean over
    databases of SD models' all-modality Dice, and of [mean Dice over subsets with >=1 modality
    dropped − all-modality Dice] (databases with one modality have no such subsets); only on the
    databases where the architecture ran both with and without drop."""
    df = tidy_results(results)
    rows, archs = paper_layout(2)
    columns = [(a, m) for a in archs for m in ("dice", "dice_change")]
    out = _finish(*_grid(df, 2, rows, columns, _table2_terms), 2)
    out.columns = out.columns.set_names(["column", "metric"])
    out.attrs["n_databases"] = {a: len(_table2_databases(df, PAPER_ARCHITECTURES[a])) for a in archs}
    return out


def table3(results: pd.DataFrame) -> pd.DataFrame:
    """Table 3: Dice with all modalities of SD, MD and MAFUnet-MD models on the five training
    databases; 'MultiUnet-MD (all mods)' (not in the paper) only when its results exist."""
    _, columns = paper_layout(3)
    return _finish(*_grid(tidy_results(results), 3, list(TABLE3_ROWS), columns, _table3_terms), 3)


def table4(results: pd.DataFrame) -> pd.DataFrame:
    """Table 4: Dice on the evaluation-only databases (ISLES, Tumor 2) for given test subsets."""
    return _finish(*_grid(tidy_results(results), 4, list(TABLE4_ROWS), list(TABLE4_COLUMNS), _table4_terms), 4)


def table5(results: pd.DataFrame) -> pd.DataFrame:
    """Table 5: leave-one-out Multi-Unet (drop) on each held-out database with 'FLAIR or T1' and
    with all modalities, under the SD upper bound; below the paper's rows, our label-free floor
    and the supervised threshold rule. The paper's unsupervised models stay NaN."""
    rows, columns = paper_layout(5)
    return _finish(*_grid(tidy_results(results), 5, [*rows, FLOOR_ROW, THRESHOLD_ROW], columns, _table5_terms), 5)


def table6(results: pd.DataFrame) -> pd.DataFrame:
    """Table 6: Dice with all modalities on each target: 0-shot (the leave-one-out model), from
    scratch (Unet-SD without drop; 'all' is Table 3's model), fine-tuned and progressive, with
    limited and with all labels."""
    rows, columns = paper_layout(6)
    return _finish(*_grid(tidy_results(results), 6, rows, columns, _table6_terms), 6)


def metric_table(results: pd.DataFrame, table: int = 3,
                 metrics: Sequence[str] = ("sensitivity", "precision", "assd")) -> pd.DataFrame:
    """Table 3's or 4's models with other metrics (the paper's Tables 7-10): columns
    (paper column, metric). Sensitivity and precision in %, ASSD in mm, as in the paper."""
    if table not in (3, 4):
        raise ValueError(f"metric_table builds Table 3's or 4's layout, not Table {table}")
    df = tidy_results(results)
    row_names, columns = (list(TABLE3_ROWS), paper_layout(3)[1]) if table == 3 else (list(TABLE4_ROWS), list(TABLE4_COLUMNS))
    terms = _table3_terms if table == 3 else _table4_terms
    parts, seed_parts = {}, []
    for m in metrics:
        values, seeds = _grid(df, table, row_names, columns, lambda d, r, c, m=m: terms(d, r, c, m))
        parts[m] = values * 100.0 if m in PERCENT_METRICS else values
        seed_parts.append(seeds.where(values.notna()))
    out = pd.DataFrame({(c, m): parts[m][c] for c in columns for m in metrics}, index=row_names)
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["column", "metric"])
    paper_rows, _ = paper_layout(table)
    keep = [r for r in out.index if r in paper_rows or out.loc[r].notna().any()]
    seeds = pd.concat(seed_parts, axis=1).reindex(keep)
    out = out.loc[keep]
    out[("seeds", "")] = seeds.where(seeds > 0).min(axis=1).fillna(0).astype(int)
    out.index.name = paper_table(table).index.name
    out.attrs.update(table=table, metrics=list(metrics))
    return out


def side_by_side(ours: pd.DataFrame, paper: pd.DataFrame, references: dict[str, pd.DataFrame] | None = None
                 ) -> pd.DataFrame:
    """Each of our rows followed by the same row of each reference run ('reference NAME') and the
    paper's: index (row, source); columns as ours (missing cells NaN)."""
    aligned = paper.reindex(index=ours.index, columns=ours.columns)
    seeds_col = next((c for c in ours.columns if (c[0] if isinstance(c, tuple) else c) == "seeds"), None)
    if seeds_col is not None:
        aligned[seeds_col] = [paper.attrs.get("seeds", NAN) if r in paper.index else NAN for r in ours.index]
    refs = {name: t.reindex(index=ours.index, columns=ours.columns) for name, t in (references or {}).items()}
    pieces, keys = [], []
    for label in ours.index:
        pieces.append(ours.loc[[label]])
        keys.append((label, "ours"))
        for name, t in refs.items():
            pieces.append(t.loc[[label]])
            keys.append((label, f"reference {name}"))
        pieces.append(aligned.loc[[label]])
        keys.append((label, "paper"))
    both = pd.concat(pieces)
    both.index = pd.MultiIndex.from_tuples(keys, names=[ours.index.name or "row", "source"])
    both.attrs = {}
    return both


def format_table(df: pd.DataFrame, decimals: int = 3) -> str:
    """Plain text: numbers with `decimals` decimals, seed counts as integers, NaN as '-'."""
    text = {}
    for col in df.columns:
        name = col[0] if isinstance(col, tuple) else col
        values = df[col]
        if name == "seeds":
            text[col] = ["-" if pd.isna(v) else str(int(v)) for v in values]
        elif pd.api.types.is_numeric_dtype(values):
            text[col] = ["-" if pd.isna(v) else f"{v:.{decimals}f}" for v in values]
        else:
            text[col] = values.astype(str).tolist()
    text = pd.DataFrame(text, index=df.index)
    text.columns = df.columns
    return text.to_string()


# -- the registry ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableSpec:
    """One of the paper's tables: how ours is built from tidy rows, the paper's own, its caption
    and the findings that read it."""

    number: int
    caption: str
    build: Callable[[pd.DataFrame], pd.DataFrame]
    paper: Callable[[], pd.DataFrame]
    findings: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"Table {self.number}"

    def side_by_side(self, results: pd.DataFrame, references: dict[str, pd.DataFrame] | None = None
                     ) -> pd.DataFrame:
        """Our rows, each above the same row of each reference run's results and the paper's."""
        refs = {name: self.build(rows) for name, rows in (references or {}).items()}
        return side_by_side(self.build(results), self.paper(), refs)


#: Every table of the paper mmlib builds, by number (Tables 7-8 and 9-10 are one table each here).
TABLES: dict[int, TableSpec] = {t.number: t for t in (
    TableSpec(2, "Single-database models: Dice with all modalities, and its mean change when modalities "
                 "are missing at test time", table2, lambda: paper_table(2), ("F1",)),
    TableSpec(3, "One model for five databases: Dice with all modalities, single-database (SD) vs joint (MD)",
              table3, lambda: paper_table(3), ("F2",)),
    TableSpec(4, "Seen pathologies in new databases with other modality sets (ISLES, Tumor 2)", table4,
              lambda: paper_table(4), ("F3", "F4")),
    TableSpec(5, "Pathologies never seen in training: 0-shot Dice on the held-out database", table5,
              lambda: paper_table(5), ("F5",)),
    TableSpec(6, "Fine-tuning on the held-out database: scratch, fine-tuned and progressive models", table6,
              lambda: paper_table(6), ("F6",)),
    TableSpec(7, "Table 3's models: sensitivity, precision (%) and ASSD (mm) (the paper's Tables 7-8)",
              lambda r: metric_table(r, 3), lambda: paper_metric_table(3)),
    TableSpec(9, "Table 4's models: sensitivity, precision (%) and ASSD (mm) (the paper's Tables 9-10)",
              lambda r: metric_table(r, 4), lambda: paper_metric_table(4)),
)}


def table_by_name(name: str | int) -> TableSpec:
    """A table of the registry by number or name ('Table 3', '3', 3)."""
    key = str(name).lower().replace("table", "").strip()
    try:
        return TABLES[int(key)]
    except (ValueError, KeyError):
        raise KeyError(f"no table {name!r}; tables: {', '.join(t.name for t in TABLES.values())}") from None


__all__ = ["PERCENT_METRICS", "PAPER_ARCHITECTURES", "TABLE3_ROWS", "TABLE4_ROWS", "TABLE4_COLUMNS", "TABLE6_COLUMNS", "FLOOR_ROW",
           "THRESHOLD_ROW", "Term", "tidy_results", "select", "per_case", "cell", "cell_terms", "combine",
           "database_modalities", "flair_or_t1", "table2", "table3", "table4", "table5", "table6",
           "metric_table", "side_by_side", "format_table", "TableSpec", "TABLES", "table_by_name"]
