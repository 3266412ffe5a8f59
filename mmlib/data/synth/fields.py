"""Small numerical pieces of the twins: smooth random fields, fast trilinear sampling, soft blobs."""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage


@functools.lru_cache(maxsize=32)
def _noise_bank(shape: tuple[int, ...], spacing: tuple[float, ...], scale_mm: float) -> np.ndarray:
    """Two periodic smooth unit-variance fields (Gaussian-filtered white noise, via FFT)."""
    rng = np.random.default_rng(7)   # the bank is fixed; cases differ by shift, flip and sign
    freqs = np.meshgrid(*[np.fft.fftfreq(n, d=s) for n, s in zip(shape[:2], spacing[:2])],
                        np.fft.rfftfreq(shape[2], d=spacing[2]), indexing="ij", sparse=True)
    k2 = sum(f * f for f in freqs)
    sigma = 0.5 * scale_mm
    gain = np.exp(-2 * (np.pi * sigma) ** 2 * k2)
    out = []
    for _ in range(2):
        f = np.fft.irfftn(np.fft.rfftn(rng.standard_normal(shape)) * gain, s=shape, axes=(0, 1, 2))
        out.append(((f - f.mean()) / max(f.std(), 1e-12)).astype(np.float32))
    return np.stack(out)


def smooth_noise(shape: tuple[int, ...], spacing: np.ndarray, scale_mm: float,
                 rng: np.random.Generator) -> np.ndarray:
    """A float32 random field of zero mean, unit std, with structures of about `scale_mm`.

    A randomly shifted, flipped and signed copy of a periodic field computed once per grid and
    scale: a copy costs milliseconds where filtering fresh noise costs a good part of a second.
    """
    shape = tuple(int(n) for n in shape)
    bank = _noise_bank(shape, tuple(float(s) for s in spacing), float(scale_mm))
    field = bank[rng.integers(len(bank))]
    field = np.roll(field, tuple(int(rng.integers(n)) for n in shape), axis=(0, 1, 2))
    flips = tuple(a for a in range(3) if rng.random() < 0.5)
    if flips:
        field = np.flip(field, flips)
    return np.ascontiguousarray(field if rng.random() < 0.5 else -field)


def trilinear(stack: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Sample a (X, Y, Z, C) stack at voxel coordinates (3, N): returns (N, C) float32.

    One index computation shared by all C maps, in-place lerps (no big temporaries); outside
    the volume the edge value is used.
    """
    dims = np.asarray(stack.shape[:3])
    c = [np.clip(coords[i], 0, dims[i] - 1.001) for i in range(3)]
    i0 = [np.floor(ci).astype(np.int32) for ci in c]
    fx, fy, fz = [(ci - ii).astype(np.float32)[:, None] for ci, ii in zip(c, i0)]
    flat = stack.reshape(-1, stack.shape[3])
    sy, sz = int(dims[1] * dims[2]), int(dims[2])
    base = i0[0] * sy + i0[1] * sz + i0[2]

    def lerp(a, b, t):
        b -= a
        b *= t
        a += b
        return a

    def line(offset):
        return lerp(flat[base + offset], flat[base + offset + 1], fz)

    c0 = lerp(line(0), line(sz), fy)
    c1 = lerp(line(sy), line(sy + sz), fy)
    return lerp(c0, c1, fx)


def rotation(angles_rad: np.ndarray) -> np.ndarray:
    """3x3 rotation from three angles (about x, y, z)."""
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation (for lesion orientations)."""
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([[a*a + b*b - c*c - d*d, 2*(b*c - a*d), 2*(b*d + a*c)],
                     [2*(b*c + a*d), a*a - b*b + c*c - d*d, 2*(c*d - a*b)],
                     [2*(b*d - a*c), 2*(c*d + a*b), a*a - b*b - c*c + d*d]])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def draw_points(prob: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n voxel indices (n, 3) drawn with probability proportional to `prob` (>= 0)."""
    flat = np.asarray(prob, np.float64).ravel()
    cdf = np.cumsum(flat)
    if n <= 0 or cdf[-1] <= 0:
        return np.zeros((0, 3), int)
    idx = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    return np.stack(np.unravel_index(np.minimum(idx, flat.size - 1), prob.shape), axis=1)


class Blob:
    """A soft ellipsoid with an irregular outline, evaluated only inside its bounding box.

    `q` is the normalised radius (0 at the centre, 1 on the nominal outline) perturbed by a
    smooth noise field, so outlines are lobulated rather than geometric.
    """

    def __init__(self, shape, spacing, centre_vox, radii_mm, rot: np.ndarray,
                 noise: np.ndarray | None = None, rough: float = 0.0, margin: float = 1.6):
        spacing = np.asarray(spacing, float)
        radii = np.maximum(np.asarray(radii_mm, float), 0.3)
        half = np.ceil(radii.max() * margin * (1 + rough) / spacing + 2).astype(int)
        c = np.asarray(centre_vox, float)
        lo = np.maximum(np.floor(c - half).astype(int), 0)
        hi = np.minimum(np.ceil(c + half).astype(int) + 1, shape)
        self.box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        self.radius = float(radii.mean())
        self.empty = bool(np.any(hi <= lo))
        if self.empty:
            self.q = np.zeros((0, 0, 0), np.float32)
            return
        grids = np.meshgrid(*[(np.arange(a, b) - ci) * s for a, b, ci, s in zip(lo, hi, c, spacing)],
                            indexing="ij", sparse=True)
        # coordinates in the blob's frame, scaled by its radii
        m = (rot.T / radii[:, None]).astype(np.float32)
        q2 = 0
        for k in range(3):
            u = m[k, 0] * grids[0] + m[k, 1] * grids[1] + m[k, 2] * grids[2]
            q2 = q2 + u * u
        q = np.sqrt(q2).astype(np.float32)
        if noise is not None and rough > 0:
            q = q * (1.0 + rough * noise[self.box])
        self.q = q

    def soft(self, level: float = 1.0, edge_mm: float = 1.0) -> np.ndarray:
        """Partial volume of the region q < level; `edge_mm` is the 10-90 % width of its edge."""
        # 4.4 = the 10-90 % width of the logistic function in units of its scale.
        return sigmoid((level - self.q) * (self.radius * 4.4 / max(edge_mm, 1e-3)))
