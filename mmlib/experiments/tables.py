"""The paper's results tables, built from tidy result rows (docs/RESULTS_SCHEMA.md).

Every cell: mean over cases per (model, seed), then mean over those runs; the `seeds` column
says how many seeds the row's cells average (the fewest over its cells). Tables come back in
the paper's layout (mmlib.experiments.paper); a cell whose runs are missing is NaN.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from mmlib.experiments.paper import paper_layout, paper_table

NAN = float("nan")
_BOOL_COLUMNS = ("drop", "all_modalities")
_TEXT_COLUMNS = ("database", "case_id", "subset", "model", "arch", "training", "train_databases",
                 "method", "labels", "preset")
_TRUE = {"true", "1", "yes", "t", "y"}

#: Table 2's columns: the paper's words for mmlib's architectures.
ARCHITECTURES = {"LFUnet": "lfunet", "MAFUnet": "mafunet", "Multi-Unet": "multiunet"}
#: Table 3's rows: which models each one averages (SD models on their own database).
TABLE3_ROWS: dict[str, dict[str, Any]] = {
    "Unet-SD (all mods)": dict(arch="multiunet", training="SD", drop=False, own=True),
    "Unet-SD (drop)": dict(arch="multiunet", training="SD", drop=True, own=True),
    "MultiUnet-MD (drop)": dict(arch="multiunet", training="MD", drop=True),
    "MultiUnet-MD (all mods)": dict(arch="multiunet", training="MD", drop=False),
    "MAFUnet-MD (drop)": dict(arch="mafunet", training="MD", drop=True),
}
#: Table 4's rows and columns (database, test-time subset).
TABLE4_ROWS: dict[str, dict[str, Any]] = {
    "ATLAS only": dict(arch="multiunet", training="SD", train_databases="ATLAS"),
    "BRATS only (drop)": dict(arch="multiunet", training="SD", train_databases="BRATS", drop=True),
    "all five (all mods)": dict(arch="multiunet", training="MD", drop=False),
    "all five (drop)": dict(arch="multiunet", training="MD", drop=True),
}
TABLE4_COLUMNS: dict[str, dict[str, Any]] = {
    "ISLES (T1)": dict(database="ISLES", subset="T1"),
    "ISLES (T1,T2)": dict(database="ISLES", subset="T1+T2"),
    "ISLES (FLAIR,T1,T2)": dict(database="ISLES", subset="FLAIR+T1+T2"),
    "Tumor 2 (T1)": dict(database="TUMOR2", subset="T1"),
}
#: Table 6's columns: (method, labels).
TABLE6_COLUMNS: dict[str, tuple[str, str]] = {
    "0-shot": ("0-shot", ""), "limited scratch": ("scratch", "limited"),
    "limited finetune": ("finetune", "limited"), "limited progressive": ("progressive", "limited"),
    "all scratch": ("scratch", "all"), "all finetune": ("finetune", "all"),
    "all progressive": ("progressive", "all"),
}
_PERCENT = ("sensitivity", "precision")


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return bool(value) if pd.notna(value) else False


def _canonical_subset(subset: str) -> str:
    from mmlib.data.modalities import sort_modalities

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
    df["seed"] = df["seed"].fillna(0) if "seed" in df else 0  # a run without seeds is one run
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


def _select(df: pd.DataFrame, where: dict[str, Any]) -> pd.DataFrame:
    """Rows matching every condition; `own` = trained on the evaluated database (SD),
    `held_out` = the evaluated database is not among the training databases (LOO)."""
    first = [k for k in ("database", "subset") if k in where]  # the most selective first
    for col in first + [k for k in where if k not in first]:
        if df.empty:
            break
        want = where[col]
        if col == "own":
            mask = (df["train_databases"] == df["database"]) | (df["train_databases"] == "")
        elif col == "held_out":
            mask = [db not in t.split("+") for db, t in zip(df["database"], df["train_databases"])]
        elif isinstance(want, (set, frozenset, tuple, list)):
            mask = df[col].isin(list(want))
        else:
            mask = df[col] == want
        df = df[np.asarray(mask, dtype=bool)]
    return df


def cell(df: pd.DataFrame, where: dict[str, Any], metric: str = "dice") -> tuple[float, int]:
    """(mean over runs of the mean over cases, number of seeds) of the rows `where` selects."""
    if metric not in df:
        return NAN, 0
    sel = _select(df, where)
    sel = sel[sel[metric].notna()]
    if sel.empty:
        return NAN, 0
    per_run = sel.groupby(["model", "seed"])[metric].mean()
    return float(per_run.mean()), int(sel["seed"].nunique())


def _grid(df: pd.DataFrame, rows: Sequence[str], columns: Sequence[str],
          where: Callable[[str, str], dict[str, Any] | None], metric: str
          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    values = pd.DataFrame(NAN, index=list(rows), columns=list(columns))
    seeds = pd.DataFrame(0, index=list(rows), columns=list(columns))
    for r in rows:
        for c in columns:
            spec = where(r, c)
            if spec is not None:
                values.loc[r, c], seeds.loc[r, c] = cell(df, spec, metric)
    return values, seeds


def _row_seeds(seeds: pd.DataFrame) -> pd.Series:
    """The fewest seeds over each row's filled cells (0 for an empty row)."""
    filled = seeds.where(seeds > 0)
    return filled.min(axis=1).fillna(0).astype(int)


