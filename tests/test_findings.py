"""F1-F6 tested on synthetic tidy results: one frame where each holds, one where it fails,
one without the runs it needs."""

import json

import pandas as pd
import pytest

from mmlib.experiments.findings import (evaluate_findings, findings_markdown, paper_findings,
                                        write_findings)

LOO_WMH = "BRATS+ATLAS+MSSEG+TBI"


def rows(database, subset, dice, *, full=True, seed=0, arch="multiunet", training="MD", drop=True,
         train_databases="", method="", labels=""):
    """One tidy result row (docs/RESULTS_SCHEMA.md), as a one-element list."""
    return [dict(database=database, case_id="c1", subset=subset, n_modalities=len(subset.split("+")),
                 all_modalities=full, model=f"{training}-{train_databases}-{arch}-{drop}-{method}-{labels}",
                 arch=arch, training=training, train_databases=train_databases, drop=drop,
                 method=method, labels=labels, seed=seed, preset="smoke", dice=dice)]


def frame(*row_lists):
    return pd.DataFrame([r for rs in row_lists for r in rs])


def sd(database, subset, dice, **kw):
    return rows(database, subset, dice, **dict(dict(training="SD", train_databases=database, drop=False), **kw))


def holds(results, name):
    return evaluate_findings(results)[name]["holds"]


EMPTY = pd.DataFrame(columns=["database", "case_id", "subset", "seed", "dice"])


# -- F1 -----------------------------------------------------------------------------------
def f1_results(drop_full=0.68):
    return frame(sd("WMH", "FLAIR+T1", 0.70), sd("WMH", "FLAIR", 0.40, full=False), sd("WMH", "T1", 0.20, full=False),
                 sd("WMH", "FLAIR+T1", drop_full, drop=True), sd("WMH", "FLAIR", 0.60, full=False, drop=True),
                 sd("WMH", "T1", 0.50, full=False, drop=True))


def test_f1_holds_when_drop_shrinks_the_loss_at_little_cost():
    assert holds(f1_results(), "F1") is True


def test_f1_fails_when_drop_costs_much_with_all_modalities():
    assert holds(f1_results(drop_full=0.50), "F1") is False


def test_f1_is_untested_without_models_trained_both_ways():
    assert holds(f1_results()[lambda d: ~d["drop"]], "F1") is None


# -- F2 -----------------------------------------------------------------------------------
def f2_results(md_wmh=0.72):
    return frame(sd("WMH", "FLAIR+T1", 0.70), sd("MSSEG", "FLAIR+T1+T2", 0.66),
                 rows("WMH", "FLAIR+T1", md_wmh), rows("MSSEG", "FLAIR+T1+T2", 0.66))


def test_f2_holds_when_the_joint_average_matches_single_database_models():
    f = evaluate_findings(f2_results())["F2"]
    assert f["holds"] is True
    assert f["measured"]["md_average"] == pytest.approx(0.69)
    assert f["paper"]["md_average"] == pytest.approx(0.663, abs=1e-3)  # mean of the five cells


def test_f2_fails_when_the_joint_model_is_clearly_worse():
    assert holds(f2_results(md_wmh=0.5), "F2") is False


def test_f2_is_untested_without_single_database_models():
    assert holds(frame(rows("WMH", "FLAIR+T1", 0.72)), "F2") is None


# -- F3 -----------------------------------------------------------------------------------
def f3_results(md_drop_t1=0.35):
    return frame(rows("ISLES", "T1", md_drop_t1, full=False), rows("ISLES", "T1+T2", 0.42, full=False),
                 rows("ISLES", "T1", 0.05, full=False, drop=False), rows("ISLES", "T1+T2", 0.06, full=False, drop=False),
                 sd("ISLES", "T1", 0.05, full=False, train_databases="ATLAS"))


def test_f3_holds_when_the_drop_model_clearly_beats_both_comparators():
    assert holds(f3_results(), "F3") is True


def test_f3_fails_when_the_drop_model_also_fails_on_t1_alone():
    assert holds(f3_results(md_drop_t1=0.08), "F3") is False


def test_f3_is_untested_without_comparators():
    assert holds(frame(rows("ISLES", "T1", 0.35, full=False)), "F3") is None


# -- F4 -----------------------------------------------------------------------------------
def f4_results(md=0.70):
    return frame(rows("TUMOR2", "T1", md), sd("TUMOR2", "T1", 0.65, train_databases="BRATS", drop=True))


