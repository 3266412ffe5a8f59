"""The paper's tables as data, and the same tables built from tidy result rows."""

import math

import pandas as pd
import pytest

from mmlib.experiments.results.paper import paper_layout, paper_metric_table, paper_table, paper_value
from mmlib.experiments.results.tables import (format_table, metric_table, side_by_side, table2, table3,
                                      table4, table5, table6)


def rows(database, subset, dice, *, full=True, seed=0, case="c1", arch="multiunet", training="MD",
         drop=True, train_databases="", method="", labels="", model=None, **metrics):
    """One tidy result row (docs/RESULTS_SCHEMA.md), as a one-element list."""
    name = model or f"{training}-{train_databases}-{arch}-{'drop' if drop else 'all'}-{method}-{labels}"
    row = dict(database=database, case_id=case, subset=subset, n_modalities=len(subset.split("+")),
               all_modalities=full, model=name, arch=arch, training=training,
               train_databases=train_databases, drop=drop, method=method, labels=labels, seed=seed,
               preset="smoke", dice=dice)
    row.update(metrics)
    return [row]


def frame(*row_lists):
    return pd.DataFrame([r for rs in row_lists for r in rs])


def sd(database, subset, dice, **kw):
    kw = dict(dict(training="SD", train_databases=database, drop=False), **kw)
    return rows(database, subset, dice, **kw)


# -- the paper's numbers ------------------------------------------------------------------
def test_paper_table3_multiunet_md_wmh_is_0_725():
    assert paper_value(3, "MultiUnet-MD (drop)", "WMH") == 0.725
    assert paper_table(3).loc["MultiUnet-MD (drop)", "WMH"] == 0.725


def test_paper_table6_wmh_progressive_with_all_labels_is_0_758():
    assert paper_value(6, "WMH", "all progressive") == 0.758


def test_paper_table2_holds_value_and_change():
    assert paper_value(2, "all modalities", "Multi-Unet", "dice_change") == -0.528
    assert paper_table(2).loc["modality drop", ("MAFUnet", "dice")] == 0.640


def test_paper_assd_of_table3_models_comes_from_table8():
    assert paper_value(3, "MultiUnet-MD (drop)", "ATLAS", "assd") == 9.25
    assert paper_value(8, "Unet-SD (all mods)", "TBI", "assd") == 10.30


def test_paper_sensitivity_and_precision_of_table4_models_come_from_table9():
    assert paper_value(4, "all five (drop)", "ISLES (T1)", "sensitivity") == 51.5
    assert paper_value(9, "ATLAS only", "ISLES (T1)", "precision") == 44.5
    assert paper_value(10, "all five (all mods)", "ISLES (T1,T2)", "assd") == 58.04


def test_paper_blank_and_na_cells_are_nan():
    assert math.isnan(paper_value(4, "ATLAS only", "ISLES (T1,T2)"))
    assert math.isnan(paper_value(5, "Transformer VQ-VAE (unsupervised), FLAIR", "TBI"))


def test_paper_tables_have_the_papers_shape():
    shapes = {2: (2, 6), 3: (4, 6), 4: (4, 4), 5: (5, 5), 6: (5, 7), 7: (4, 12), 8: (4, 6),
              9: (4, 8), 10: (4, 4)}
    assert {n: paper_table(n).shape for n in shapes} == shapes


def test_paper_value_names_the_rows_of_an_unknown_row():
    with pytest.raises(KeyError, match="Unet-SD"):
        paper_value(3, "no such model", "WMH")


def test_paper_metric_table_joins_tables_7_and_8():
    t = paper_metric_table(3)
    assert t.loc["Unet-SD (drop)", ("MSSEG", "sensitivity")] == 55.3
    assert t.loc["Unet-SD (drop)", ("Avg", "assd")] == 6.29


# -- tables from tidy rows ------------------------------------------------------------------
def test_cells_average_cases_per_seed_then_seeds():
    # seed 0: cases 0.2 and 0.4 -> 0.3; seed 1: one case 0.9 -> mean over seeds 0.6 (not 0.5)
    df = frame(rows("WMH", "FLAIR+T1", 0.2, seed=0, case="a"), rows("WMH", "FLAIR+T1", 0.4, seed=0, case="b"),
               rows("WMH", "FLAIR+T1", 0.9, seed=1, case="a"))
    t = table3(df)
    assert t.loc["MultiUnet-MD (drop)", "WMH"] == pytest.approx(0.6)
    assert t.loc["MultiUnet-MD (drop)", "seeds"] == 2


def both_ways(*row_lists):
    """The rows as no-drop models, and a copy as drop models (Table 2 compares the two)."""
    plain = frame(*row_lists)
    return pd.concat([plain, plain.assign(drop=True, dice=plain["dice"] - 0.1)], ignore_index=True)


