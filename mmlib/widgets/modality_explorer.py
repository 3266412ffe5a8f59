"""The modality explorer: take modalities away from a model and watch its prediction change, live."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Sequence

import ipywidgets as W
import numpy as np
import pandas as pd
from IPython.display import Image
from matplotlib.figure import Figure

from mmlib.data.cases import IGNORE, PreparedCase
from mmlib.data.loaders import ChannelMap
from mmlib.data.modalities import sort_modalities
from mmlib.engine.evaluate import SlidingWindow, predict_case
from mmlib.errors import MMLibError, ModalityError
from mmlib.metrics import segmentation_metrics
from mmlib.widgets._render import (COLOURS, DPI, PLANES, apply_window, case_key, case_label, compose_rgb,
                                   default_window, draw_views, figure_png, held, lesion_centre, outline,
                                   prediction_difference, take_slice)


def usable_modalities(case: PreparedCase, channel_map: ChannelMap) -> tuple[str, ...]:
    """The case's modalities that the model has an input channel for."""
    out = []
    for m in case.modalities:
        try:
            channel_map.index(m)
        except ModalityError:
            continue
        out.append(m)
    return tuple(out)


def predict_subset(model, channel_map: ChannelMap, case: PreparedCase, subset: Sequence[str],
                   roi: int, overlap: float, device: str = "cpu") -> tuple[np.ndarray, float]:
    """(bool mask (X, Y, Z), latency in ms) of a sliding-window prediction from `subset` only."""
    subset = sort_modalities(subset)
    present = np.zeros(len(channel_map), bool)
    present[channel_map.channels(subset)] = True
    # Only the subset's images go in: a modality without a channel (DWI) would make assemble fail.
    keep = [case.modalities.index(m) for m in subset]
    image = channel_map.assemble(replace(case, modalities=subset, image=case.image[keep]))
    t0 = time.perf_counter()
    pred = predict_case(model, image, SlidingWindow(roi, overlap, device), present)
    return np.asarray(pred, bool), (time.perf_counter() - t0) * 1000.0


def case_metrics(case: PreparedCase, prediction: np.ndarray) -> dict[str, float]:
    """Dice, sensitivity, precision, ASSD of a prediction against the case's ground truth."""
    return segmentation_metrics(prediction, case.label == 1, case.spacing, ignore=case.label == IGNORE)


