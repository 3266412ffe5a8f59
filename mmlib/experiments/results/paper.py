"""The paper's published numbers (Tables 2-10), read from mmlib/paper_results.yaml.

Tables come back in the paper's layout: rows and columns in the paper's order and words.
Single-metric tables have one column per paper column; multi-metric tables (2, 7, 9) have
two-level columns (paper column, metric). Blank, 'n/a' and '-' cells are NaN.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml

PAPER_RESULTS = Path(__file__).resolve().parents[2] / "paper_results.yaml"


@lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    with open(PAPER_RESULTS) as f:
        return yaml.safe_load(f)


def paper_results() -> dict[str, Any]:
    """The whole YAML (a copy): source, seeds, units, findings text and tables."""
    return copy.deepcopy(_load())


def _table(n: int) -> dict[str, Any]:
    tables = _load()["tables"]
    if int(n) not in tables:
        raise KeyError(f"the paper has no results table {n}; tables: {sorted(tables)}")
    return tables[int(n)]


def paper_layout(n: int) -> tuple[list[str], list[str]]:
    """(row labels, column labels) of Table `n`, in the paper's order."""
    t = _table(n)
    return list(t["rows"]), list(t["columns"])


def paper_finding(name: str) -> str:
    """The statement of finding `name` ('F1'..'F6'), worded so that a run can test it (paper_results.yaml)."""
    return " ".join(_load()["findings"][name].split())


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def paper_table(n: int) -> pd.DataFrame:
    """Table `n` (2-10) as a DataFrame in the paper's layout; attrs: title, seeds, metrics."""
    t = _table(n)
    metrics = list(t["metrics"])
    data: dict[Any, list[float]] = {}
    for col in t["columns"]:
        for metric in metrics:
            key = col if len(metrics) == 1 else (col, metric)
            data[key] = [_cell_value(t, row, col, metric) for row in t["rows"]]
    df = pd.DataFrame(data, index=pd.Index(list(t["rows"]), name=t["index"]))
    if len(metrics) > 1:
        df.columns = pd.MultiIndex.from_tuples(df.columns, names=["column", "metric"])
    df.attrs.update(title=t["title"], seeds=int(_load()["seeds"]), metrics=metrics, table=int(n))
    return df


def _cell_value(t: dict[str, Any], row: str, column: str, metric: str) -> float:
    cell = t["cells"][row][column]
    if isinstance(cell, dict):
        return _number(cell.get(metric))
    return _number(cell)


def paper_value(table: int, row: str, column: str, metric: str = "dice") -> float:
    """One published number; NaN for a blank cell. Sensitivity, precision and ASSD of
    Tables 3 and 4 are looked up in their appendix tables (7-10)."""
    t = _table(table)
    if metric not in t["metrics"] and metric in t.get("appendix", {}):
        t = _table(t["appendix"][metric])
    if metric not in t["metrics"]:
        raise KeyError(f"Table {table} reports {t['metrics']}, not {metric!r}")
    if row not in t["cells"]:
        raise KeyError(f"Table {table} has no row {row!r}; rows: {t['rows']}")
    if column not in t["cells"][row]:
        raise KeyError(f"Table {table} has no column {column!r}; columns: {t['columns']}")
    return _cell_value(t, row, column, metric)


def paper_metric_table(table: int, metrics: Sequence[str] = ("sensitivity", "precision", "assd")
                       ) -> pd.DataFrame:
    """Table 3's or 4's models with the appendix metrics (Tables 7-10), columns (column, metric),
    in the layout `mmlib.experiments.results.tables.metric_table` builds."""
    rows, columns = paper_layout(table)
    data = {(col, m): [paper_value(table, r, col, m) for r in rows] for col in columns for m in metrics}
    df = pd.DataFrame(data, index=pd.Index(rows, name=_table(table)["index"]))
    df.columns = pd.MultiIndex.from_tuples(df.columns, names=["column", "metric"])
    df.attrs.update(seeds=int(_load()["seeds"]), metrics=list(metrics), table=int(table))
    return df


__all__ = ["PAPER_RESULTS", "paper_results", "paper_layout", "paper_finding", "paper_table",
           "paper_value", "paper_metric_table"]