def test_table2_value_and_change_of_missing_modalities():
    df = both_ways(sd("WMH", "FLAIR+T1", 0.8), sd("WMH", "FLAIR", 0.6, full=False), sd("WMH", "T1", 0.2, full=False),
                   sd("MSSEG", "FLAIR+T1+T2", 0.6), sd("MSSEG", "T2", 0.5, full=False))
    t = table2(df)
    assert t.loc["all modalities", ("Multi-Unet", "dice")] == pytest.approx(0.7)
    # WMH: mean(0.6, 0.2) - 0.8 = -0.4; MSSEG: 0.5 - 0.6 = -0.1 -> -0.25
    assert t.loc["all modalities", ("Multi-Unet", "dice_change")] == pytest.approx(-0.25)


def test_table2_leaves_one_modality_databases_out_of_the_change():
    df = both_ways(sd("WMH", "FLAIR+T1", 0.8), sd("WMH", "T1", 0.4, full=False), sd("ATLAS", "T1", 0.5))
    t = table2(df)
    assert t.loc["all modalities", ("Multi-Unet", "dice")] == pytest.approx(0.65)
    assert t.loc["all modalities", ("Multi-Unet", "dice_change")] == pytest.approx(-0.4)


def test_table2_separates_drop_and_architecture():
    df = frame(sd("WMH", "FLAIR+T1", 0.8, drop=True, arch="lfunet"), sd("WMH", "FLAIR+T1", 0.3, arch="lfunet"),
               sd("WMH", "FLAIR+T1", 0.5))
    t = table2(df)
    assert t.loc["modality drop", ("LFUnet", "dice")] == pytest.approx(0.8)
    assert t.loc["all modalities", ("LFUnet", "dice")] == pytest.approx(0.3)
    # Multi-Unet ran without drop only: nothing to compare, so Table 2 leaves it out.
    assert math.isnan(t.loc["all modalities", ("Multi-Unet", "dice")])


def test_table2_counts_a_one_modality_database_in_both_rows():
    atlas = frame(sd("ATLAS", "T1", 0.5, single_modality=True))  # one model: drop changes nothing
    t = table2(pd.concat([atlas, both_ways(sd("WMH", "FLAIR+T1", 0.8))], ignore_index=True))
    assert t.loc["modality drop", ("Multi-Unet", "dice")] == pytest.approx((0.5 + 0.7) / 2)
    assert t.loc["all modalities", ("Multi-Unet", "dice")] == pytest.approx((0.5 + 0.8) / 2)


def test_table3_average_needs_all_five_databases():
    dbs = ["MSSEG", "TBI", "WMH", "BRATS", "ATLAS"]
    df = frame(*[rows(db, "T1", 0.1 * (i + 1)) for i, db in enumerate(dbs)])
    assert table3(df).loc["MultiUnet-MD (drop)", "Avg"] == pytest.approx(0.3)
    assert math.isnan(table3(df[df["database"] != "TBI"]).loc["MultiUnet-MD (drop)", "Avg"])


def test_table3_uses_only_all_modality_rows():
    df = frame(rows("WMH", "FLAIR+T1", 0.7), rows("WMH", "T1", 0.1, full=False))
    assert table3(df).loc["MultiUnet-MD (drop)", "WMH"] == pytest.approx(0.7)


def test_table3_sd_cell_comes_from_the_model_of_that_database():
    df = frame(sd("WMH", "FLAIR+T1", 0.7), sd("WMH", "FLAIR+T1", 0.1, train_databases="MSSEG"))
    assert table3(df).loc["Unet-SD (all mods)", "WMH"] == pytest.approx(0.7)


def test_table3_shows_md_without_drop_only_when_run():
    assert "MultiUnet-MD (all mods)" not in table3(frame(rows("WMH", "FLAIR+T1", 0.7))).index
    t = table3(frame(rows("WMH", "FLAIR+T1", 0.6, drop=False)))
    assert t.loc["MultiUnet-MD (all mods)", "WMH"] == pytest.approx(0.6)


def test_table4_cells_by_database_and_test_subset():
    df = frame(rows("ISLES", "T1", 0.3, full=False), rows("ISLES", "T1+T2", 0.4, full=False),
               rows("TUMOR2", "T1", 0.6), sd("ISLES", "T1", 0.05, full=False, train_databases="ATLAS"),
               sd("TUMOR2", "T1", 0.5, train_databases="BRATS", drop=True))
    t = table4(df)
    assert t.loc["all five (drop)", "ISLES (T1)"] == pytest.approx(0.3)
    assert t.loc["all five (drop)", "ISLES (T1,T2)"] == pytest.approx(0.4)
    assert t.loc["all five (drop)", "Tumor 2 (T1)"] == pytest.approx(0.6)
    assert t.loc["ATLAS only", "ISLES (T1)"] == pytest.approx(0.05)
    assert t.loc["BRATS only (drop)", "Tumor 2 (T1)"] == pytest.approx(0.5)
    assert math.isnan(t.loc["all five (all mods)", "ISLES (T1)"])


