"""How results become the paper's tables: the result rows on disk (rows), the one Markdown table
writer (markdown), the paper's numbers (paper), tables, findings, learning records, report.md, the
shipped reference runs (reference) and publishing one (publish). Reads plan/; never run/."""
