"""The notebooks read their findings in words under the table they come from: our effect, its
interval and verdict beside the paper's effect, or 'untested' where a model was not run."""

from __future__ import annotations

from test_findings import cells_at, rows_for_cells

from mmlib.experiments.notebook import reading
from mmlib.experiments.results.findings import CLAUSES, evaluate_findings

F4 = next(c for c in CLAUSES if c.key == "F4 better than the tumour-only model (Tumor 2 T1)")


def test_a_finding_is_read_with_our_effect_interval_and_verdict_beside_the_papers():
    text = reading(evaluate_findings(rows_for_cells(cells_at(F4, 0.2))), "F4")
    heading, _, clause = text.splitlines()[:3]
    assert heading.startswith("**F4 at this preset: holds**")
    assert clause.startswith("- better than the tumour-only model (Tumor 2 T1) (claim > 0): +0.200 [")
    assert clause.endswith("**holds**; the paper +0.051")


def test_a_clause_whose_models_were_not_run_is_read_as_untested():
    text = reading(evaluate_findings(rows_for_cells(cells_at(F4, 0.2))), "F3")
    assert "**F3 at this preset: untested**" in text
    assert text.count("untested (a model it needs was not run)") == sum(c.finding == "F3" for c in CLAUSES)
