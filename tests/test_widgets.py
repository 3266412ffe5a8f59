"""The exploration widgets, driven headlessly: set controls, check the data, overlays and numbers.

The modality explorer runs on a stub model whose answer is known for every modality subset:
logits = 10 · (sum of the given channels − 1.5). Lesion part A has FLAIR 2 (found from FLAIR
alone); part B has FLAIR 1 and T1 1 (found only when both are given).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mmlib.data.cases import PreparedCase
from mmlib.data.loaders import ChannelMap
from mmlib.widgets import (COLOURS, CaseViewer, ModalityExplorer, ResultsExplorer, available_tables,
                           compose_rgb, load_results, metric_grid, outline, paper_number,
                           prediction_difference, seed_spread, table_with_paper, take_slice)

SHAPE = (16, 16, 16)
PNG = b"\x89PNG"


def lesion_parts() -> tuple[np.ndarray, np.ndarray]:
    a, b = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    a[4:8, 4:8, 6:10] = True
    b[9:12, 9:12, 6:10] = True
    return a, b


def make_case(database: str = "WMH", case_id: str = "c1", modalities=("FLAIR", "T1")) -> PreparedCase:
    a, b = lesion_parts()
    image = np.zeros((len(modalities), *SHAPE), np.float32)
    if "FLAIR" in modalities:
        image[modalities.index("FLAIR")][a] = 2.0
        image[modalities.index("FLAIR")][b] = 1.0
    if "T1" in modalities:
        image[modalities.index("T1")][b] = 1.0
    # A smooth background so that windows and slices carry information.
    image += np.linspace(-0.4, 0.4, SHAPE[2], dtype=np.float32)[None, None, None, :] * 0.5
    label = (a | b).astype(np.uint8)
    return PreparedCase(database, case_id, tuple(modalities), image, label,
                        np.ones(SHAPE, bool), (2.0, 2.0, 2.0))


class SumModel(nn.Module):
    """Lesion where the given channels sum above 1.5 (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor, present=None) -> torch.Tensor:
        self.calls += 1
        return 10.0 * (x.sum(dim=1, keepdim=True) - 1.5)


# ----------------------------------------------------------------------------- pure functions
def test_take_slice_cuts_the_plane_axis_and_shows_it_upright():
    vol = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert np.array_equal(take_slice(vol, "axial", 1), vol[:, :, 1].T)
    assert np.array_equal(take_slice(vol, "coronal", 2), vol[:, 2, :].T)
    assert np.array_equal(take_slice(vol, "sagittal", 0), vol[0].T)
    with pytest.raises(IndexError):
        take_slice(vol, "axial", 4)


def test_contour_overlay_paints_the_outline_and_mask_overlay_the_area():
    gray = np.zeros((7, 7), np.float32)
    mask = np.zeros((7, 7), bool)
    mask[2:5, 2:5] = True
    contour = compose_rgb(gray, [(mask, COLOURS["truth"])], "contour")
    filled = compose_rgb(gray, [(mask, COLOURS["truth"])], "mask", alpha=0.5)
    assert np.allclose(contour[2, 2], COLOURS["truth"]) and np.allclose(contour[3, 3], 0)
    assert outline(mask).sum() == 8
    assert np.allclose(filled[3, 3], np.array(COLOURS["truth"]) * 0.5) and np.allclose(filled[0, 0], 0)


def test_prediction_difference_counts_gained_and_lost_voxels():
    ref, pred = np.zeros(5, bool), np.zeros(5, bool)
    ref[:3], pred[2:] = True, True
    d = prediction_difference(pred, ref)
    assert (d["n_gained"], d["n_lost"]) == (2, 2)
    assert d["gained"].tolist() == [False, False, False, True, True]


# ----------------------------------------------------------------------------- case viewer
@pytest.fixture()
def viewer() -> CaseViewer:
    cases = [make_case("WMH", "w1"), make_case("WMH", "w2"), make_case("BRATS", "b1", ("FLAIR", "T1", "T2"))]
    a, _ = lesion_parts()
    return CaseViewer(cases, predictions={"w1": a})


def test_case_viewer_lists_cases_of_the_chosen_database(viewer):
    assert [label for label, _ in viewer.case.options] == ["w1", "w2"]
    viewer.database.value = "BRATS"
    assert [label for label, _ in viewer.case.options] == ["b1"]
    assert list(viewer.modality.options) == ["FLAIR", "T1", "T2"]
    assert viewer.show_prediction.disabled  # no prediction for b1


def test_case_viewer_slice_and_plane_select_the_shown_slice(viewer):
    case = viewer.current_case()
    viewer.plane.value = "coronal"
    assert viewer.slice.max == SHAPE[1] - 1
    viewer.slice.value = 5
    assert np.array_equal(viewer.current_slice(), case.image[0][:, 5, :].T)
    viewer.modality.value = "T1"
    assert np.array_equal(viewer.current_slice(), case.image[1][:, 5, :].T)
    assert viewer.cursor[1] == 5


