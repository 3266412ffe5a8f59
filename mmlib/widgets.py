"""Interactive exploration in JupyterLab: a case viewer, a live modality-combination explorer and
a results explorer (ipywidgets).

The data behind every view comes from a pure function of this module (slices, overlays, the
difference between two predictions, metric grids, seed spread), so tests check it without a
display. Each widget shows itself when displayed, keeps its state and outputs as attributes
(`.figure`, `.last_dice`, `.last_latency_ms`, ...) and draws its figures with matplotlib into a
PNG image widget, which looks the same in JupyterLab, in a headless browser and in a test.
"""

from __future__ import annotations

import io
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import ipywidgets as W
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import ndimage

from mmlib.data.cases import IGNORE, PreparedCase
from mmlib.data.loaders import ChannelMap
from mmlib.data.modalities import sort_modalities
from mmlib.errors import MMLibError, ModalityError

#: The axis of a RAS (X, Y, Z) array that each display plane cuts.
PLANES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
#: Overlay colours (RGB in 0..1); gained/lost = voxels a subset adds/removes vs all modalities.
COLOURS: dict[str, tuple[float, float, float]] = {
    "truth": (1.0, 0.85, 0.0), "prediction": (0.0, 0.7, 1.0),
    "gained": (0.2, 0.9, 0.2), "lost": (1.0, 0.15, 0.15),
}
METRICS = ("dice", "sensitivity", "precision", "assd")
_DPI = 80


