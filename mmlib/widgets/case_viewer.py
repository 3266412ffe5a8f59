"""The case viewer: a case's modalities on three orthogonal planes, with ground truth and prediction."""

from __future__ import annotations

from typing import Mapping, Sequence

import ipywidgets as W
import numpy as np
from IPython.display import Image
from matplotlib.figure import Figure

from mmlib.data.cases import PreparedCase
from mmlib.errors import MMLibError
from mmlib.widgets._render import (COLOURS, DPI, PLANES, apply_window, case_key, case_label, compose_rgb,
                                   default_window, draw_views, figure_png, held, lesion_centre, take_slice)


class CaseViewer:
    """Browse prepared cases: database, case, modality, plane and slice selectors, an intensity
    window, ground truth and prediction overlays (contours or translucent masks) on the three
    orthogonal views through a cursor. `predictions` maps case_id or (database, case_id) to a
    bool (X, Y, Z) mask."""

    def __init__(self, cases: Sequence[PreparedCase], predictions: Mapping | None = None,
                 dpi: int = DPI):
        if not cases:
            raise MMLibError("CaseViewer needs at least one case")
        self.cases = list(cases)
        self.predictions = dict(predictions or {})
        self.dpi = dpi
        self._hold = 0
        self.figure: Figure | None = None
        dbs = list(dict.fromkeys(c.database for c in self.cases))
        self.database = W.Dropdown(options=dbs, description="database")
        self.case = W.Dropdown(description="case")
        self.modality = W.Dropdown(description="modality")
        self.plane = W.ToggleButtons(options=list(PLANES), value="axial", description="plane")
        self.slice = W.IntSlider(description="slice", continuous_update=False)
        self.window = W.FloatRangeSlider(description="window", step=0.01, readout_format=".1f",
                                         continuous_update=False, layout=W.Layout(width="420px"))
        self.show_truth = W.Checkbox(value=True, description="ground truth", indent=False)
        self.show_prediction = W.Checkbox(value=True, description="prediction", indent=False)
        self.style = W.ToggleButtons(options=["contour", "mask"], value="contour", description="overlay")
        self.image = W.Image(format="png")
        self.info = W.HTML()
        self.cursor = [0, 0, 0]
        self.widget = W.VBox([
            W.HBox([self.database, self.case, self.modality]),
            W.HBox([self.plane, self.slice]),
            W.HBox([self.window, self.show_truth, self.show_prediction]),
            self.style, self.image, self.info])
        self.widget.add_class("mmlib-case-viewer")
        self.database.observe(self._on_database, "value")
        self.case.observe(self._on_case, "value")
        self.modality.observe(self._on_modality, "value")
        self.plane.observe(self._on_plane, "value")
        self.slice.observe(self._on_slice, "value")
        for w in (self.window, self.show_truth, self.show_prediction, self.style):
            w.observe(lambda _: self.render(), "value")
        self._on_database()

    # -- state
    def current_case(self) -> PreparedCase:
        return self.cases[self.case.value]

    def prediction_of(self, case: PreparedCase) -> np.ndarray | None:
        """The case's prediction mask, or None; a mask of the wrong shape raises MMLibError."""
        pred = self.predictions.get(case_key(case), self.predictions.get(case.case_id))
        if pred is None:
            return None
        pred = np.asarray(pred, bool)
        if pred.shape != case.shape:
            raise MMLibError(f"prediction of {case_label(case)} has shape {pred.shape}, case {case.shape}")
        return pred

    def current_volume(self) -> np.ndarray:
        case = self.current_case()
        return case.image[case.modalities.index(self.modality.value)]

    def current_slice(self) -> np.ndarray:
        """The selected modality's intensities on the selected plane and slice (2D, upright)."""
        return take_slice(self.current_volume(), self.plane.value, self.slice.value)

    def current_overlays(self, plane: str | None = None) -> dict[str, np.ndarray | None]:
        """Ground-truth and prediction masks (2D) on `plane` (the selected one) through the
        cursor; None where a toggle is off or there is no prediction."""
        plane = plane or self.plane.value
        case, index = self.current_case(), self.cursor[PLANES[plane]]
        pred = self.prediction_of(case)
        return {
            "truth": take_slice(case.label == 1, plane, index) if self.show_truth.value else None,
            "prediction": (take_slice(pred, plane, index)
                           if pred is not None and self.show_prediction.value else None),
        }

    def views(self) -> dict[str, np.ndarray]:
        """RGB image (H, W, 3) of each plane through the cursor, windowed and overlaid."""
        vol, (lo, hi) = self.current_volume(), self.window.value
        out = {}
        for plane in PLANES:
            gray = apply_window(take_slice(vol, plane, self.cursor[PLANES[plane]]), lo, hi)
            ov = self.current_overlays(plane)
            out[plane] = compose_rgb(gray, [(ov["truth"], COLOURS["truth"]),
                                            (ov["prediction"], COLOURS["prediction"])], self.style.value)
        return out

    # -- events
    def _on_database(self, _=None) -> None:
        with held(self):
            opts = [(c.case_id, i) for i, c in enumerate(self.cases) if c.database == self.database.value]
            self.case.options = opts
            self.case.value = opts[0][1]
            self._on_case()
        self.render()

    def _on_case(self, _=None) -> None:
        with held(self):
            case = self.current_case()
            self.modality.options = list(case.modalities)
            self.modality.value = case.modalities[0]
            self.cursor = list(lesion_centre(case))
            has_pred = self.prediction_of(case) is not None
            self.show_prediction.disabled = not has_pred
            self._on_modality()
            self._on_plane()
        self.render()

    def _on_modality(self, _=None) -> None:
        with held(self):
            case = self.current_case()
            vol = self.current_volume()
            lo, hi = default_window(vol, case.brain)
            vmin, vmax = float(min(vol.min(), lo)), float(max(vol.max(), hi))
            # Widen before narrowing so the slider never clamps the new value to stale bounds.
            self.window.min, self.window.max = min(vmin, self.window.min), max(vmax, self.window.max)
            self.window.value = (lo, hi)
            self.window.min, self.window.max = vmin, vmax
        self.render()

    def _on_plane(self, _=None) -> None:
        with held(self):
            axis = PLANES[self.plane.value]
            self.slice.max = self.current_case().shape[axis] - 1
            self.slice.value = self.cursor[axis]
        self.render()

    def _on_slice(self, _=None) -> None:
        self.cursor[PLANES[self.plane.value]] = int(self.slice.value)
        self.render()

    # -- drawing
    def render(self) -> None:
        """Redraw the three views (skipped while controls are being changed together)."""
        if self._hold:
            return
        case = self.current_case()
        self.figure = draw_views(self.views(), case.spacing, self.cursor, self.plane.value,
                                  f"{case_label(case)} · {self.modality.value}")
        self.image.value = figure_png(self.figure, self.dpi)
        has_pred = self.prediction_of(case) is not None
        self.info.value = (f"shape {case.shape}, spacing {tuple(round(s, 2) for s in case.spacing)} mm, "
                           f"lesion {case.lesion_volume_ml():.2f} ml · "
                           f"<span style='color:#d9b300'>■</span> ground truth · "
                           + ("<span style='color:#00b3ff'>■</span> prediction" if has_pred
                              else "no prediction for this case"))

    def snapshot(self):
        """The current figure as an IPython Image (a static picture for stored notebook outputs)."""
        return Image(data=figure_png(self.figure, self.dpi))

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

