"""Reference runs shipped with mmlib: written with their provenance, read back, and shown beside a
user's run (labelled as reference) in the tables, the report and the results explorer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from test_findings import cells_at, rows_for_cells

from mmlib.errors import MMLibError
from mmlib.experiments.results.findings import CLAUSES
from mmlib.experiments.results.publish import save_reference
from mmlib.experiments.results.reference import reference_runs
from mmlib.experiments.results.report import study_report
from mmlib.experiments.results.tables import TABLES
from mmlib.presets import load_preset

F4 = next(c for c in CLAUSES if c.key == "F4 better than the tumour-only model (Tumor 2 T1)")


def fake_study(tmp_path, effect):
    results = rows_for_cells(cells_at(F4, effect))
    return SimpleNamespace(results=lambda: results, out_dir=tmp_path, preset=load_preset("quick"),
                           models_dir=tmp_path / "models", is_current_model=lambda name: True,
                           twins=True, unavailable=dict)


def test_a_reference_run_keeps_rows_findings_report_and_provenance(tmp_path):
    folder = save_reference(fake_study(tmp_path, 0.05), "long-cpu", "91 min", folder=tmp_path / "ref")
    assert sorted(p.name for p in folder.iterdir()) == ["findings.json", "learning.json", "provenance.json", "report.md",
                                                          "results.csv.gz"]
    run = reference_runs(tmp_path / "ref")["long-cpu"]
    assert run.provenance["preset"] == "quick" and run.provenance["wall_time"] == "91 min"
    assert {"commit", "device", "date"} <= set(run.provenance)
    assert len(run.results) == len(rows_for_cells(cells_at(F4, 0.05)))
    assert json.loads((folder / "findings.json").read_text())["findings"]["F4"]["verdict"] == "holds"
    assert "Reference run long-cpu" in (folder / "report.md").read_text()
    assert not list((tmp_path / "ref").glob(".*"))


def test_an_incomplete_reference_is_refused_naming_it(tmp_path):
    (tmp_path / "ref" / "broken").mkdir(parents=True)
    (tmp_path / "ref" / "broken" / "provenance.json").write_text('{"preset": "quick"}')
    with pytest.raises(MMLibError, match="incomplete reference run"):
        reference_runs(tmp_path / "ref")


def test_tables_and_report_show_the_reference_between_ours_and_the_papers(tmp_path):
    save_reference(fake_study(tmp_path, 0.2), "long-cpu", "91 min", folder=tmp_path / "ref")
    refs = reference_runs(tmp_path / "ref")
    ours = rows_for_cells(cells_at(F4, 0.05))
    both = TABLES[4].side_by_side(ours, {n: r.results for n, r in refs.items()})
    row = "all five (drop)"
    assert [s for r, s in both.index if r == row] == ["ours", "reference long-cpu", "paper"]
    assert both.loc[(row, "ours"), "Tumor 2 (T1)"] == pytest.approx(0.55)
    assert both.loc[(row, "reference long-cpu"), "Tumor 2 (T1)"] == pytest.approx(0.70)
    text = study_report(tmp_path, load_preset("quick"), ours, references=refs)
    assert "| reference long-cpu |" in text and "## Reference runs shown beside this one" in text


def test_the_results_explorer_switches_to_a_reference_and_labels_it(tmp_path):
    from mmlib.widgets import ResultsExplorer

    ours = rows_for_cells(cells_at(F4, 0.05))
    ref = rows_for_cells(cells_at(F4, 0.2))
    ex = ResultsExplorer(ours, references={"long-cpu": ref})
    assert list(ex.source.options) == ["this run", "reference long-cpu"]
    ex.database.value, ex.setting.value = "TUMOR2", "MD (drop)"  # the joint model: 0.55 here, 0.70 there
    before = ex.spread.copy()
    ex.source.value = "reference long-cpu"
    assert ex.database.value == "TUMOR2" and not ex.spread.equals(before)
    ex.table_choice.value = 4
    assert ("all five (drop)", "reference long-cpu") in ex.table.index
    # The tables stay this run's, with the reference beside it, whichever rows the plots show.
    assert ex.table.loc[("all five (drop)", "ours"), "Tumor 2 (T1)"] == pytest.approx(0.55)


def test_every_shipped_reference_run_is_whole_and_its_verdicts_follow_from_its_rows():
    from mmlib.experiments.results.findings import evaluate_findings

    runs = reference_runs()
    assert runs, "mmlib ships at least one reference run"
    for name, run in runs.items():
        assert run.provenance["preset"] and len(run.provenance["commit"]) == 40, name
        saved = json.loads((run.folder / "findings.json").read_text())["findings"]
        again = evaluate_findings(run.results)
        assert {k: f["verdict"] for k, f in saved.items()} == {k: f["verdict"] for k, f in again.items()}, name
        assert f"Reference run {name}" in (run.folder / "report.md").read_text()