# ----------------------------------------------------------------------------- pure functions
def take_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The 2D slice of a RAS volume (X, Y, Z) at `index` along `plane`'s axis, transposed so that
    `imshow(..., origin='lower')` shows it upright (anterior or superior at the top)."""
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {', '.join(PLANES)}, got {plane!r}")
    axis = PLANES[plane]
    if not 0 <= index < volume.shape[axis]:
        raise IndexError(f"{plane} slice {index} outside 0..{volume.shape[axis] - 1}")
    return np.take(volume, index, axis=axis).T


def default_window(image: np.ndarray, brain: np.ndarray | None = None) -> tuple[float, float]:
    """Intensity window (1st, 99th percentile) inside the brain, so outliers do not wash it out."""
    values = image[brain] if brain is not None and brain.any() else image.ravel()
    lo, hi = (float(v) for v in np.percentile(values, [1, 99]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def apply_window(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Intensities mapped to 0..1 through the window [lo, hi] (clipped outside it)."""
    return np.clip((np.asarray(image, np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a 2D mask: mask pixels with an edge-neighbour outside it."""
    mask = np.asarray(mask, bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def compose_rgb(gray: np.ndarray, layers: Sequence[tuple[np.ndarray, tuple[float, float, float]]],
                style: str = "contour", alpha: float = 0.45) -> np.ndarray:
    """RGB (H, W, 3) of a windowed slice (H, W) in 0..1 with coloured masks on top, later layers
    over earlier ones: `style` 'contour' paints each mask's outline, 'mask' blends its area."""
    if style not in ("contour", "mask"):
        raise ValueError(f"style must be 'contour' or 'mask', got {style!r}")
    rgb = np.repeat(np.asarray(gray, np.float32)[..., None], 3, axis=2)
    for mask, colour in layers:
        if mask is None:
            continue
        colour = np.asarray(colour, np.float32)
        if style == "contour":
            rgb[outline(mask)] = colour
        else:
            m = np.asarray(mask, bool)
            rgb[m] = (1 - alpha) * rgb[m] + alpha * colour
    return rgb


def prediction_difference(prediction: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Voxels a prediction gains and loses against a reference (the all-modalities prediction):
    gained/lost bool masks and their counts n_gained/n_lost."""
    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    gained, lost = prediction & ~reference, reference & ~prediction
    return {"gained": gained, "lost": lost, "n_gained": int(gained.sum()), "n_lost": int(lost.sum())}


def lesion_centre(case: PreparedCase) -> tuple[int, int, int]:
    """A voxel to centre the views on: the lesion's centre of mass, else the volume's centre."""
    lesion = case.label == 1
    if lesion.any():
        # The centre of mass can fall outside a non-convex lesion; take the nearest lesion voxel.
        idx = np.argwhere(lesion)
        com = idx.mean(axis=0)
        return tuple(int(v) for v in idx[np.argmin(((idx - com) ** 2).sum(axis=1))])
    return tuple(int(s) // 2 for s in case.shape)


def figure_png(fig: Figure, dpi: int = _DPI) -> bytes:
    """The figure as PNG bytes (no pyplot state, so widgets never leak open figures)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _draw_views(rgbs: dict[str, np.ndarray], spacing: Sequence[float], cursor: Sequence[int],
                selected: str | None, title: str) -> Figure:
    """One figure, three panels (sagittal, coronal, axial) with a cross-hair at `cursor`."""
    fig = Figure(figsize=(9.0, 3.3))
    axes = fig.subplots(1, 3)
    for ax, (plane, rgb) in zip(axes, rgbs.items()):
        # Rows/columns of a transposed slice are the two in-plane axes, in increasing order.
        col_axis, row_axis = [a for a in range(3) if a != PLANES[plane]]
        ax.imshow(rgb, origin="lower", interpolation="nearest",
                  aspect=spacing[row_axis] / spacing[col_axis])
        ax.axvline(cursor[col_axis], color="w", lw=0.5, alpha=0.5)
        ax.axhline(cursor[row_axis], color="w", lw=0.5, alpha=0.5)
        ax.set_title(f"{plane} {cursor[PLANES[plane]]}", fontsize=9,
                     fontweight="bold" if plane == selected else "normal")
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _case_key(case: PreparedCase) -> tuple[str, str]:
    return (case.database, case.case_id)


def _case_label(case: PreparedCase) -> str:
    return f"{case.database} · {case.case_id}"


@contextmanager
def _held(widget) -> Iterator[None]:
    """Suppress a widget's redraws while several of its controls change at once."""
    widget._hold += 1
    try:
        yield
    finally:
        widget._hold -= 1


# ----------------------------------------------------------------------------- case viewer
class CaseViewer:
    """Browse prepared cases: database, case, modality, plane and slice selectors, an intensity
    window, ground truth and prediction overlays (contours or translucent masks) on the three
    orthogonal views through a cursor. `predictions` maps case_id or (database, case_id) to a
    bool (X, Y, Z) mask."""

    def __init__(self, cases: Sequence[PreparedCase], predictions: Mapping | None = None,
                 dpi: int = _DPI):
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
        pred = self.predictions.get(_case_key(case), self.predictions.get(case.case_id))
        if pred is None:
            return None
        pred = np.asarray(pred, bool)
        if pred.shape != case.shape:
            raise MMLibError(f"prediction of {_case_label(case)} has shape {pred.shape}, case {case.shape}")
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
        with _held(self):
            opts = [(c.case_id, i) for i, c in enumerate(self.cases) if c.database == self.database.value]
            self.case.options = opts
            self.case.value = opts[0][1]
            self._on_case()
        self.render()

    def _on_case(self, _=None) -> None:
        with _held(self):
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
        with _held(self):
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
        with _held(self):
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
        self.figure = _draw_views(self.views(), case.spacing, self.cursor, self.plane.value,
                                  f"{_case_label(case)} · {self.modality.value}")
        self.image.value = figure_png(self.figure, self.dpi)
        has_pred = self.prediction_of(case) is not None
        self.info.value = (f"shape {case.shape}, spacing {tuple(round(s, 2) for s in case.spacing)} mm, "
                           f"lesion {case.lesion_volume_ml():.2f} ml · "
                           f"<span style='color:#d9b300'>■</span> ground truth · "
                           + ("<span style='color:#00b3ff'>■</span> prediction" if has_pred
                              else "no prediction for this case"))

    def snapshot(self):
        """The current figure as an IPython Image (a static picture for stored notebook outputs)."""
        from IPython.display import Image

        return Image(data=figure_png(self.figure, self.dpi))

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


# ----------------------------------------------------------------------------- modality explorer
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
    from mmlib.engine.evaluate import predict_case

    subset = sort_modalities(subset)
    present = np.zeros(len(channel_map), bool)
    present[channel_map.channels(subset)] = True
    # Only the subset's images go in: a modality without a channel (DWI) would make assemble fail.
    keep = [case.modalities.index(m) for m in subset]
    image = channel_map.assemble(replace(case, modalities=subset, image=case.image[keep]))
    t0 = time.perf_counter()
    pred = predict_case(model, image, roi, overlap, device, present)
    return np.asarray(pred, bool), (time.perf_counter() - t0) * 1000.0


def case_metrics(case: PreparedCase, prediction: np.ndarray) -> dict[str, float]:
    """Dice, sensitivity, precision, ASSD of a prediction against the case's ground truth."""
    from mmlib.metrics import segmentation_metrics

    return segmentation_metrics(prediction, case.label == 1, case.spacing, ignore=case.label == IGNORE)


class ModalityExplorer:
    """Pick a case, tick the modalities to give the model and watch its prediction update:
    Dice against the ground truth, voxels gained (green) and lost (red) against the cached
    all-modalities prediction, and the inference latency of every update."""

    def __init__(self, model, channel_map: ChannelMap | dict, cases: Sequence[PreparedCase],
                 roi: int, overlap: float, device: str = "cpu", dpi: int = _DPI):
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
        self.case = W.Dropdown(options=[(_case_label(c), i) for i, c in enumerate(self.cases)],
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
            raise ModalityError(f"{_case_label(self.current_case())} offers {list(self.boxes)}, "
                                f"not {sorted(unknown)}")
        with _held(self):
            for m, box in self.boxes.items():
                box.value = m in modalities
        self.update()

    def reference_prediction(self, case: PreparedCase | None = None) -> np.ndarray:
        """The all-modalities prediction of a case, computed once and cached."""
        case = case or self.current_case()
        key = _case_key(case)
        if key not in self._reference:
            mods = usable_modalities(case, self.channel_map)
            pred, ms = predict_subset(self.model, self.channel_map, case, mods, self.roi,
                                      self.overlap, self.device)
            self._reference[key] = (pred, {**case_metrics(case, pred), "latency_ms": ms})
        return self._reference[key][0]

    def reference_metrics(self, case: PreparedCase | None = None) -> dict[str, float]:
        case = case or self.current_case()
        self.reference_prediction(case)
        return self._reference[_case_key(case)][1]

    def reference_predictions(self) -> dict[tuple[str, str], np.ndarray]:
        """All-modalities prediction of every case, keyed (database, case_id): CaseViewer's input."""
        return {_case_key(c): self.reference_prediction(c) for c in self.cases}

    # -- events
    def _on_case(self, _=None) -> None:
        case = self.current_case()
        with _held(self):
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
        title = f"{_case_label(case)} · given {'+'.join(subset) or 'nothing'}"
        if self.last_dice is not None:
            title += f" · Dice {self.last_dice:.3f} · {self.last_latency_ms:.0f} ms"
        self.figure = _draw_views(self.views(), case.spacing, self.cursor, "axial", title)
        self.image.value = figure_png(self.figure, self.dpi)

    def snapshot(self):
        """The current figure as an IPython Image (a static picture for stored notebook outputs)."""
        from IPython.display import Image

        return Image(data=figure_png(self.figure, self.dpi))

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


# ----------------------------------------------------------------------------- results explorer
_TIDY_REQUIRED = {"database", "subset"}


def _is_tidy(df: pd.DataFrame) -> bool:
    return _TIDY_REQUIRED <= set(df.columns) and any(m in df.columns for m in METRICS)


def _joint_columns(results: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """Fill arch/drop/training of a joint run's rows from its summary.json (joint.py writes
    those only there), so the paper's Table 3 row of the joint model can be filled."""
    summary = run_dir / "summary.json"
    if "arch" in results.columns or not summary.is_file():
        return results
    meta = json.loads(summary.read_text())
    dbs = sort_databases(results["database"].unique())
    out = results.copy()
    out["arch"] = meta.get("arch", "")
    out["drop"] = bool(meta.get("drop", False))
    out["training"] = "MD" if len(dbs) > 1 else "SD"
    out["train_databases"] = "+".join(dbs)
    return out


def sort_databases(names) -> list[str]:
    """Databases in the paper's order (training ones first), unknown names last."""
    from mmlib.data.manifest import ALL_DATABASES

    order = {n: i for i, n in enumerate(ALL_DATABASES)}
    return sorted(set(names), key=lambda n: (order.get(n, len(order)), n))


def load_results(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Tidy result rows: a DataFrame, a CSV file, a run folder's results.csv, or else every CSV
    of tidy rows in a folder (searched recursively when the top level has none)."""
    from mmlib.experiments.tables import tidy_results

    if isinstance(source, pd.DataFrame):
        return tidy_results(source)
    path = Path(source)
    if path.is_file():
        return tidy_results(pd.read_csv(path))
    if not path.is_dir():
        raise MMLibError("no such results file or folder", path)
    if (path / "results.csv").is_file():
        return tidy_results(_joint_columns(pd.read_csv(path / "results.csv"), path))
    frames = []
    for pattern in ("*.csv", "**/*.csv"):
        for csv in sorted(path.glob(pattern)):
            df = pd.read_csv(csv)
            if _is_tidy(df):
                frames.append(_joint_columns(df, csv.parent))
        if frames:
            break
    if not frames:
        raise MMLibError("no CSV of tidy result rows (columns database, subset, dice...) here", path)
    return tidy_results(pd.concat(frames, ignore_index=True))


def setting_label(training: str, drop: bool) -> str:
    """How the paper names a training setting: 'MD (drop)', 'SD (all mods)'."""
    return f"{training or '?'} ({'drop' if drop else 'all mods'})"


def _filter(results: pd.DataFrame, arch: str | None = None, setting: str | None = None) -> pd.DataFrame:
    df = results
    if arch:
        df = df[df["arch"] == arch]
    if setting:
        df = df[[setting_label(t, d) == setting for t, d in zip(df["training"], df["drop"])]]
    return df


def _subset_order(df: pd.DataFrame) -> list[str]:
    """Subsets by number of modalities (most first), then mmlib's modality order."""
    from mmlib.data.modalities import MODALITIES

    rank = {m: i for i, m in enumerate(MODALITIES)}
    subs = df["subset"].unique()
    return sorted(subs, key=lambda s: (-len(s.split("+")), [rank.get(m, 99) for m in s.split("+")]))


def per_run(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean over cases for each database × subset × model × seed (one value per run)."""
    df = results[results[metric].notna()]
    return df.groupby(["database", "subset", "model", "seed"], as_index=False)[metric].mean()


def metric_grid(results: pd.DataFrame, metric: str = "dice", arch: str | None = None,
                setting: str | None = None) -> pd.DataFrame:
    """The heatmap's data: mean over runs of the mean over cases, index subset (most modalities
    first), columns database (paper order); NaN where a database lacks the subset."""
    runs = per_run(_filter(results, arch, setting), metric)
    if runs.empty:
        return pd.DataFrame()
    grid = runs.groupby(["subset", "database"])[metric].mean().unstack("database")
    return grid.reindex(index=_subset_order(runs), columns=sort_databases(runs["database"]))


def seed_spread(results: pd.DataFrame, database: str, metric: str = "dice", arch: str | None = None,
                setting: str | None = None) -> pd.DataFrame:
    """The bars' data for one database: per subset, the mean over runs, the standard deviation
    over seeds (NaN with one seed) and the number of seeds."""
    runs = per_run(_filter(results, arch, setting), metric)
    runs = runs[runs["database"] == database]
    if runs.empty:
        return pd.DataFrame(columns=["subset", "mean", "std", "seeds"])
    out = (runs.groupby("subset")[metric].agg(mean="mean", std="std", seeds="count")
           .reindex(_subset_order(runs)).reset_index())
    return out


def paper_number(database: str, subset: str, metric: str, arch: str | None, setting: str | None,
                 all_modalities: bool) -> float:
    """The paper's number for the same model, database and subset (Tables 3/7/8 with all
    modalities, Tables 4/9/10 for ISLES and Tumor 2), NaN where the paper has none."""
    from mmlib.experiments.paper import paper_value
    from mmlib.experiments.tables import TABLE3_ROWS, TABLE4_COLUMNS, TABLE4_ROWS

    def matches(spec: dict) -> bool:
        return ((arch is None or spec.get("arch") == arch) and setting is not None
                and setting_label(spec.get("training", ""), spec.get("drop", False)) == setting)

    scale = 100.0 if metric in ("sensitivity", "precision") else 1.0  # the paper's percent
    try:
        if all_modalities:
            for row, spec in TABLE3_ROWS.items():
                if matches(spec):
                    return paper_value(3, row, database, metric) / scale
        for col, where in TABLE4_COLUMNS.items():
            if where == {"database": database, "subset": subset}:
                for row, spec in TABLE4_ROWS.items():
                    if matches(spec) and "train_databases" not in spec:
                        return paper_value(4, row, col, metric) / scale
    except KeyError:
        pass
    return float("nan")


def results_table(results: pd.DataFrame, n: int) -> pd.DataFrame:
    """Our Table `n` (2-10) from tidy rows, in the paper's layout (Tables 7-10 are
    `metric_table` of Table 3's or 4's models)."""
    from mmlib.experiments import tables as T

    builders = {2: T.table2, 3: T.table3, 4: T.table4, 5: T.table5, 6: T.table6}
    if n in builders:
        return builders[n](results)
    if n not in (7, 8, 9, 10):
        raise MMLibError(f"the paper has results tables 2-10, not {n}")
    base = 3 if n in (7, 8) else 4
    metrics = ("sensitivity", "precision") if n in (7, 9) else ("assd",)
    out = T.metric_table(results, base, metrics)
    if len(metrics) == 1:  # the paper's Tables 8 and 10 have one level of columns
        out.columns = [c[0] for c in out.columns]
    return out


def _has_values(table: pd.DataFrame) -> bool:
    cols = [c for c in table.columns if (c[0] if isinstance(c, tuple) else c) != "seeds"]
    return bool(table[cols].notna().to_numpy().any())


def available_tables(results: pd.DataFrame) -> list[int]:
    """The paper's tables (2-10) that these rows fill at least one cell of."""
    out = []
    for n in range(2, 11):
        try:
            if _has_values(results_table(results, n)):
                out.append(n)
        except (KeyError, ValueError):  # rows lacking a column a table needs
            continue
    return out


def table_with_paper(results: pd.DataFrame, n: int) -> pd.DataFrame:
    """Our Table `n` with the paper's row under each of ours (index row × source)."""
    from mmlib.experiments.paper import paper_table
    from mmlib.experiments.tables import side_by_side

    return side_by_side(results_table(results, n), paper_table(n))


def _style_table(df: pd.DataFrame) -> str:
    from mmlib.experiments.tables import format_table

    return f"<pre style='font-size:11px'>{format_table(df)}</pre>"


class ResultsExplorer:
    """Explore tidy results: a heatmap of a metric by modality subset × database, bars with the
    spread over seeds for one database beside the paper's number, and any of the paper's Tables
    2-10 that the rows fill, ours beside the paper's."""

    def __init__(self, source: str | Path | pd.DataFrame, dpi: int = _DPI):
        self.results = load_results(source)
        if self.results.empty:
            raise MMLibError("no result rows to explore")
        self.dpi = dpi
        self._hold = 0
        self.tables = available_tables(self.results)
        self.heatmap_figure: Figure | None = None
        self.bars_figure: Figure | None = None
        self.grid = pd.DataFrame()
        self.spread = pd.DataFrame()
        self.table = pd.DataFrame()
        r = self.results
        archs = sorted(a for a in r["arch"].unique() if a) or [""]
        settings = sorted({setting_label(t, d) for t, d in zip(r["training"], r["drop"])})
        metrics = [m for m in METRICS if m in r.columns and r[m].notna().any()]
        self.table_choice = W.Dropdown(options=[(f"Table {n}", n) for n in self.tables] or [("none", None)],
                                       description="table")
        self.database = W.Dropdown(options=sort_databases(r["database"]), description="database")
        self.arch = W.Dropdown(options=[(a or "(any)", a) for a in archs], description="architecture")
        self.setting = W.Dropdown(options=settings, description="training")
        self.metric = W.Dropdown(options=metrics, description="metric")
        self.heatmap = W.Image(format="png")
        self.bars = W.Image(format="png")
        self.table_html = W.HTML()
        self.widget = W.VBox([
            W.HBox([self.database, self.arch, self.setting, self.metric]),
            # flex-start: a stretched row would distort the shorter of the two pictures.
            W.HBox([self.heatmap, self.bars], layout=W.Layout(align_items="flex-start")),
            self.table_choice, self.table_html])
        self.widget.add_class("mmlib-results-explorer")
        for w in (self.database, self.arch, self.setting, self.metric):
            w.observe(lambda _: self.render(), "value")
        self.table_choice.observe(lambda _: self.render_table(), "value")
        self.render()
        self.render_table()

    @property
    def figure(self) -> Figure | None:
        return self.heatmap_figure

    def _selection(self) -> dict[str, Any]:
        return dict(arch=self.arch.value or None, setting=self.setting.value)

    def render(self) -> None:
        """Redraw the heatmap and the bars for the current choices."""
        if self._hold:
            return
        import seaborn as sns

        metric, db, sel = self.metric.value, self.database.value, self._selection()
        self.grid = metric_grid(self.results, metric, **sel)
        self.spread = seed_spread(self.results, db, metric, **sel)
        bounded = metric != "assd"
        fig = Figure(figsize=(1.2 + 0.75 * max(len(self.grid.columns), 1),
                              1.0 + 0.2 * max(len(self.grid), 1)))
        ax = fig.subplots()
        if not self.grid.empty:
            sns.heatmap(self.grid, ax=ax, annot=True, fmt=".2f", annot_kws={"fontsize": 7},
                        cmap="viridis" if bounded else "viridis_r",
                        vmin=0 if bounded else None, vmax=1 if bounded else None,
                        cbar_kws={"label": metric})
        ax.set_title(f"{metric} by modality subset · {sel['arch'] or 'any'} · {sel['setting']}", fontsize=9)
        ax.set_xlabel(""), ax.set_ylabel("modalities given")
        ax.tick_params(labelsize=7)
        fig.tight_layout()
        self.heatmap_figure = fig
        self.heatmap.value = figure_png(fig, self.dpi)
        self.bars_figure = self._draw_bars(db, metric, sel)
        self.bars.value = figure_png(self.bars_figure, self.dpi)

    def _draw_bars(self, db: str, metric: str, sel: dict) -> Figure:
        sp = self.spread
        fig = Figure(figsize=(4.8, 1.2 + 0.2 * max(len(sp), 1)))
        ax = fig.subplots()
        if len(sp):
            full = max(len(s.split("+")) for s in sp["subset"])
            y = np.arange(len(sp))
            spread = sp["std"].to_numpy(float)
            ax.barh(y, sp["mean"], xerr=spread if np.isfinite(spread).any() else None, capsize=2,
                    color=["#1f77b4" if len(s.split("+")) == full else "#9ecae1" for s in sp["subset"]],
                    label=f"ours (mean ± sd over {int(sp['seeds'].max())} seed(s))")
            paper = [paper_number(db, s, metric, sel["arch"], sel["setting"], len(s.split("+")) == full)
                     for s in sp["subset"]]
            if np.isfinite(paper).any():
                ax.plot(paper, y, "kD", ms=5, label="paper")
            ax.set_yticks(y, sp["subset"])
            ax.invert_yaxis()
            ax.legend(fontsize=7, loc="lower right")
            if metric != "assd":
                ax.set_xlim(0, 1)
        ax.set_title(f"{db}: {metric} per modality subset", fontsize=9)
        ax.tick_params(labelsize=7)
        fig.tight_layout()
        return fig

    def render_table(self) -> None:
        """Our chosen table with the paper's numbers beside it."""
        n = self.table_choice.value
        if n is None:
            self.table = pd.DataFrame()
            self.table_html.value = ("<i>these results fill none of the paper's tables 2-10 "
                                     "(they need the columns arch, training, drop ...)</i>")
            return
        self.table = table_with_paper(self.results, n)
        from mmlib.experiments.paper import paper_table

        title = paper_table(n).attrs.get("title", "")
        self.table_html.value = f"<b>Table {n}</b>: {title}" + _style_table(self.table)

    def snapshot(self):
        """Heatmap and bars as IPython Images (static pictures for stored notebook outputs)."""
        from IPython.display import Image

        return [Image(data=figure_png(f, self.dpi)) for f in (self.heatmap_figure, self.bars_figure)]

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


# ----------------------------------------------------------------------------- a run, opened
@dataclass
class OpenedRun:
    """What the explorers need from a joint run folder."""

    results: pd.DataFrame
    model: Any
    channel_map: ChannelMap
    cases: list[PreparedCase]
    roi: int
    overlap: float
    checkpoint: Path


def open_run(run_dir: str | Path, preset: str = "smoke", device: str = "cpu",
             databases: Sequence[str] | None = None) -> OpenedRun:
    """Results, trained model, channel map and test cases (from the run's cache) of a folder
    that `mmlib.experiments.joint.run_joint` wrote."""
    from mmlib.data.manifest import TRAINING_DATABASES
    from mmlib.engine.checkpoint import load_model
    from mmlib.experiments.common import as_preset, load_databases

    run_dir, preset = Path(run_dir), as_preset(preset)
    summary = run_dir / "summary.json"
    ckpt = Path(json.loads(summary.read_text())["checkpoint"]) if summary.is_file() else None
    if ckpt is None or not ckpt.is_file():
        found = sorted((run_dir / "models").glob("*/final.pt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise MMLibError("no trained model (models/*/final.pt) in the run folder", run_dir)
        ckpt = found[-1]
    model, cmap, _ = load_model(ckpt, device=device)
    data_root = run_dir / "data" if (run_dir / "data").is_dir() else None
    dbs = load_databases(databases or TRAINING_DATABASES, preset, data_root, run_dir / "cache",
                         progress=False)
    cases = [c for db in dbs.values() for c in db.test]
    return OpenedRun(load_results(run_dir), model, ChannelMap.from_dict(cmap), cases,
                     preset.crop, preset.sw_overlap, ckpt)


__all__ = ["PLANES", "COLOURS", "take_slice", "default_window", "apply_window", "outline",
           "compose_rgb", "prediction_difference", "lesion_centre", "figure_png", "CaseViewer",
           "usable_modalities", "predict_subset", "case_metrics", "ModalityExplorer",
           "load_results", "setting_label", "metric_grid", "seed_spread", "paper_number",
           "results_table", "available_tables", "table_with_paper", "ResultsExplorer",
           "OpenedRun", "open_run"]
