"""Healthy anatomy of a synthetic subject, warped from the MNI152 2009 template (nilearn).

The template gives GM/WM probability maps and a brain mask; CSF = brain minus GM and WM.
A subject is the template seen through its own transform (size, rotation, a smooth random
deformation, enlarged ventricles, cortical atrophy), sampled on a database's voxel grid.
Skull, scalp and extra-axial CSF are shells grown outside the brain mask, for the releases
that are not skull-stripped.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from mmlib.data.synth.fields import rotation, sigmoid, smooth_noise, trilinear

#: Maps carried by the template, in the order of its stack's last axis.
CHANNELS = ("gm", "wm", "csf", "brain", "texture", "vent", "depth", "vdist", "skull", "scalp")
# Maps that must keep their values in mm (distances): not blurred when the template is smoothed.
_DISTANCES = ("depth", "vdist")
# MNI mm box that holds the lateral and third ventricles (deep CSF outside it is fissure or cistern).
_VENTRICLE_BOX = ((-28, 28), (-48, 32), (-8, 36))


@dataclass(frozen=True)
class Template:
    """The template's maps, stacked (X, Y, Z, C) for one-pass sampling, and where they lie."""

    stack: np.ndarray
    affine: np.ndarray
    brain_box_mm: np.ndarray          # (2, 3) min/max world mm of the brain mask
    ventricle_centre_mm: np.ndarray   # (3,)
    support_brain: np.ndarray         # bool: where brain maps are non-zero (dilated)
    support_head: np.ndarray          # bool: where any map is non-zero (dilated)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.stack.shape[:3])

    @property
    def spacing(self) -> float:
        return float(self.affine[0, 0])


@functools.lru_cache(maxsize=2)
def _load(resolution: int):
    # nilearn is imported lazily: it is slow to import and only generation needs it.
    from nilearn import datasets
    arrays = [np.asarray(f(resolution=resolution).get_fdata(), np.float32) for f in (
        datasets.load_mni152_template, datasets.load_mni152_gm_template,
        datasets.load_mni152_wm_template, datasets.load_mni152_brain_mask)]
    affine = datasets.load_mni152_brain_mask(resolution=resolution).affine
    return (*arrays, np.asarray(affine, float))


@functools.lru_cache(maxsize=2)
def load_template(voxel_mm: float) -> Template:
    """Template maps for generation at `voxel_mm`: 1 mm template below 2 mm, else 2 mm,
    blurred to about the target voxel size so coarse grids do not alias."""
    res = 1 if voxel_mm < 2 else 2
    t1, gm, wm, mask, affine = _load(res)
    mask = mask > 0.5
    brain = ndimage.gaussian_filter(mask.astype(np.float32), 0.5)
    gm, wm = gm * brain, wm * brain
    over = np.maximum(gm + wm, 1.0)   # probabilities that sum above one are renormalised
    gm, wm = gm / over, wm / over
    csf_in = np.clip(brain - gm - wm, 0, 1)

    # Texture: what the tissue classes do not explain of the template's T1 (deep grey nuclei,
    # myelination gradients), in units of the WM-CSF contrast; it gives the twins real anatomy.
    inside = mask & (t1 > 0)
    design = np.stack([csf_in[inside], gm[inside], wm[inside]], 1)
    coef, *_ = np.linalg.lstsq(design, t1[inside], rcond=None)
    fit = csf_in * coef[0] + gm * coef[1] + wm * coef[2]
    texture = np.clip((t1 - fit) / max(coef[2] - coef[0], 1e-3), -0.5, 0.5) * mask

    depth = ndimage.distance_transform_edt(mask, sampling=res).astype(np.float32)
    world = _world(mask.shape, affine)
    in_box = np.ones(mask.shape, bool)
    for axis, (lo, hi) in enumerate(_VENTRICLE_BOX):
        in_box &= (world[axis] >= lo) & (world[axis] <= hi)
    vent_mask = (csf_in > 0.5) & (depth > 12) & in_box
    vent = ndimage.gaussian_filter(vent_mask.astype(np.float32), 0.5)
    vdist = np.minimum(ndimage.distance_transform_edt(~vent_mask, sampling=res), 60).astype(np.float32)

    # Shells outside the brain: extra-axial CSF, skull (dark on every contrast), scalp (fat).
    rng = np.random.default_rng(20240514)   # fixed: the shells belong to the template, not a subject
    out = ndimage.distance_transform_edt(~mask, sampling=res).astype(np.float32)
    n = [smooth_noise(mask.shape, np.full(3, res), 30.0, rng) for _ in range(3)]
    s0 = 2.5 + 0.8 * n[0]
    s1 = s0 + 6.0 + 1.2 * n[1]
    s2 = s1 + 5.0 + 1.5 * n[2]

    def band(a, b):
        return sigmoid((out - a) / 0.6) * sigmoid((b - out) / 0.6)

    csf = np.where(mask, csf_in, 0) + band(0.0, s0) * (1 - brain)
    skull, scalp = band(s0, s1), band(s1, s2)
    maps = dict(gm=gm, wm=wm, csf=csf, brain=brain, texture=texture, vent=vent, depth=depth,
                vdist=vdist, skull=skull, scalp=scalp)
    sigma = 0.42 * voxel_mm / res
    if sigma > 0.5:
        for k in CHANNELS:
            if k not in _DISTANCES:
                maps[k] = ndimage.gaussian_filter(maps[k], sigma)
    stack = np.stack([maps[k].astype(np.float32) for k in CHANNELS], axis=-1)
    idx = np.argwhere(mask)
    box = np.stack([affine[:3, :3] @ idx.min(0) + affine[:3, 3], affine[:3, :3] @ idx.max(0) + affine[:3, 3]])
    vidx = np.argwhere(vent_mask).mean(0)
    ball = ndimage.generate_binary_structure(3, 1)
    support_brain = ndimage.binary_dilation(maps["brain"] > 1e-3, ball, iterations=2)
    support_head = ndimage.binary_dilation((maps["brain"] + maps["csf"] + maps["skull"] + maps["scalp"]) > 1e-3,
                                           ball, iterations=2)
    return Template(stack=np.ascontiguousarray(stack), affine=affine, brain_box_mm=box,
                    ventricle_centre_mm=affine[:3, :3] @ vidx + affine[:3, 3],
                    support_brain=support_brain, support_head=support_head)


