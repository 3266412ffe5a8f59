"""Result rows on disk: one reader and one writer of the tidy CSVs every evaluation, notebook and
reference run keeps (columns: docs/RESULTS_SCHEMA.md)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mmlib.atomic_files import atomic_path
from mmlib.errors import MMLibError

#: Numeric columns that stay numbers even when every value is missing.
NUMERIC_COLUMNS = ("dice", "sensitivity", "precision", "assd", "n_train_cases", "val_dice", "val_floor")
#: Columns that are always text, whatever they look like: hashes and names. Read by inference, an
#: identity of 12 decimal digits became an integer (or '1234e5678901' a float) and no longer equalled
#: the identity it was written from, and a case id '007' lost its zeros.
TEXT_COLUMNS = ("database", "case_id", "model", "subset", "arch", "training", "train_databases", "method",
                "labels", "held_out", "preset", "train_precision", "model_id", "eval_settings", "eval_data_id",
                "synthetic_databases", "modality", "direction")


def read_rows(path: Path) -> pd.DataFrame:
    """Result rows as written: empty text stays '' (a missing metric is NaN)."""
    try:
        rows = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={c: str for c in TEXT_COLUMNS})
    except (OSError, ValueError) as exc:
        raise MMLibError(f"unreadable result rows ({exc}); delete the file to evaluate again", path) from None
    text = [c for c in rows.columns if not pd.api.types.is_numeric_dtype(rows[c]) or rows[c].isna().all()]
    text = [c for c in text if c not in NUMERIC_COLUMNS]
    return rows.astype({c: object for c in text}).fillna({c: "" for c in text})


def write_rows(rows: pd.DataFrame, path: Path) -> Path:
    """Write result rows to a CSV atomically (folders made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        rows.to_csv(tmp, index=False)
    return path


def save_results(df: pd.DataFrame, out_dir: Path, name: str) -> Path:
    """Write a notebook's tidy rows to out_dir/results/<name>.csv atomically."""
    return write_rows(df, Path(out_dir) / "results" / f"{name}.csv")


__all__ = ["NUMERIC_COLUMNS", "TEXT_COLUMNS", "read_rows", "write_rows", "save_results"]