class ModalityExplorer:
    """Pick a case, tick the modalities to give the model and watch its prediction update:
    Dice against the ground truth, voxels gained (green) and lost (red) against the cached
    all-modalities prediction, and the inference latency of every update."""

    def __init__(self, model, channel_map: ChannelMap | dict, cases: Sequence[PreparedCase],
                 roi: int, overlap: float, device: str = "cpu", dpi: int = DPI):
        self.model, self.roi, self.overlap, self.device, self.dpi = model, int(roi), float(overlap), device, dpi
        self.channel_map = channel_map if isinstance(channel_map, ChannelMap) else ChannelMap.from_dict(channel_map)
        self.cases = [c for c in cases if usable_modalities(c, self.channel_map)]
        if not self.cases:
            raise MMLibError("ModalityExplorer needs a case with a modality the model has a channel for")
        self._hold = 0
        self._reference: dict[tuple[str, str], tuple[np.ndarray, dict]] = {}
        self.figure: Figure | None = None
        self.last_prediction: np.ndarray | None = None
        self.last_metrics: dict[str, float] | None = None
        self.last_dice: float | None = None
        self.last_latency_ms: float | None = None
        self.last_difference: dict[str, Any] | None = None
        self.latencies_ms: list[float] = []  # every update's inference time, for a summary
        self.case = W.Dropdown(options=[(case_label(c), i) for i, c in enumerate(self.cases)],
                               description="case")
        self.boxes: dict[str, W.Checkbox] = {}
        self.box_row = W.HBox()
        self.slice = W.IntSlider(description="axial", continuous_update=False)
        self.image = W.Image(format="png")
        self.status = W.HTML()
        self.status.add_class("mmlib-status")
        self.widget = W.VBox([W.HBox([self.case, self.slice]), self.box_row, self.status, self.image])
        self.widget.add_class("mmlib-modality-explorer")
        self.case.observe(self._on_case, "value")
        self.slice.observe(self._on_slice, "value")
        self.cursor = [0, 0, 0]
        self._on_case()

    # -- state
    def current_case(self) -> PreparedCase:
        return self.cases[self.case.value]

    def selected_modalities(self) -> tuple[str, ...]:
        return tuple(m for m, box in self.boxes.items() if box.value)

    def set_modalities(self, modalities: Sequence[str]) -> None:
        """Tick exactly `modalities` (one update afterwards, as a user's last click would)."""
        unknown = set(modalities) - set(self.boxes)
        if unknown:
            raise ModalityError(f"{case_label(self.current_case())} offers {list(self.boxes)}, "
                                f"not {sorted(unknown)}")
        with held(self):
            for m, box in self.boxes.items():
                box.value = m in modalities
        self.update()

    def reference_prediction(self, case: PreparedCase | None = None) -> np.ndarray:
        """The all-modalities prediction of a case, computed once and cached."""
        case = case or self.current_case()
        key = case_key(case)
        if key not in self._reference:
            mods = usable_modalities(case, self.channel_map)
            pred, ms = predict_subset(self.model, self.channel_map, case, mods, self.roi,
                                      self.overlap, self.device)
            self._reference[key] = (pred, {**case_metrics(case, pred), "latency_ms": ms})
        return self._reference[key][0]

    def reference_metrics(self, case: PreparedCase | None = None) -> dict[str, float]:
        case = case or self.current_case()
        self.reference_prediction(case)
        return self._reference[case_key(case)][1]

    def reference_predictions(self) -> dict[tuple[str, str], np.ndarray]:
        """All-modalities prediction of every case, keyed (database, case_id): CaseViewer's input."""
        return {case_key(c): self.reference_prediction(c) for c in self.cases}

    # -- events
    def _on_case(self, _=None) -> None:
        case = self.current_case()
        with held(self):
            self.boxes = {m: W.Checkbox(value=True, description=m, indent=False,
                                        layout=W.Layout(width="auto"))
                          for m in usable_modalities(case, self.channel_map)}
            for box in self.boxes.values():
                box.observe(lambda _: self.update(), "value")
            self.box_row.children = [W.Label("modalities given:"), *self.boxes.values()]
            self.cursor = list(lesion_centre(case))
            self.slice.max = case.shape[2] - 1
            self.slice.value = self.cursor[2]
        self.update()

    def _on_slice(self, _=None) -> None:
        self.cursor[2] = int(self.slice.value)
        self.render()

    def update(self) -> None:
        """Predict from the ticked modalities, score, compare with all modalities, redraw."""
        if self._hold:
            return
        case, subset = self.current_case(), self.selected_modalities()
        if not subset:
            self.last_prediction = self.last_metrics = self.last_dice = None
            self.last_latency_ms = self.last_difference = None
            self.status.value = "<b>tick at least one modality</b> (the model always gets one)"
            self.render()
            return
        reference = self.reference_prediction(case)
        pred, ms = predict_subset(self.model, self.channel_map, case, subset, self.roi,
                                  self.overlap, self.device)
        self.last_prediction, self.last_latency_ms = pred, ms
        self.latencies_ms.append(ms)
        self.last_metrics = case_metrics(case, pred)
        self.last_dice = float(self.last_metrics["dice"])
        self.last_difference = prediction_difference(pred, reference)
        ref_dice = self.reference_metrics(case)["dice"]
        d = self.last_difference
        self.status.value = (
            f"<b>{'+'.join(subset)}</b>: Dice <b>{self.last_dice:.3f}</b> "
            f"(all modalities {ref_dice:.3f}) · vs all modalities "
            f"<span style='color:#2a2'>+{d['n_gained']}</span> / "
            f"<span style='color:#e22'>−{d['n_lost']}</span> voxels · "
            f"inference <b>{ms:.0f} ms</b> on {self.device}")
        self.render()

    def sweep(self, subsets: Sequence[Sequence[str]] | None = None) -> pd.DataFrame:
        """One row per modality subset of the current case (default: each modality alone, each
        one left out, all): Dice, voxels gained/lost vs all modalities, latency (ms). The
        ticks return to what they were."""
        mods, before = tuple(self.boxes), self.selected_modalities()
        if subsets is None:
            subsets = list(dict.fromkeys([(m,) for m in mods] + [tuple(x for x in mods if x != m)
                                                                  for m in mods] + [mods]))
        rows = []
        for sub in (s for s in subsets if s):
            self.set_modalities(sub)
            rows.append({"subset": "+".join(sort_modalities(sub)), "n_modalities": len(sub),
                         "dice": self.last_dice, "n_gained": self.last_difference["n_gained"],
                         "n_lost": self.last_difference["n_lost"], "latency_ms": self.last_latency_ms})
        self.set_modalities(before)
        return pd.DataFrame(rows)

    # -- drawing
    def views(self) -> dict[str, np.ndarray]:
        """RGB of each plane through the cursor: the first ticked modality, ground-truth
        outline (yellow), prediction kept (blue), gained (green) and lost (red) voxels."""
        case = self.current_case()
        shown = (self.selected_modalities() or tuple(self.boxes))[0]
        vol = case.image[case.modalities.index(shown)]
        lo, hi = default_window(vol, case.brain)
        out = {}
        for plane, axis in PLANES.items():
            k = self.cursor[axis]
            gray = apply_window(take_slice(vol, plane, k), lo, hi)
            layers = []
            if self.last_prediction is not None:
                d = self.last_difference
                kept = self.last_prediction & ~d["gained"]
                layers = [(take_slice(kept, plane, k), COLOURS["prediction"]),
                          (take_slice(d["gained"], plane, k), COLOURS["gained"]),
                          (take_slice(d["lost"], plane, k), COLOURS["lost"])]
            rgb = compose_rgb(gray, layers, "mask", alpha=0.6)
            # The truth as an outline on top, so the filled prediction colours stay readable.
            rgb[outline(take_slice(case.label == 1, plane, k))] = COLOURS["truth"]
            out[plane] = rgb
        return out

    def render(self) -> None:
        if self._hold:
            return
        case, subset = self.current_case(), self.selected_modalities()
        title = f"{case_label(case)} · given {'+'.join(subset) or 'nothing'}"
        if self.last_dice is not None:
            title += f" · Dice {self.last_dice:.3f} · {self.last_latency_ms:.0f} ms"
        self.figure = draw_views(self.views(), case.spacing, self.cursor, "axial", title)
        self.image.value = figure_png(self.figure, self.dpi)

    def snapshot(self):
        """The current figure as an IPython Image (a static picture for stored notebook outputs)."""
        return Image(data=figure_png(self.figure, self.dpi))

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