def _world(shape, affine) -> list[np.ndarray]:
    idx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij", sparse=True)
    return [affine[i, 0] * idx[0] + affine[i, 1] * idx[1] + affine[i, 2] * idx[2] + affine[i, 3]
            for i in range(3)]


@dataclass(frozen=True)
class Grid:
    """A RAS voxel grid in subject mm: `affine` maps voxel indices to mm."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(0))

    def to_vox(self, mm: np.ndarray) -> np.ndarray:
        return np.linalg.solve(self.affine[:3, :3], np.asarray(mm, float) - self.affine[:3, 3])


def make_grid(tpl: Template, spacing, fov: str) -> Grid:
    """The grid a database is generated on. fov 'template': the template's own field of view
    (MNI-registered releases); 'head': the same box (room for skull and scalp); 'brain': the
    brain's bounding box plus a margin (skull-stripped releases)."""
    spacing = np.asarray(spacing, float)
    if fov in ("template", "head"):
        lo = tpl.affine[:3, 3]
        hi = lo + (np.asarray(tpl.shape) - 1) * tpl.spacing
    elif fov == "brain":
        lo, hi = tpl.brain_box_mm[0] - 12.0, tpl.brain_box_mm[1] + 12.0
    else:
        raise ValueError(f"unknown field of view {fov!r}")
    shape = tuple(int(np.floor((h - l) / s)) + 1 for l, h, s in zip(lo, hi, spacing))
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = lo
    return Grid(shape, affine)


@dataclass
class Anatomy:
    """One subject's maps on a grid (float32, grid shape): the template's CHANNELS plus
    `tpl_mm` (3 arrays: where each voxel came from in MNI mm, for vascular territories)."""

    grid: Grid
    maps: dict[str, np.ndarray]
    tpl_mm: np.ndarray
    params: dict = field(default_factory=dict)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.maps[key]


@dataclass(frozen=True)
class Geometry:
    """A subject's transform from its own mm to template mm (see sample_geometry)."""

    centre: np.ndarray        # template brain centre, mm
    matrix: np.ndarray        # 3x3: rotation / size
    shift: np.ndarray         # mm
    deform_mm: float
    ventricles: float         # 0..~0.5: how much the ventricles are enlarged
    atrophy: float            # 0..~0.6: share of cortical GM turned to CSF where atrophic

    def to_subject(self, tpl_mm: np.ndarray) -> np.ndarray:
        """Approximate inverse (ignores the smooth deformation): template mm -> subject mm."""
        return self.centre + np.linalg.solve(self.matrix, np.asarray(tpl_mm) - self.centre - self.shift)


