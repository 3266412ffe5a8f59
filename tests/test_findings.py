"""F1-F6 judged clause by clause: for every clause, result rows just either side of its threshold
flip its verdict; intervals, missing models and the paper's own numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mmlib.data.manifest import TRAINING_DATABASES, load_manifest
from mmlib.experiments.plan.specs import ARCHITECTURES, single_test_modality
from mmlib.experiments.results import tables as T
from mmlib.experiments.results.findings import (CLAUSES, evaluate_findings, finding_verdict, findings_markdown, judge,
                                        judge_paper, verdict, write_findings)

CASES = ("c1", "c2", "c3")
EPS = 0.005


def _mods(db: str) -> list[str]:
    return list(load_manifest(db).modalities)


def _rows(database, subset, value, cases=CASES, seed=0, **columns) -> list[dict]:
    """Tidy rows (docs/RESULTS_SCHEMA.md), one per case, all with Dice `value` (or one per case)."""
    values = value if isinstance(value, (list, tuple)) else [value] * len(cases)
    full = "+".join(subset) == "+".join(_mods(database)) if database in TRAINING_DATABASES else columns.pop("full", False)
    base = dict(arch="multiunet", training="MD", train_databases="+".join(TRAINING_DATABASES), drop=True,
                method="", labels="all", seed=seed, preset="test", single_modality=False)
    base.update(columns)
    name = f"{base['training']}-{base['arch']}-{base['drop']}-{base['train_databases']}-{base['method']}-{base['labels']}"
    return [dict(base, database=database, case_id=c, subset="+".join(subset), n_modalities=len(subset),
                 all_modalities=full, model=name, dice=v) for c, v in zip(cases, values)]


def _loo(db: str) -> dict:
    return dict(training="LOO", train_databases="+".join(d for d in TRAINING_DATABASES if d != db), drop=True)


def rows_for_cells(cells: dict, value_of=lambda v: v) -> pd.DataFrame:
    """Rows that give each (table, row, column) of `cells` its value in our tables."""
    out: list[dict] = []
    table2: dict = {}
    for (table, row, col), v in cells.items():
        if table == 2:
            table2[(col[0], row == "modality drop", col[1])] = v
        elif table == 3:
            spec = {k: w for k, w in T.TABLE3_ROWS[row].items() if k != "own"}
            if spec["training"] == "SD":
                spec["train_databases"] = col
            out += _rows(col, _mods(col), value_of(v), **spec)
        elif table == 4:
            spec, where = dict(T.TABLE4_ROWS[row]), T.TABLE4_COLUMNS[col]
            out += _rows(where["database"], where["subset"].split("+"), value_of(v), **spec)
        elif table == 5:
            single = [single_test_modality(_mods(col))]
            if row == "Unet-SD (upper bound), all":
                out += _rows(col, _mods(col), value_of(v), training="SD", train_databases=col, drop=False)
            elif row == "Multi-Unet (drop), FLAIR or T1":
                out += _rows(col, single, value_of(v), **_loo(col))
            elif row == "Multi-Unet (drop), all":
                out += _rows(col, _mods(col), value_of(v), **_loo(col))
            elif row == T.FLOOR_ROW:
                out += _rows(col, single, value_of(v), arch="outlier", training="rule", train_databases="", drop=False)
        elif table == 6:
            method, labels = T.TABLE6_COLUMNS[col]
            if method == "0-shot":
                out += _rows(row, _mods(row), value_of(v), **_loo(row))
            elif method == "scratch":
                out += _rows(row, _mods(row), value_of(v), training="SD", train_databases=row, drop=False, labels=labels)
            else:
                out += _rows(row, _mods(row), value_of(v), training="finetune", train_databases=row, method=method,
                             labels=labels, arch="progressive" if method == "progressive" else "multiunet")
    for arch, drop in {(a, d) for a, d, _ in table2}:
        key = {n: k for n, k in T.PAPER_ARCHITECTURES.items()}[arch]
        full = table2.get((arch, drop, "dice"), 0.5)
        change = table2.get((arch, drop, "dice_change"), -0.2)
        spec = dict(arch=key, training="SD", train_databases="WMH", drop=drop)
        out += _rows("WMH", ["FLAIR", "T1"], value_of(full), **spec)
        out += _rows("WMH", ["FLAIR"], value_of(full + change), **spec)
        out += _rows("WMH", ["T1"], value_of(full + change), **spec)
    return pd.DataFrame(out)


def cells_at(clause, target: float) -> dict:
    """A value for every cell of `clause` such that its effect equals `target` (others 0.5)."""
    cells = {}
    for _, parts in clause.groups:
        (w1, first), rest = parts[0], parts[1:]
        for w, cell in rest:
            cells[cell] = 0.5
        cells[first] = (target - sum(w * 0.5 for w, _ in rest)) / w1
    return cells


def claimed(clause, sign: int) -> float:
    """Just on the claimed side of the threshold (sign +1) or just on the other side (-1)."""
    direction = 1 if clause.side == ">" else -1
    return clause.threshold + sign * direction * EPS


@pytest.mark.parametrize("clause", CLAUSES, ids=lambda c: c.key)
def test_each_clause_flips_from_holds_to_does_not_hold_across_its_threshold(clause):
    holds = judge(clause, T.tidy_results(rows_for_cells(cells_at(clause, claimed(clause, +1)))), n_bootstrap=200)
    fails = judge(clause, T.tidy_results(rows_for_cells(cells_at(clause, claimed(clause, -1)))), n_bootstrap=200)
    assert holds.effect == pytest.approx(claimed(clause, +1), abs=1e-9)
    assert (holds.verdict, fails.verdict) == ("holds", "does not hold")


def test_a_clause_whose_interval_straddles_the_threshold_is_inconclusive():
    clause = next(c for c in CLAUSES if c.key == "F4 better than the tumour-only model (Tumor 2 T1)")
    cells = cells_at(clause, 0.01)
    spread = [-0.2, 0.0, 0.2]  # per-case noise much larger than the effect
    df = rows_for_cells(cells, value_of=lambda v: [v + s for s in spread] if v != 0.5 else v)
    j = judge(clause, T.tidy_results(df), n_bootstrap=500)
    assert j.low < 0 < j.high and j.verdict == "inconclusive"


def test_resampling_is_paired_across_models_on_the_same_cases():
    """A joint model better by 0.02 on every case holds, however much the cases differ."""
    clause = next(c for c in CLAUSES if c.key == "F4 better than the tumour-only model (Tumor 2 T1)")
    base = [0.2, 0.5, 0.8]
    df = pd.DataFrame(_rows("TUMOR2", ["T1"], [b + 0.02 for b in base], **T.TABLE4_ROWS["all five (drop)"])
                      + _rows("TUMOR2", ["T1"], base, **T.TABLE4_ROWS["BRATS only (drop)"]))
    j = judge(clause, T.tidy_results(df), n_bootstrap=500)
    assert j.low == pytest.approx(0.02) and j.verdict == "holds"


def test_seeds_are_resampled_too():
    clause = next(c for c in CLAUSES if c.key == "F4 better than the tumour-only model (Tumor 2 T1)")
    rows = []
    for seed, gain in ((0, 0.1), (1, -0.1)):  # the seeds disagree: no claim either way
        rows += _rows("TUMOR2", ["T1"], 0.5 + gain, seed=seed, **T.TABLE4_ROWS["all five (drop)"])
        rows += _rows("TUMOR2", ["T1"], 0.5, seed=seed, **T.TABLE4_ROWS["BRATS only (drop)"])
    j = judge(clause, T.tidy_results(pd.DataFrame(rows)), n_bootstrap=500)
    assert j.seeds == 2 and j.verdict == "inconclusive" and j.effect == pytest.approx(0.0)


def test_a_clause_without_its_models_is_untested_and_names_the_missing_cells():
    clause = next(c for c in CLAUSES if c.key.startswith("F1 little cost (LFUnet)"))
    j = judge(clause, T.tidy_results(rows_for_cells({(2, "all modalities", ("Multi-Unet", "dice")): 0.5})))
    assert j.verdict == "untested" and any("LFUnet" in m for m in j.missing)


def test_a_pooled_clause_run_on_some_targets_reports_them_but_stays_untested():
    clause = next(c for c in CLAUSES if c.key == "F6 fine-tuning beats scratch, limited labels")
    wmh = {(6, "WMH", "limited finetune"): 0.7, (6, "WMH", "limited scratch"): 0.6}
    j = judge(clause, T.tidy_results(rows_for_cells(wmh)), n_bootstrap=100)
    assert j.verdict == "untested" and j.groups_measured == 1 and j.effect == pytest.approx(0.1)


def test_a_finding_holds_only_when_every_clause_holds():
    class J:
        def __init__(self, v):
            self.verdict = v
    assert finding_verdict([J("holds"), J("holds")]) == "holds"
    assert finding_verdict([J("holds"), J("untested")]) == "untested"
    assert finding_verdict([J("holds"), J("inconclusive"), J("untested")]) == "inconclusive"
    assert finding_verdict([J("inconclusive"), J("does not hold")]) == "does not hold"


def test_verdicts_of_an_interval_against_a_threshold():
    assert verdict(">", 0.0, 0.01, 0.2) == "holds"
    assert verdict(">", 0.0, -0.01, 0.2) == "inconclusive"
    assert verdict(">", 0.0, -0.2, 0.0) == "does not hold"  # a tie is not 'more'
    assert verdict("<", 0.1, 0.02, 0.09) == "holds"
    assert verdict("<", 0.1, 0.1, 0.3) == "does not hold"


def test_every_clause_holds_on_the_papers_own_numbers():
    assert {c.key: judge_paper(c).verdict for c in CLAUSES} == {c.key: "holds" for c in CLAUSES}


def test_f5_is_judged_against_the_label_free_floor_not_a_constant():
    clause = next(c for c in CLAUSES if c.key == "F5 above chance (WMH)")
    cells = {(5, "Multi-Unet (drop), FLAIR or T1", "WMH"): 0.31, (5, T.FLOOR_ROW, "WMH"): 0.35}
    j = judge(clause, T.tidy_results(rows_for_cells(cells)), n_bootstrap=100)
    assert j.effect == pytest.approx(-0.04) and j.verdict == "does not hold"
    # Without the floor's rows nothing stands in for it.
    del cells[(5, T.FLOOR_ROW, "WMH")]
    assert judge(clause, T.tidy_results(rows_for_cells(cells))).verdict == "untested"


def test_every_clause_names_the_papers_words_its_threshold_and_why():
    assert {c.finding for c in CLAUSES} == {"F1", "F2", "F3", "F4", "F5", "F6"}
    assert all(c.words and c.why and c.side in "<>" for c in CLAUSES)
    assert sum(c.finding == "F1" for c in CLAUSES) == 2 * len(ARCHITECTURES)  # every architecture


def test_findings_json_and_markdown_carry_effect_interval_and_verdict(tmp_path):
    clause = next(c for c in CLAUSES if c.key == "F4 better than the tumour-only model (Tumor 2 T1)")
    results = rows_for_cells(cells_at(clause, 0.05))
    path = write_findings(results, tmp_path)
    data = json.loads(path.read_text())
    f4 = data["findings"]["F4"]
    assert f4["verdict"] == "holds" and f4["clauses"][0]["ci95"] == [0.05, 0.05]
    assert data["findings"]["F1"]["verdict"] == "untested"
    text = findings_markdown(evaluate_findings(results, n_bootstrap=100))
    assert "### F4: holds" in text and "[+0.050, +0.050]" in text and "### F1: untested" in text
    assert not list(tmp_path.glob(".*.tmp"))


def test_every_finding_is_untested_on_empty_results():
    f = evaluate_findings(pd.DataFrame(), n_bootstrap=10)
    assert {k: v["verdict"] for k, v in f.items()} == {f"F{i}": "untested" for i in range(1, 7)}
    assert all(v["paper_verdict"] == "holds" for v in f.values())


def test_bootstrap_intervals_are_the_same_at_every_reading():
    clause = next(c for c in CLAUSES if c.key == "F4 better than the tumour-only model (Tumor 2 T1)")
    df = rows_for_cells(cells_at(clause, 0.02), value_of=lambda v: list(np.array([v - 0.1, v, v + 0.1])))
    a, b = judge(clause, T.tidy_results(df)), judge(clause, T.tidy_results(df))
    assert (a.low, a.high) == (b.low, b.high)