def _finish(values: pd.DataFrame, seeds: pd.DataFrame, table: int) -> pd.DataFrame:
    out = values.copy()
    out.index.name = _index_name(table)
    out["seeds"] = _row_seeds(seeds)
    out.attrs.update(table=table)
    return out


def _index_name(table: int) -> str:
    return paper_table(table).index.name


def _add_average(values: pd.DataFrame, seeds: pd.DataFrame, databases: Sequence[str]
                 ) -> None:
    """'Avg' over the databases, NaN unless all of them are present (as the paper's Avg)."""
    values["Avg"] = values[list(databases)].mean(axis=1, skipna=False)
    seeds["Avg"] = seeds[list(databases)].min(axis=1)


def table2(results: pd.DataFrame) -> pd.DataFrame:
    """Table 2: per training (all modalities / modality drop) and architecture, the mean over
    databases of SD models' all-modality Dice, and of [mean Dice over subsets with >=1 modality
    dropped − all-modality Dice] (databases with one modality have no such subsets)."""
    df = tidy_results(results)
    rows, archs = paper_layout(2)
    data: dict[tuple[str, str], list[float]] = {}
    seeds = pd.DataFrame(0, index=rows, columns=archs)
    n_databases: dict[str, dict[str, int]] = {}
    for label in archs:
        data[(label, "dice")], data[(label, "dice_change")] = [], []
        for row, drop in zip(rows, (False, True)):
            runs = _select(df, dict(arch=ARCHITECTURES[label], training="SD", drop=drop, own=True))
            full, change, n_seeds = [], [], []
            for db in runs["database"].unique():
                of_db = runs[runs["database"] == db]
                all_dice, s = cell(of_db, dict(all_modalities=True))
                if np.isnan(all_dice):
                    continue
                full.append(all_dice)
                n_seeds.append(s)
                dropped = [cell(of_db, dict(subset=sub))[0]
                           for sub in of_db.loc[~of_db["all_modalities"], "subset"].unique()]
                dropped = [d for d in dropped if not np.isnan(d)]
                if dropped:
                    change.append(float(np.mean(dropped)) - all_dice)
            data[(label, "dice")].append(float(np.mean(full)) if full else NAN)
            data[(label, "dice_change")].append(float(np.mean(change)) if change else NAN)
            seeds.loc[row, label] = min(n_seeds) if n_seeds else 0
            n_databases.setdefault(row, {})[label] = len(full)
    out = pd.DataFrame(data, index=pd.Index(rows, name=_index_name(2)))
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["column", "metric"])
    out[("seeds", "")] = _row_seeds(seeds)
    out.attrs.update(table=2, n_databases=n_databases)
    return out


