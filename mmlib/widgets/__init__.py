"""Interactive exploration in JupyterLab, one widget per module: the case viewer, the live modality
explorer and the results explorer (ipywidgets), and `open_run` to feed them from a study folder.

The data behind every view comes from a pure function (slices, overlays, the difference between
two predictions, metric grids, seed spread), so tests check it without a display. Each widget
shows itself when displayed, keeps its state and outputs as attributes (`.figure`, `.last_dice`,
`.last_latency_ms`, ...) and draws its figures with matplotlib into a PNG image widget, which
looks the same in JupyterLab, in a headless browser and in a test.
"""

from mmlib.widgets._render import (COLOURS, METRICS, PLANES, apply_window, compose_rgb, default_window,
                                   figure_png, lesion_centre, outline, prediction_difference, take_slice)
from mmlib.widgets.case_viewer import CaseViewer
from mmlib.widgets.modality_explorer import ModalityExplorer, case_metrics, predict_subset, usable_modalities
from mmlib.widgets.results_explorer import (ResultsExplorer, available_tables, load_results, metric_grid,
                                            paper_number, results_table, seed_spread, setting_label,
                                            sort_databases, table_with_paper)
from mmlib.widgets.run import OpenedRun, open_run

__all__ = ["PLANES", "COLOURS", "METRICS", "take_slice", "default_window", "apply_window", "outline",
           "compose_rgb", "prediction_difference", "lesion_centre", "figure_png", "CaseViewer",
           "usable_modalities", "predict_subset", "case_metrics", "ModalityExplorer", "load_results",
           "sort_databases", "setting_label", "metric_grid", "seed_spread", "paper_number", "results_table",
           "available_tables", "table_with_paper", "ResultsExplorer", "OpenedRun", "open_run"]
