"""The study report is built from saved results: the protocol beside the paper's, tables beside the
paper's with the deviations under each, and every clause of the findings with its interval."""

from __future__ import annotations

import pandas as pd
from test_findings import cells_at, rows_for_cells

from mmlib.experiments.plan.deviations import deviations
from mmlib.experiments.results.findings import CLAUSES
from mmlib.experiments.results.markdown import markdown_table
from mmlib.experiments.results.report import study_report
from mmlib.presets import load_preset


def test_markdown_table_rounds_numbers_and_marks_missing_cells():
    df = pd.DataFrame({"dice": [0.12345, float("nan")], "seeds": [3.0, 0.0]},
                      index=pd.Index(["a|b", "c"], name="row"))
    assert markdown_table(df).splitlines() == ["| row | dice | seeds |", "|---|---|---|",
                                               "| a/b | 0.123 | 3 |", "| c | – | 0 |"]


def test_report_puts_our_table_beside_the_papers_with_deviations_and_judges_each_clause(tmp_path):
    clause = next(c for c in CLAUSES if c.key == "F4 better than the tumour-only model (Tumor 2 T1)")
    results = rows_for_cells(cells_at(clause, 0.05))
    (tmp_path / "timings.json").write_text('{"03_new_modality_sets": 90.0}')
    preset = load_preset("quick")
    text = study_report(tmp_path, preset, results)
    assert "# Study report: preset quick" in text and "| total | 1.5 |" in text
    table4 = text.split("## Table 4")[1].split("## Table 5")[0]
    assert "| ours |" in table4 and "| paper |" in table4 and "0.550" in table4
    # The deviations are stated once, at the top; under the table one line refers to them.
    assert "Protocol at preset quick:" in table4 and "(deviations table above)" in table4
    assert "3 mm" not in table4 and text.count("3 mm") == 1
    for d in deviations(preset):  # the whole protocol, aspect by aspect
        assert f"| {d.aspect} |" in text
    assert "### F4: holds" in text and "[+0.050, +0.050]" in text
    # Tables the run has no results for say so instead of printing empty frames.
    assert "*Not built:" in text.split("## Table 2")[1].split("## Table 3")[0]


def test_report_of_a_run_without_results_names_every_table_as_not_built(tmp_path):
    text = study_report(tmp_path, load_preset("smoke"), pd.DataFrame())
    assert text.count("*Not built:") == 7 and "### F1: untested" in text