def test_case_viewer_overlays_follow_the_toggles(viewer):
    viewer.plane.value = "axial"
    viewer.slice.value = 7
    case, a = viewer.current_case(), lesion_parts()[0]
    ov = viewer.current_overlays()
    assert np.array_equal(ov["truth"], (case.label == 1)[:, :, 7].T)
    assert np.array_equal(ov["prediction"], a[:, :, 7].T)
    viewer.show_truth.value = False
    viewer.show_prediction.value = False
    assert viewer.current_overlays() == {"truth": None, "prediction": None}


def test_case_viewer_draws_three_views_with_prediction_colour(viewer):
    viewer.style.value = "mask"
    viewer.slice.value = 7  # axial, through both lesion parts
    rgb = viewer.views()["axial"]
    assert set(viewer.views()) == {"sagittal", "coronal", "axial"}
    # Lesion part A (x 4..7, y 4..7) is under the prediction: blended with its colour.
    assert rgb[5, 5, 2] > rgb[5, 5, 0]
    assert bytes(viewer.image.value).startswith(PNG) and len(viewer.figure.axes) == 3


def test_case_viewer_window_changes_the_grey_levels(viewer):
    viewer.show_truth.value = viewer.show_prediction.value = False
    before = viewer.views()["axial"].copy()
    lo, hi = viewer.window.value
    viewer.window.value = (lo, lo + (hi - lo) / 4)
    assert not np.allclose(before, viewer.views()["axial"])


# ----------------------------------------------------------------------------- modality explorer
@pytest.fixture()
def explorer() -> ModalityExplorer:
    cmap = ChannelMap(("FLAIR", "T1", "T2"))
    cases = [make_case("WMH", "w1"), make_case("ISLES", "i1", ("FLAIR", "T1", "DWI"))]
    return ModalityExplorer(SumModel(), cmap, cases, roi=16, overlap=0.25, device="cpu")


def test_explorer_offers_only_modalities_the_model_has_channels_for(explorer):
    explorer.case.value = 1
    assert list(explorer.boxes) == ["FLAIR", "T1"]  # no DWI channel


def test_explorer_starts_with_all_modalities_and_a_perfect_stub_prediction(explorer):
    assert explorer.selected_modalities() == ("FLAIR", "T1")
    assert explorer.last_dice == pytest.approx(1.0)
    assert explorer.last_difference["n_gained"] == explorer.last_difference["n_lost"] == 0
    assert explorer.last_latency_ms > 0


def test_explorer_updates_dice_and_difference_when_a_modality_is_unticked(explorer):
    a, b = lesion_parts()
    explorer.boxes["T1"].value = False  # what a click does
    assert explorer.selected_modalities() == ("FLAIR",)
    assert explorer.last_dice == pytest.approx(2 * a.sum() / (a.sum() + (a | b).sum()))
    assert explorer.last_difference["n_lost"] == b.sum()
    assert explorer.last_difference["n_gained"] == 0
    assert "FLAIR" in explorer.status.value and "ms" in explorer.status.value
    explorer.set_modalities(["T1"])
    assert explorer.last_dice == 0.0 and explorer.last_difference["n_lost"] == (a | b).sum()
    assert len(explorer.latencies_ms) == 3


def test_explorer_shows_lost_voxels_in_red(explorer):
    explorer.set_modalities(["FLAIR"])
    explorer.slice.value = 7
    rgb = explorer.views()["axial"]
    assert rgb[10, 10, 0] > 0.5 and rgb[10, 10, 1] < 0.5  # part B (x, y 9..11), lost: red


def test_explorer_caches_the_all_modalities_prediction(explorer):
    first = explorer.reference_prediction()
    calls = explorer.model.calls
    explorer.set_modalities(["FLAIR"])
    explorer.set_modalities(["FLAIR", "T1"])
    assert explorer.reference_prediction() is first
    assert explorer.model.calls - calls == 2  # one inference per update, none for the reference


def test_explorer_with_nothing_ticked_asks_for_a_modality(explorer):
    explorer.set_modalities([])
    assert explorer.last_dice is None and "tick at least one" in explorer.status.value


def test_explorer_runs_a_real_multiunet():
    from mmlib.models import build_model

    torch.manual_seed(0)
    case = make_case("WMH", "w1")
    big = PreparedCase(case.database, case.case_id, case.modalities,
                       np.pad(case.image, ((0, 0), (0, 16), (0, 16), (0, 16))),
                       np.pad(case.label, ((0, 16),) * 3), np.pad(case.brain, ((0, 16),) * 3), case.spacing)
    ex = ModalityExplorer(build_model("multiunet", 2, 0.25), ChannelMap(("FLAIR", "T1")), [big],
                          roi=32, overlap=0.0)
    ex.set_modalities(["T1"])
    assert ex.last_prediction.shape == big.shape and 0.0 <= ex.last_dice <= 1.0


