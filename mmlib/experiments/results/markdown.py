"""The one Markdown table writer: every pipe table of report.md, the findings and the README."""

from __future__ import annotations

import pandas as pd


def markdown_table(df: pd.DataFrame, decimals: int = 3) -> str:
    """A pipe table of `df` (index as leading columns); numbers rounded, NaN as '–'."""
    flat = df.reset_index()
    heads = [" ".join(str(p) for p in c if str(p)) if isinstance(c, tuple) else str(c) for c in flat.columns]

    def cell(v, head):
        if isinstance(v, float):
            return "–" if pd.isna(v) else str(int(v)) if head == "seeds" else f"{v:.{decimals}f}"
        return "–" if v is None else str(v).replace("|", "/")

    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(cell(v, h) for v, h in zip(row, heads)) + " |"
              for row in flat.itertuples(index=False)]
    return "\n".join(lines)


__all__ = ["markdown_table"]
