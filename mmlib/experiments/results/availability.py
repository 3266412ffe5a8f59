"""What a study without some of the paper's databases can compute, cell by cell and clause by clause.

A user outside the paper's institutions has no TBI and no Tumor 2 (both private). Every table cell
and every clause of F1-F6 that needs a database the study lacks reads 'not available (TBI is
private)': never a number, never silently dropped from an average. Table 3's average over the
databases present is a column of its own, labelled with how many it averages, beside the paper's
average over the same databases. Tables 2 (a mean over the databases where both models ran) and
the models' own training sets (a joint model of four) are stated in the line under each table
(plan.deviations).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mmlib.atomic_files import atomic_write_json
from mmlib.data.manifest import TRAINING_DATABASES
from mmlib.data.sources import not_available
from mmlib.experiments.results import tables as T
from mmlib.experiments.results.findings import CLAUSES, evaluate_findings, finding_verdict, findings_json
from mmlib.experiments.results.paper import paper_layout, paper_value


def cell_databases(table: int, row: str, column) -> set[str]:
    """The databases a cell of Table `table` reads (Avg: all five; Table 4's columns: ISLES or
    Tumor 2; Table 6's rows: the target). Table 2 averages the databases present: none is needed."""
    col = column[0] if isinstance(column, tuple) else column
    if table in (3, 7):
        return set(TRAINING_DATABASES) if col == "Avg" else {col} & set(TRAINING_DATABASES)
    if table in (4, 9):
        return {T.TABLE4_COLUMNS[col]["database"]} if col in T.TABLE4_COLUMNS else set()
    if table == 5:
        return {col} & set(TRAINING_DATABASES)
    if table == 6:
        return {row} & set(TRAINING_DATABASES)
    return set()


def reason(needed, unavailable: dict[str, str]) -> str | None:
    """'not available (TBI is private)' where a needed database is missing, else None."""
    missing = [d for d in unavailable if d in needed]
    return not_available("; ".join(unavailable[d] for d in missing)) if missing else None


def mark_table(table: int, frame: pd.DataFrame, unavailable: dict[str, str] | None,
               results: pd.DataFrame | None = None) -> pd.DataFrame:
    """`frame` (a table beside the paper's: index (row, source)) with our cells that need a missing
    database replaced by 'not available (...)' (the reference runs' and the paper's keep theirs);
    Table 3 gains its average over the databases present, ours and the paper's over the same ones,
    labelled with their number."""
    if not unavailable or frame.empty:
        return frame
    out = frame.astype(object)
    for (row, source) in out.index:
        if source != "ours":
            continue
        for col in out.columns:
            if (col[0] if isinstance(col, tuple) else col) == "seeds":
                continue
            why = reason(cell_databases(table, row, col), unavailable)
            if why:
                out.loc[(row, source), col] = why
    if table in (3, 7) and results is not None:
        out = _present_average(out, results, [d for d in TRAINING_DATABASES if d not in unavailable], table)
    return out


def _present_average(out: pd.DataFrame, results: pd.DataFrame, present: list[str], table: int = 3) -> pd.DataFrame:
    """Table 3's (or Table 7's, per metric) 'Avg over N (the databases present)': ours from the same
    terms as Avg, the paper's over the same databases; ours is NaN where a database's cell is
    missing (never a shorter mean)."""
    label = f"Avg over {len(present)} ({', '.join(present)}; the paper's Avg is over five)"
    df = T.tidy_results(results) if not results.empty else results
    metrics = [c[1] for c in out.columns if c[0] == "Avg"] if table == 7 else ["dice"]
    paper_rows = paper_layout(3)[0]
    avg = [c for c in out.columns if (c[0] if isinstance(c, tuple) else c) == "Avg"]
    at = list(out.columns).index(avg[-1]) + 1 if avg else len(out.columns)
    for i, metric in enumerate(metrics):
        scale = 100.0 if metric in T.PERCENT_METRICS else 1.0
        values = []
        for row, source in out.index:
            if source == "paper":
                paper = [paper_value(3, row, d, metric) for d in present] if row in paper_rows else []
                values.append(sum(paper) / len(paper) if paper else float("nan"))
            elif source == "ours" and not df.empty:
                parts = [T.cell_terms(3, row, d, df, metric) for d in present]
                values.append(scale * sum(T.combine(p)[0] for p in parts) / len(parts) if all(parts)
                              else float("nan"))
            else:
                values.append(float("nan"))
        out.insert(at + i, label if table == 3 else (label, metric), values)
    return out


def _clause_databases(clause) -> set[str]:
    return {d for _, parts in clause.groups for _, (table, row, col) in parts for d in cell_databases(table, row, col)}


def mark_findings(findings: dict, unavailable: dict[str, str] | None) -> dict:
    """`evaluate_findings`' answer with every clause that needs a missing database marked 'not
    available (...)' (its effect over the groups present stays, labelled 'measured on k of n'); a
    finding's verdict is over its available clauses and says how many were not available."""
    if not unavailable:
        return findings
    for f in findings.values():
        marked = []
        for j in f["clauses"]:
            why = reason(_clause_databases(j.clause), unavailable)
            if why:
                j.verdict = why
                marked.append(j)
        if not marked:
            continue
        rest = [j for j in f["clauses"] if j not in marked]
        f["not_available"] = [j.clause.key for j in marked]
        f["verdict"] = (marked[0].verdict if not rest else
                        f"{finding_verdict(rest)} on the clauses available; {len(marked)} of {len(f['clauses'])} "
                        f"{marked[0].verdict}")
    return findings


def available_findings(results: pd.DataFrame, unavailable: dict[str, str] | None = None) -> dict:
    """F1-F6 judged on `results`, the clauses a missing database decides marked not available."""
    return mark_findings(evaluate_findings(results), unavailable)


def write_findings(results: pd.DataFrame, path: str | Path, unavailable: dict[str, str] | None = None) -> Path:
    """Judge the findings (clauses needing a missing database marked) and write them as JSON; `path`
    is a .json file or a folder (then <path>/findings.json)."""
    path = Path(path)
    if path.suffix != ".json":
        path = path / "findings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, findings_json(available_findings(results, unavailable)))


def computable(unavailable: dict[str, str]) -> pd.DataFrame:
    """Per table and finding of the paper: whether a study lacking `unavailable` can compute it
    (all of it, part of it with the cells needing them not available, or none)."""
    rows = []
    for spec in T.TABLES.values():
        paper = spec.paper()
        cells = [(r, c) for r in paper.index for c in paper.columns if (c[0] if isinstance(c, tuple) else c) != "seeds"]
        lost = [(r, c) for r, c in cells if reason(cell_databases(spec.number, r, c), unavailable)]
        rows.append({"what": spec.name, "computable": _share(len(lost), len(cells)),
                     "needs": ", ".join(sorted({d for r, c in lost for d in cell_databases(spec.number, r, c)
                                               if d in unavailable})) or "–"})
    for name in sorted({c.finding for c in CLAUSES}):
        clauses = [c for c in CLAUSES if c.finding == name]
        lost = [c for c in clauses if reason(_clause_databases(c), unavailable)]
        rows.append({"what": name, "computable": _share(len(lost), len(clauses)),
                     "needs": ", ".join(sorted({d for c in lost for d in _clause_databases(c) if d in unavailable}))
                     or "–"})
    return pd.DataFrame(rows).set_index("what")


def _share(lost: int, total: int) -> str:
    if not lost:
        return "yes"
    return "no" if lost == total else f"in part ({total - lost} of {total})"


__all__ = ["cell_databases", "reason", "mark_table", "mark_findings", "available_findings", "write_findings",
           "computable"]