def sample_geometry(tpl: Template, rng: np.random.Generator, p: dict) -> Geometry:
    """Draw a subject's size, pose, deformation and ageing from the database's `geometry` parameters."""
    # MNI152 is larger than an average brain: subjects are drawn around `size` x the template.
    sd = p.get("scale_sd", 0.05)
    scale = p.get("size", 0.92) * np.exp(rng.normal(0, sd) + rng.normal(0, sd / 2, 3))
    angles = np.deg2rad(rng.normal(0, p.get("rotation_deg", 5.0), 3))
    matrix = rotation(angles) @ np.diag(1 / scale)
    lo, hi = p.get("ventricles", (0.0, 0.3))
    alo, ahi = p.get("atrophy", (0.0, 0.3))
    return Geometry(centre=tpl.brain_box_mm.mean(0), matrix=matrix,
                    shift=rng.normal(0, p.get("shift_mm", 3.0), 3), deform_mm=p.get("deform_mm", 3.0),
                    ventricles=float(rng.uniform(lo, hi)), atrophy=float(rng.uniform(alo, ahi)))


def _radial(points: np.ndarray, centre: np.ndarray, amount: float, sigma_mm: float) -> np.ndarray:
    """Displacement -amount*(p-c)*exp(-|p-c|^2/2s^2): sampling nearer the centre enlarges what lies there."""
    d = points - np.asarray(centre, np.float32)[:, None]
    w = np.exp(-(d * d).sum(0) / (2 * sigma_mm ** 2)).astype(np.float32)
    return -amount * d * w


#: Map values where the template holds nothing (far outside the head).
_EMPTY = {"vdist": 60.0}


def sample_anatomy(tpl: Template, grid: Grid, geom: Geometry, rng: np.random.Generator,
                   masses: list[tuple[np.ndarray, float, float]] = (), head: bool = True) -> Anatomy:
    """Warp the template into a subject on `grid`.

    masses: (centre in subject mm, amount, sigma mm) of space-occupying lesions whose mass
    effect pushes the surrounding anatomy outwards. head=False: only the brain is needed
    (skull-stripped release), so skull and scalp are left out.
    """
    shape = grid.shape
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    p = (grid.affine[:3, :3] @ idx + grid.affine[:3, 3, None]).astype(np.float32)
    for centre, amount, sigma in masses:
        p += _radial(p, centre, amount, sigma)
    c = geom.centre.astype(np.float32)[:, None]
    q = geom.matrix.astype(np.float32) @ (p - c) + c + geom.shift.astype(np.float32)[:, None]
    if geom.deform_mm > 0:
        for k in range(3):
            q[k] += geom.deform_mm * smooth_noise(shape, grid.spacing, 45.0, rng).ravel()
    if geom.ventricles > 0:
        q += _radial(q, tpl.ventricle_centre_mm, geom.ventricles, 24.0)
    vox = np.linalg.solve(tpl.affine[:3, :3], q - tpl.affine[:3, 3, None]).astype(np.float32)
    # Most of a grid lies outside the head: interpolate only where the template holds something.
    support = tpl.support_head if head else tpl.support_brain
    near = [np.clip(np.rint(vox[k]).astype(np.int32), 0, tpl.shape[k] - 1) for k in range(3)]
    sel = np.flatnonzero(support[near[0], near[1], near[2]])
    sampled = trilinear(tpl.stack, vox[:, sel])
    maps = {}
    for i, k in enumerate(CHANNELS):
        full = np.full(idx.shape[1], _EMPTY.get(k, 0.0), np.float32)
        full[sel] = sampled[:, i]
        maps[k] = full.reshape(shape)
    if geom.atrophy > 0:
        # Cortical atrophy: widened sulci, patchy, strongest near the surface.
        patch = np.clip(0.5 + 0.5 * smooth_noise(shape, grid.spacing, 35.0, rng), 0, 1)
        superficial = np.clip(1 - maps["depth"] / 20.0, 0, 1)
        lost = maps["gm"] * geom.atrophy * patch * superficial
        maps["gm"] = maps["gm"] - lost
        maps["csf"] = maps["csf"] + lost
    return Anatomy(grid=grid, maps=maps, tpl_mm=q.reshape(3, *shape))