def test_f4_holds_when_the_joint_model_beats_the_tumour_only_model():
    assert holds(f4_results(), "F4") is True


def test_f4_fails_when_the_tumour_only_model_is_better():
    assert holds(f4_results(md=0.60), "F4") is False


def test_f4_is_untested_without_the_tumour_only_model():
    assert holds(frame(rows("TUMOR2", "T1", 0.7)), "F4") is None


# -- F5 -----------------------------------------------------------------------------------
def f5_results(zero_shot=0.45, threshold=0.20):
    loo = dict(training="LOO", train_databases=LOO_WMH)
    return frame(rows("WMH", "FLAIR", zero_shot, full=False, **loo), rows("WMH", "FLAIR+T1", 0.47, **loo),
                 sd("WMH", "FLAIR+T1", 0.72),
                 rows("WMH", "FLAIR", threshold, full=False, arch="threshold", training="", drop=False))


def test_f5_holds_between_the_threshold_baseline_and_the_upper_bound():
    f = evaluate_findings(f5_results())["F5"]
    assert f["holds"] is True
    assert f["measured"]["WMH"]["chance"] == pytest.approx(0.20)


def test_f5_fails_when_zero_shot_does_not_beat_the_threshold_baseline():
    assert holds(f5_results(threshold=0.50), "F5") is False


def test_f5_fails_when_zero_shot_beats_the_supervised_upper_bound():
    assert holds(f5_results(zero_shot=0.80), "F5") is False


def test_f5_uses_a_default_chance_without_a_threshold_baseline():
    f = evaluate_findings(f5_results()[lambda d: d["arch"] != "threshold"])["F5"]
    assert f["measured"]["WMH"]["chance_from"] == "default" and f["holds"] is True


def test_f5_is_untested_without_leave_one_out_models():
    assert holds(frame(sd("WMH", "FLAIR+T1", 0.72)), "F5") is None


# -- F6 -----------------------------------------------------------------------------------
def f6_results(finetune=0.70, progressive=0.72):
    ft = dict(training="finetune")
    out = []
    for target, subset in (("WMH", "FLAIR+T1"), ("ATLAS", "T1"), ("MSSEG", "FLAIR+T1+T2")):
        out += rows(target, subset, 0.60, method="scratch", labels="limited", **ft)
        out += rows(target, subset, finetune, method="finetune", labels="limited", **ft)
        out += rows(target, subset, progressive, method="progressive", labels="limited", arch="progressive", **ft)
    return frame(out)


def test_f6_holds_when_finetuning_beats_scratch_and_progressive_adds_more():
    assert holds(f6_results(), "F6") is True


def test_f6_fails_when_scratch_is_as_good_as_finetuning():
    assert holds(f6_results(finetune=0.55), "F6") is False


def test_f6_fails_when_progressive_is_worse_than_finetuning():
    assert holds(f6_results(progressive=0.65), "F6") is False


def test_f6_is_untested_without_finetuning_runs():
    assert holds(frame(rows("WMH", "FLAIR+T1", 0.7)), "F6") is None


# -- the report -----------------------------------------------------------------------------
def test_every_finding_is_untested_on_empty_results():
    assert {k: v["holds"] for k, v in evaluate_findings(EMPTY).items()} == {f"F{i}": None for i in range(1, 7)}


def test_every_finding_holds_on_the_papers_own_numbers():
    assert all(f["holds"] for f in paper_findings().values())


def test_each_finding_reports_statement_measured_paper_holds_why():
    f = evaluate_findings(EMPTY)
    assert set(f) == {"F1", "F2", "F3", "F4", "F5", "F6"}
    assert all(set(v) == {"finding", "measured", "paper", "holds", "why"} for v in f.values())
    assert f["F4"]["paper"] == {"all five (drop)": 0.697, "BRATS only (drop)": 0.646}


def test_write_findings_writes_json_with_null_for_missing(tmp_path):
    path = write_findings(f4_results(), tmp_path)
    data = json.loads(path.read_text())
    assert path.name == "findings.json"
    assert data["findings"]["F4"]["holds"] is True
    assert data["findings"]["F1"]["measured"]["LFUnet"]["dice_all_drop"] is None


def test_findings_markdown_names_each_verdict():
    text = findings_markdown(evaluate_findings(f4_results()))
    assert "### F4: holds" in text and "### F1: not tested" in text and "| 0.697 |" in text
