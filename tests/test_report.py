"""The study report is built from saved results: tables beside the paper's, and the findings."""

from __future__ import annotations

from test_findings import f1_results

from mmlib.experiments.report import markdown_table, study_report, write_report
from mmlib.experiments.study import save_results


def test_markdown_table_rounds_numbers_and_marks_missing_cells():
    import pandas as pd

    df = pd.DataFrame({"dice": [0.12345, float("nan")], "seeds": [3.0, 0.0]},
                      index=pd.Index(["a|b", "c"], name="row"))
    assert markdown_table(df).splitlines() == ["| row | dice | seeds |", "|---|---|---|",
                                               "| a/b | 0.123 | 3 |", "| c | – | 0 |"]


def test_report_puts_our_table_beside_the_papers_and_judges_the_findings(tmp_path):
    results = f1_results()
    save_results(results, tmp_path, "01_single_database")
    (tmp_path / "timings.json").write_text('{"01_single_database_baselines": 90.0}')
    path = write_report(tmp_path, "smoke")
    text = path.read_text()
    assert "# Study report: preset smoke" in text and "| total | 1.5 |" in text
    table2 = text.split("## Table 2")[1].split("## Table 3")[0]
    assert "| ours |" in table2 and "| paper |" in table2 and "0.700" in table2
    assert "### F1: holds" in text
    # Tables the run has no results for say so instead of printing empty frames.
    assert "*Not built:" in text.split("## Table 4")[1].split("## Table 5")[0]
    assert not list(tmp_path.glob("*.tmp"))


def test_report_of_a_run_without_results_names_every_table_as_not_built(tmp_path):
    text = study_report(tmp_path, "smoke")
    assert text.count("*Not built:") == 5 and "### F1: not tested" in text