def _table3_grid(df: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    _, columns = paper_layout(3)
    databases = [c for c in columns if c != "Avg"]
    values, seeds = _grid(df, list(TABLE3_ROWS), databases,
                          lambda r, c: dict(TABLE3_ROWS[r], database=c, all_modalities=True), metric)
    _add_average(values, seeds, databases)
    return values, seeds


def _drop_absent_extra_rows(values: pd.DataFrame, table: int) -> pd.Index:
    """The paper's rows, plus any extra row (not in the paper) that has results."""
    paper_rows, _ = paper_layout(table)
    return pd.Index([r for r in values.index if r in paper_rows or values.loc[r].notna().any()])


def table3(results: pd.DataFrame) -> pd.DataFrame:
    """Table 3: Dice with all modalities of SD, MD and MAFUnet-MD models on the five training
    databases; 'MultiUnet-MD (all mods)' (not in the paper) only when its results exist."""
    values, seeds = _table3_grid(tidy_results(results), "dice")
    keep = _drop_absent_extra_rows(values, 3)
    return _finish(values.loc[keep], seeds.loc[keep], 3)


def _table4_grid(df: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    return _grid(df, list(TABLE4_ROWS), list(TABLE4_COLUMNS),
                 lambda r, c: dict(TABLE4_ROWS[r], **TABLE4_COLUMNS[c]), metric)


def table4(results: pd.DataFrame) -> pd.DataFrame:
    """Table 4: Dice on the evaluation-only databases (ISLES, TUMOR2) for given test subsets."""
    values, seeds = _table4_grid(tidy_results(results), "dice")
    return _finish(values, seeds, 4)


def database_modalities(results: pd.DataFrame, database: str) -> tuple[str, ...]:
    """A database's modalities: its all-modality subset in `results`, else its manifest."""
    full = results.loc[(results["database"] == database) & results["all_modalities"], "subset"]
    if len(full):
        return tuple(full.iloc[0].split("+"))
    try:
        from mmlib.data.manifest import load_manifest

        return tuple(load_manifest(database).modalities)
    except Exception:
        return ()


def single_test_modality(modalities) -> str:
    """Table 5's 'FLAIR or T1' rule: FLAIR if the database has it, else T1."""
    return "FLAIR" if "FLAIR" in modalities else "T1"


def flair_or_t1(results: pd.DataFrame, database: str) -> str:
    """Table 5's 'FLAIR or T1' subset of a database seen in `results`."""
    return single_test_modality(database_modalities(results, database))


def _table5_where(df: pd.DataFrame) -> Callable[[str, str], dict[str, Any] | None]:
    loo = dict(arch="multiunet", training="LOO", drop=True, held_out=True)

    def where(row: str, db: str) -> dict[str, Any] | None:
        if row == "Unet-SD (upper bound), all":
            return dict(TABLE3_ROWS["Unet-SD (all mods)"], database=db, all_modalities=True)
        if row == "Multi-Unet (drop), FLAIR or T1":
            return dict(loo, database=db, subset=flair_or_t1(df, db))
        if row == "Multi-Unet (drop), all":
            return dict(loo, database=db, all_modalities=True)
        return None  # the unsupervised baselines are not part of mmlib

    return where


def table5(results: pd.DataFrame) -> pd.DataFrame:
    """Table 5: leave-one-out Multi-Unet (drop) on each held-out database with 'FLAIR or T1'
    and with all modalities, under the SD upper bound. The unsupervised rows stay NaN."""
    df = tidy_results(results)
    rows, columns = paper_layout(5)
    values, seeds = _grid(df, rows, columns, _table5_where(df), "dice")
    return _finish(values, seeds, 5)


def table6(results: pd.DataFrame) -> pd.DataFrame:
    """Table 6: Dice with all modalities on each target after 0-shot / scratch / finetune /
    progressive training with limited or all labels. 0-shot falls back to the LOO drop model."""
    df = tidy_results(results)
    rows, columns = paper_layout(6)

    def where(target: str, col: str) -> dict[str, Any]:
        method, labels = TABLE6_COLUMNS[col]
        spec: dict[str, Any] = dict(database=target, method=method, all_modalities=True)
        if labels:
            spec["labels"] = labels
        return spec

    values, seeds = _grid(df, rows, columns, where, "dice")
    for target in rows:
        if np.isnan(values.loc[target, "0-shot"]):
            values.loc[target, "0-shot"], seeds.loc[target, "0-shot"] = cell(
                df, dict(arch="multiunet", training="LOO", drop=True, held_out=True,
                         database=target, all_modalities=True, method=""))
    return _finish(values, seeds, 6)


def metric_table(results: pd.DataFrame, table: int = 3,
                 metrics: Sequence[str] = ("sensitivity", "precision", "assd")) -> pd.DataFrame:
    """Table 3's or 4's models with other metrics (the paper's Tables 7-10): columns
    (paper column, metric). Sensitivity and precision in %, ASSD in mm, as in the paper."""
    if table not in (3, 4):
        raise ValueError(f"metric_table builds Table 3's or 4's layout, not Table {table}")
    df = tidy_results(results)
    grid = _table3_grid if table == 3 else _table4_grid
    parts, seed_parts = {}, []
    for m in metrics:
        values, seeds = grid(df, m)
        parts[m] = values * 100.0 if m in _PERCENT else values
        seed_parts.append(seeds.where(values.notna()))
    first = parts[metrics[0]]
    out = pd.DataFrame({(c, m): parts[m][c] for c in first.columns for m in metrics}, index=first.index)
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["column", "metric"])
    if table == 3:
        out = out.loc[_drop_absent_extra_rows(pd.concat(list(parts.values()), axis=1), 3)]
    seeds = pd.concat(seed_parts, axis=1).reindex(out.index).fillna(0)
    out[("seeds", "")] = _row_seeds(seeds)
    out.index.name = _index_name(table)
    out.attrs.update(table=table, metrics=list(metrics))
    return out


def side_by_side(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Each of our rows followed by the paper's row of the same label: index (row, source)
    with source 'ours' or 'paper'; columns as ours (the paper's missing cells are NaN)."""
    aligned = paper.reindex(index=ours.index, columns=ours.columns)
    seeds_col = next((c for c in ours.columns if (c[0] if isinstance(c, tuple) else c) == "seeds"), None)
    if seeds_col is not None:
        aligned[seeds_col] = [paper.attrs.get("seeds", NAN) if r in paper.index else NAN for r in ours.index]
    pieces, keys = [], []
    for label in ours.index:
        pieces += [ours.loc[[label]], aligned.loc[[label]]]
        keys += [(label, "ours"), (label, "paper")]
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


__all__ = ["ARCHITECTURES", "TABLE3_ROWS", "TABLE4_ROWS", "TABLE4_COLUMNS", "TABLE6_COLUMNS",
           "tidy_results", "cell", "database_modalities", "flair_or_t1", "table2", "table3",
           "table4", "table5", "table6", "metric_table", "side_by_side", "format_table"]
