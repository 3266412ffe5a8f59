"""What the three widgets share: slices and overlays of RAS volumes, the difference between two
predictions, and figures drawn off-screen into PNG bytes (pure functions, tested without a display)."""

from __future__ import annotations

import io
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
from matplotlib.figure import Figure
from scipy import ndimage

from mmlib.data.cases import PreparedCase

#: The axis of a RAS (X, Y, Z) array that each display plane cuts.
PLANES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
#: Overlay colours (RGB in 0..1); gained/lost = voxels a subset adds/removes vs all modalities.
COLOURS: dict[str, tuple[float, float, float]] = {
    "truth": (1.0, 0.85, 0.0), "prediction": (0.0, 0.7, 1.0),
    "gained": (0.2, 0.9, 0.2), "lost": (1.0, 0.15, 0.15),
}
METRICS = ("dice", "sensitivity", "precision", "assd")
DPI = 80


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


def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes (no pyplot state, so widgets never leak open figures)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def draw_views(rgbs: dict[str, np.ndarray], spacing: Sequence[float], cursor: Sequence[int],
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


def case_key(case: PreparedCase) -> tuple[str, str]:
    return (case.database, case.case_id)


def case_label(case: PreparedCase) -> str:
    return f"{case.database} · {case.case_id}"


@contextmanager
def held(widget) -> Iterator[None]:
    """Suppress a widget's redraws while several of its controls change at once."""
    widget._hold += 1
    try:
        yield
    finally:
        widget._hold -= 1