# ----------------------------------------------------------------------------- results explorer
def tidy_rows() -> pd.DataFrame:
    """BRATS (two subsets) and ATLAS (T1) of an MD drop Multi-Unet, two seeds, two cases."""
    rows = []
    dice = {("BRATS", "FLAIR+T1+T1c+T2"): 0.8, ("BRATS", "T1"): 0.4, ("ATLAS", "T1"): 0.5}
    for (db, subset), d in dice.items():
        for seed in (0, 1):
            for case in ("c1", "c2"):
                rows.append(dict(database=db, case_id=case, subset=subset, model="MD-multiunet-drop",
                                 arch="multiunet", training="MD", train_databases="BRATS+ATLAS+MSSEG+TBI+WMH",
                                 drop=True, seed=seed, dice=d + 0.1 * seed + (0.02 if case == "c1" else 0),
                                 sensitivity=0.7, precision=0.6, assd=2.0))
    return pd.DataFrame(rows)


def test_metric_grid_is_the_mean_over_runs_by_subset_and_database():
    grid = metric_grid(load_results(tidy_rows()), "dice")
    assert list(grid.columns) == ["BRATS", "ATLAS"]
    assert list(grid.index) == ["FLAIR+T1+T1c+T2", "T1"]
    assert grid.loc["T1", "BRATS"] == pytest.approx(0.4 + 0.05 + 0.01)
    assert np.isnan(grid.loc["FLAIR+T1+T1c+T2", "ATLAS"])


def test_seed_spread_is_the_deviation_of_per_seed_means():
    sp = seed_spread(load_results(tidy_rows()), "BRATS", "dice").set_index("subset")
    assert sp.loc["T1", "seeds"] == 2
    assert sp.loc["T1", "std"] == pytest.approx(np.std([0.41, 0.51], ddof=1))


def test_tables_offered_are_those_the_columns_fill():
    results = load_results(tidy_rows())
    assert available_tables(results) == [3, 7]  # Table 3 and its appendix metrics (the paper's 7-8)
    both = table_with_paper(results, 3)
    assert both.loc[("MultiUnet-MD (drop)", "paper"), "BRATS"] == pytest.approx(0.906)
    assert paper_number("BRATS", "FLAIR+T1+T1c+T2", "dice", "multiunet", "MD (drop)", True) == pytest.approx(0.906)


def test_results_explorer_redraws_for_the_chosen_metric_and_database():
    ex = ResultsExplorer(tidy_rows())
    assert ex.table_choice.value == 3 and ("MultiUnet-MD (drop)", "paper") in ex.table.index
    ex.metric.value = "assd"
    assert ex.grid.loc["T1", "ATLAS"] == pytest.approx(2.0)
    ex.database.value = "ATLAS"
    assert list(ex.spread["subset"]) == ["T1"]
    assert bytes(ex.heatmap.value).startswith(PNG) and bytes(ex.bars.value).startswith(PNG)
    ex.table_choice.value = 7
    assert "Table 7" in ex.table_html.value and "ASSD" in ex.table_html.value


def test_results_explorer_marks_the_cells_a_missing_database_would_fill():
    ex = ResultsExplorer(tidy_rows(), references={}, unavailable={"TBI": "TBI is private"})
    ours = ex.table.xs("ours", level="source")
    assert (ours["TBI"] == "not available (TBI is private)").all() and (ours["Avg"] == ours["TBI"]).all()
    assert any(str(c).startswith("Avg over 4") for c in ex.table.columns)
    assert "not available (TBI is private)" in ex.table_html.value
    assert (ResultsExplorer(tidy_rows(), references={}).table != "not available (TBI is private)").all().all()


def test_results_explorer_opens_on_a_combination_that_has_rows():
    rows = tidy_rows()
    # A leave-one-out LFUnet scored on WMH only: alphabetically first architecture and setting, no BRATS rows.
    extra = rows.head(1).assign(database="WMH", arch="lfunet", training="LOO", model="LOO-WMH-lfunet-drop")
    ex = ResultsExplorer(pd.concat([extra, rows], ignore_index=True), references={})
    assert (ex.database.value, ex.arch.value, ex.setting.value) == ("BRATS", "multiunet", "MD (drop)")
    assert not ex.grid.empty and len(ex.spread)


def test_results_load_from_a_csv_of_tidy_rows_or_a_study_folder_only(tmp_path):
    from mmlib.errors import MMLibError

    rows = tidy_rows()
    rows.to_csv(tmp_path / "rows.csv", index=False)
    assert len(load_results(tmp_path / "rows.csv")) == len(rows)
    (tmp_path / "loose").mkdir()
    rows.to_csv(tmp_path / "loose" / "a.csv", index=False)
    with pytest.raises(MMLibError, match="not a study folder"):
        load_results(tmp_path / "loose")  # CSVs of unknown provenance are not mixed in


def test_explorer_sweep_scores_each_modality_alone_left_out_and_all(explorer):
    table = explorer.sweep().set_index("subset")
    assert list(table.index) == ["FLAIR", "T1", "FLAIR+T1"]  # with two modalities, left-out = alone
    assert table.loc["FLAIR+T1", "dice"] == pytest.approx(1.0) and table.loc["T1", "dice"] == 0.0
    assert (table["latency_ms"] > 0).all()
    assert explorer.selected_modalities() == ("FLAIR", "T1")  # ticks restored