def test_table5_flair_or_t1_means_flair_when_the_database_has_it():
    loo = dict(training="LOO", drop=True)
    df = frame(rows("WMH", "FLAIR", 0.45, full=False, train_databases="BRATS+ATLAS+MSSEG+TBI", **loo),
               rows("WMH", "T1", 0.1, full=False, train_databases="BRATS+ATLAS+MSSEG+TBI", **loo),
               rows("WMH", "FLAIR+T1", 0.47, train_databases="BRATS+ATLAS+MSSEG+TBI", **loo),
               rows("ATLAS", "T1", 0.24, train_databases="BRATS+WMH+MSSEG+TBI", **loo),
               sd("WMH", "FLAIR+T1", 0.72))
    t = table5(df)
    assert t.loc["Multi-Unet (drop), FLAIR or T1", "WMH"] == pytest.approx(0.45)
    assert t.loc["Multi-Unet (drop), FLAIR or T1", "ATLAS"] == pytest.approx(0.24)
    assert t.loc["Multi-Unet (drop), all", "WMH"] == pytest.approx(0.47)
    assert t.loc["Unet-SD (upper bound), all", "WMH"] == pytest.approx(0.72)
    assert t.loc["DDPM (unsupervised), FLAIR or T1"].drop("seeds").isna().all()


def test_table6_cells_by_method_and_labels():
    ft = dict(training="finetune")
    df = frame(sd("WMH", "FLAIR+T1", 0.6, labels="limited"),
               rows("WMH", "FLAIR+T1", 0.7, method="finetune", labels="limited", **ft),
               rows("WMH", "FLAIR+T1", 0.76, method="progressive", labels="all", arch="progressive", **ft),
               rows("WMH", "FLAIR+T1", 0.47, training="LOO", train_databases="BRATS+ATLAS+MSSEG+TBI"))
    t = table6(df)
    assert t.loc["WMH", "limited scratch"] == pytest.approx(0.6)
    assert t.loc["WMH", "limited finetune"] == pytest.approx(0.7)
    assert t.loc["WMH", "all progressive"] == pytest.approx(0.76)
    assert t.loc["WMH", "0-shot"] == pytest.approx(0.47)
    assert math.isnan(t.loc["WMH", "all scratch"])


def test_table6_scratch_with_all_labels_is_table3s_single_database_model():
    t = table6(frame(sd("WMH", "FLAIR+T1", 0.72), sd("WMH", "FLAIR+T1", 0.5, drop=True)))
    assert t.loc["WMH", "all scratch"] == pytest.approx(0.72)


def test_table6_zero_shot_is_the_leave_one_out_model_with_all_modalities():
    df = frame(rows("WMH", "FLAIR+T1", 0.47, training="LOO", train_databases="BRATS+ATLAS+MSSEG+TBI"))
    assert table6(df).loc["WMH", "0-shot"] == pytest.approx(0.47)


def test_metric_table_reports_percent_and_mm():
    df = frame(rows("WMH", "FLAIR+T1", 0.7, sensitivity=0.75, precision=0.8, assd=1.5))
    t = metric_table(df, table=3)
    assert t.loc["MultiUnet-MD (drop)", ("WMH", "sensitivity")] == pytest.approx(75.0)
    assert t.loc["MultiUnet-MD (drop)", ("WMH", "precision")] == pytest.approx(80.0)
    assert t.loc["MultiUnet-MD (drop)", ("WMH", "assd")] == pytest.approx(1.5)


def test_missing_cells_are_nan_not_errors():
    empty = pd.DataFrame(columns=["database", "case_id", "subset", "seed", "dice"])
    for build in (table2, table3, table4, table5, table6):
        t = build(empty)
        assert t.drop(columns="seeds").isna().all().all()
    assert metric_table(empty, table=4).drop(columns=("seeds", "")).isna().all().all()


def test_tables_follow_the_papers_row_and_column_order():
    rows_, columns = paper_layout(4)
    t = table4(frame(rows("ISLES", "T1", 0.3, full=False)))
    assert list(t.index) == rows_ and list(t.columns) == columns + ["seeds"]


def test_booleans_read_back_from_csv_text_are_understood():
    df = frame(rows("WMH", "FLAIR+T1", 0.7, drop=False)).astype({"drop": str, "all_modalities": str})
    assert table3(df).loc["MultiUnet-MD (all mods)", "WMH"] == pytest.approx(0.7)


def test_side_by_side_puts_the_paper_row_under_each_of_ours():
    both = side_by_side(table3(frame(rows("WMH", "FLAIR+T1", 0.7))), paper_table(3))
    assert list(both.index[:2]) == [("Unet-SD (all mods)", "ours"), ("Unet-SD (all mods)", "paper")]
    assert both.loc[("MultiUnet-MD (drop)", "paper"), "WMH"] == 0.725
    assert both.loc[("MultiUnet-MD (drop)", "ours"), "WMH"] == pytest.approx(0.7)
    assert both.loc[("MultiUnet-MD (drop)", "paper"), "seeds"] == 3


def test_format_table_prints_three_decimals_and_dashes_for_missing():
    text = format_table(side_by_side(table3(frame(rows("WMH", "FLAIR+T1", 0.7))), paper_table(3)))
    assert "0.700" in text and "0.725" in text and " - " in text
