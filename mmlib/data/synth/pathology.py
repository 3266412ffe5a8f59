"""Lesion models of the twins: where lesions lie, their shapes, compartments and labels.

Each model draws on a subject's Anatomy and returns Lesions: compartments (appearance key of
contrast.LESION or contrast.OWN_SIGNAL, bounding box, weight map) and the label as its release
writes it. Weights are partial volume x conspicuity, so a lesion can be faint in one modality's
mix yet labelled; labels are the partial volume thresholded at a per-lesion level on an outline
perturbed independently of the intensity outline (raters do not follow the intensity edge exactly).
Parameters come from the manifest's `synth.lesions` mapping; defaults below are the paper
databases' typical values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from mmlib.data.synth.anatomy import Anatomy, Geometry, Template
from mmlib.data.synth.fields import Blob, draw_points, random_rotation, sigmoid, smooth_noise

Box = tuple[slice, slice, slice]


@dataclass
class Lesions:
    """Compartments [(appearance key, box, weight)] and the label (uint8, release values)."""

    parts: list[tuple[str, Box, np.ndarray]]
    label: np.ndarray
    info: dict = field(default_factory=dict)


class _Canvas:
    """Collects compartments and labels for one case; keeps the shared noise fields."""

    def __init__(self, anat: Anatomy, rng: np.random.Generator):
        self.anat, self.rng = anat, rng
        g = anat.grid
        self.shape, self.spacing = g.shape, g.spacing
        self.parts: list[tuple[str, Box, np.ndarray]] = []
        self.label = np.zeros(g.shape, np.uint8)
        # Shared noise: outline roughness (coarse and fine) and within-lesion heterogeneity.
        self.rough = smooth_noise(g.shape, g.spacing, 9.0, rng)
        self.fine = smooth_noise(g.shape, g.spacing, 4.0, rng)
        self.hetero = smooth_noise(g.shape, g.spacing, 6.0, rng)
        self.par = np.clip(anat["gm"] + anat["wm"], 0, 1)  # parenchyma share

    def blob(self, centre_vox, radii_mm, rot=None, rough=0.2, fine=False) -> Blob:
        rot = random_rotation(self.rng) if rot is None else rot
        return Blob(self.shape, self.spacing, centre_vox, radii_mm, rot,
                    self.fine if fine else self.rough, rough)

    def add(self, key: str, box: Box, weight: np.ndarray, contrast=(0.6, 1.0), hetero: float = 0.15) -> None:
        """Add a compartment; its conspicuity is drawn in `contrast` and varies inside it."""
        c = self.rng.uniform(*contrast) * (1 + hetero * self.hetero[box])
        self.parts.append((key, box, np.clip(weight * c, 0, 1).astype(np.float32)))

    def mark(self, box: Box, mask: np.ndarray, value: int, over: tuple[int, ...] = (0,)) -> None:
        """Write `value` where mask, over the values listed in `over` only (label priority)."""
        lab = self.label[box]
        write = mask & np.isin(lab, over)
        lab[write] = value

    def label_mask(self, blob: Blob, level: float = 1.0, wobble: float = 0.06, pv: float = 0.5) -> np.ndarray:
        """The rater's outline: q < level, with its own small wobble, thresholded partial volume."""
        t = self.rng.uniform(pv - 0.15, pv + 0.15)
        q = blob.q * (1 + wobble * self.fine[blob.box])
        return sigmoid((level - q) * blob.radius * 4.4 / 1.0) > t

    def result(self, **info) -> Lesions:
        return Lesions(self.parts, self.label, info)


def _largest(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a mask (a rater outlines one region, not crumbs)."""
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    return lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))


def _loguniform(rng, lo, hi) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _radial_rotation(direction: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rotation whose first axis points along `direction` (e.g. away from the ventricles)."""
    d = np.asarray(direction, float)
    d = d / max(np.linalg.norm(d), 1e-6)
    a = rng.standard_normal(3)
    a -= a.dot(d) * d
    a /= max(np.linalg.norm(a), 1e-6)
    return np.stack([d, a, np.cross(d, a)], axis=1)


def _vox_mm(anat: Anatomy, vox) -> np.ndarray:
    return anat.grid.affine[:3, :3] @ np.asarray(vox, float) + anat.grid.affine[:3, 3]


def _centre_direction(anat: Anatomy, vox) -> np.ndarray:
    """Direction from the ventricles' centre to a voxel, in subject mm."""
    c = np.array([anat.tpl_mm[k][tuple(int(v) for v in vox)] for k in range(3)])
    return c - np.array([0.0, -18.0, 12.0])   # template ventricle centre, MNI mm


# --------------------------------------------------------------------------- glioma / tumour

def glioma_plan(tpl: Template, geom: Geometry, rng: np.random.Generator, p: dict) -> dict:
    """Where the tumour sits and how big it is, decided before the anatomy for its mass effect."""
    stack = tpl.stack
    wm, depth = stack[..., 1], stack[..., 6]
    ix = np.indices(tpl.shape, sparse=True)
    x_mm = tpl.affine[0, 0] * ix[0] + tpl.affine[0, 3]
    z_mm = tpl.affine[2, 2] * ix[2] + tpl.affine[2, 3]
    prob = wm * (depth > p.get("min_depth_mm", 18.0)) * (np.abs(x_mm) > 12) * (z_mm > -30)
    vox = draw_points(prob, 1, rng)[0]
    centre_tpl = tpl.affine[:3, :3] @ vox + tpl.affine[:3, 3]
    core = _loguniform(rng, *p.get("core_mm", (9.0, 24.0)))
    radii = core * np.exp(rng.normal(0, 0.15, 3))
    oedema = rng.uniform(*p.get("oedema_factor", (1.2, 2.1)))
    return dict(centre_mm=geom.to_subject(centre_tpl), radii=radii, oedema=oedema,
                necrosis=rng.random() < p.get("necrosis_p", 0.7),
                enhancing=rng.random() < p.get("enhancing_p", 0.8),
                masses=[(geom.to_subject(centre_tpl), rng.uniform(*p.get("mass_effect", (0.2, 0.45))),
                         float(core * 1.3))])


def glioma(anat: Anatomy, rng: np.random.Generator, p: dict, plan: dict) -> Lesions:
    """Glioma: oedema spreading along WM, a solid core with necrosis and an enhancing rim.

    Labels (MSD BraTS): values of p['labels'] = {oedema, core, enhancing} (default 1, 2, 3).
    """
    cv = _Canvas(anat, rng)
    values = {"oedema": 1, "core": 2, "enhancing": 3, **p.get("labels", {})}
    centre = anat.grid.to_vox(plan["centre_mm"])
    rot = random_rotation(rng)
    core = cv.blob(centre, plan["radii"], rot, rough=p.get("rough", 0.3))
    if core.empty:
        return cv.result()
    oed = cv.blob(centre, plan["radii"] * plan["oedema"], random_rotation(rng), rough=0.35)
    box = oed.box
    par, brain = cv.par[box], anat["brain"][box]
    # Oedema follows white matter: its outline reaches further where WM is (WM smoothed, so
    # the outline bends around gyri instead of breaking up at every sulcus).
    wm = ndimage.gaussian_filter(anat["wm"][box], 3.0 / anat.grid.spacing)
    q_oed = oed.q * (1.2 - 0.45 * wm)
    edge = rng.uniform(*p.get("oedema_edge_mm", (3.0, 8.0)))
    r_oed = oed.radius
    oed_pv = sigmoid((1 - q_oed) * r_oed * 4.4 / edge) * par
    # core evaluated on the oedema's box
    core_full = np.zeros(cv.shape, np.float32)
    core_full[core.box] = core.soft(1.0, 1.5)
    # The tumour core is one region: BraTS's raters outline one core around the necrosis and the
    # enhancing rim (Menze et al., IEEE TMI 2015). The rough outline's detached crumbs are not
    # satellites: they leave the image and the label alike (oedema, if any, takes their place).
    core_label = _largest((core_full[box] * brain > 0.5) & (brain > 0.5))
    main = ndimage.binary_dilation(core_label, iterations=2)
    core_pv = core_full[box] * brain * main
    nec_pv = np.zeros_like(core_pv)
    if plan["necrosis"]:
        rn = rng.uniform(0.3, 0.7)
        tmp = np.zeros(cv.shape, np.float32)
        tmp[core.box] = core.soft(rn, 2.0)
        nec_pv = tmp[box] * brain * main
    rim = np.clip(core_pv - nec_pv, 0, 1)
    if plan["enhancing"]:
        share = sigmoid(2.5 * cv.hetero[box] + rng.uniform(-0.5, 1.5))
    else:
        share = np.zeros_like(rim)
    cv.add("oedema", box, np.clip(oed_pv - core_pv, 0, 1), p.get("oedema_contrast", (0.45, 1.0)), hetero=0.25)
    cv.add("necrosis", box, nec_pv, (0.7, 1.0))
    cv.add("enhancing", box, rim * share, (0.6, 1.0), hetero=0.3)
    cv.add("solid", box, rim * (1 - share), (0.5, 1.0), hetero=0.25)
    # Labels: the rater's oedema outline wobbles independently of the intensity edge.
    t = rng.uniform(0.3, 0.6)
    outline = sigmoid((1 - q_oed * (1 + 0.08 * cv.fine[box])) * r_oed * 4.4 / 2.0) > t
    # Raters include sulcal CSF inside the oedema but not the ventricles.
    oed_label = _largest(outline & (brain > 0.5) & (anat["vent"][box] < 0.5) & (par + anat["csf"][box] > 0.5))
    enh_label = core_label & ((rim * share) > 0.35)
    cv.mark(box, oed_label | core_label, values["oedema"])
    cv.mark(box, core_label, values["core"], over=(0, values["oedema"]))
    cv.mark(box, enh_label, values["enhancing"], over=(0, values["oedema"], values["core"]))
    return cv.result(kind="glioma")


# --------------------------------------------------------------------------- stroke

_TERRITORIES = ("MCA", "ACA", "PCA")


def _territory(tpl_mm: np.ndarray, name: str, side: int) -> np.ndarray:
    """Soft vascular territory (one hemisphere) from template coordinates."""
    x, y, z = tpl_mm[0] * side, tpl_mm[1], tpl_mm[2]

    def s(v, scale=4.0):
        return sigmoid(v / scale)

    if name == "MCA":
        t = s(x - 22) * s(y + 75) * s(48 - y) * s(z + 25) * s(62 - z)
    elif name == "ACA":
        t = s(x + 2) * s(24 - x) * s(y + 55) * s(z - 5)
    else:  # PCA: occipital lobe and inferior temporal lobe
        t = s(x + 2) * np.maximum(s(-62 - y), s(-20 - y) * s(-2 - z))
    return t.astype(np.float32)


def stroke(anat: Anatomy, rng: np.random.Generator, p: dict, plan: dict | None = None) -> Lesions:
    """Ischaemic stroke: territorial (cortical wedge) and lacunar (deep) infarcts.

    p['stage'] 'chronic': CSF-like cavity with a gliotic rim (T1 dark); 'subacute': cytotoxic
    oedema (DWI bright, FLAIR/T2 bright, T1 dark). Label value p['label'] (1).
    """
    cv = _Canvas(anat, rng)
    chronic = p.get("stage", "chronic") == "chronic"
    n = 1 + min(rng.poisson(p.get("extra_lesions", 0.4)), 3)
    side = rng.choice([-1, 1])
    depth, vdist, gm = anat["depth"], anat["vdist"], anat["gm"]
    for i in range(n):
        if rng.random() < p.get("territorial_p", 0.55):
            name = rng.choice(_TERRITORIES, p=p.get("territory_p", (0.7, 0.1, 0.2)))
            terr = _territory(anat.tpl_mm, name, side)
            prob = terr * (gm > 0.4) * (depth < 10) * (depth > 2)
            pts = draw_points(prob, 1, rng)
            if not len(pts):
                continue
            r_t = _loguniform(rng, *p.get("territorial_mm", (7.0, 32.0)))
            r_r = r_t * rng.uniform(0.9, 1.6)
            direction = _centre_direction(anat, pts[0])
            rot = _radial_rotation(-direction, rng)   # first axis points inwards
            inward = -direction / max(np.linalg.norm(direction), 1e-6)
            centre = pts[0] + (0.35 * r_r * inward) / anat.grid.spacing
            blob = cv.blob(centre, (r_r, r_t, r_t * rng.uniform(0.7, 1.1)), rot, rough=0.3)
            limit = terr
        else:
            prob = (depth > 22) * (vdist > 2) * (vdist < 22) * (cv.par > 0.8)
            pts = draw_points(prob, 1, rng)
            if not len(pts):
                continue
            r = _loguniform(rng, *p.get("lacunar_mm", (2.5, 11.0)))
            blob = cv.blob(pts[0], r * np.exp(rng.normal(0, 0.2, 3)), rough=0.2, fine=True)
            limit = None
        if blob.empty:
            continue
        box = blob.box
        par, brain = cv.par[box], anat["brain"][box]
        lim = 1.0 if limit is None else limit[box]
        pv = blob.soft(1.0, rng.uniform(1.0, 3.0)) * lim
        lab = cv.label_mask(blob) & (lim > 0.5) & (brain > 0.5)
        if chronic:
            rc = rng.uniform(*p.get("cavity_level", (0.45, 0.85)))
            cav = blob.soft(rc, 1.5) * lim * brain
            cv.add("cavity", box, cav, (0.85, 1.0), hetero=0.05)
            cv.add("gliosis", box, np.clip(pv - cav, 0, 1) * par, p.get("rim_contrast", (0.3, 0.9)))
            # The cavity merges with sulci (labelled), never with the ventricles.
            lab = _largest(lab & (anat["vent"][box] < 0.5))
        else:
            cv.add("infarct", box, pv * par, p.get("contrast", (0.45, 1.0)), hetero=0.3)
            lab &= par > 0.3
            if rng.random() < p.get("haemorrhage_p", 0.1):
                cv.add("haemorrhage", box, blob.soft(0.4, 2.0) * par, (0.4, 0.9))
        cv.mark(box, lab, p.get("label", 1))
    if p.get("distractor_wmh", 0) > 0 and rng.random() < p["distractor_wmh"]:
        _wmh_lesions(cv, rng, grade=rng.uniform(0.5, 2.0), label=0)
    return cv.result(kind="stroke")


# --------------------------------------------------------------------------- multiple sclerosis

def ms(anat: Anatomy, rng: np.random.Generator, p: dict, plan: dict | None = None) -> Lesions:
    """MS: many small ovoids, periventricular (radial, 'Dawson's fingers'), juxtacortical,
    deep and infratentorial; some T1 'black holes', some enhancing on T1c."""
    cv = _Canvas(anat, rng)
    wm, gm, vdist, depth = anat["wm"], anat["gm"], anat["vdist"], anat["depth"]
    z_tpl = anat.tpl_mm[2]
    probs = {
        "periventricular": wm * (vdist > 1) * np.exp(-vdist / 5.0),
        "juxtacortical": wm * (gm > 0.15) * (gm < 0.55) * (depth > 3),
        "deep": wm * (wm > 0.8) * (vdist > 8) * (depth > 10),
        "infratentorial": wm * (z_tpl < -22) * (depth > 6),
    }
    share = p.get("location_p", {"periventricular": 0.45, "juxtacortical": 0.25, "deep": 0.2, "infratentorial": 0.1})
    n = int(np.clip(round(rng.lognormal(np.log(p.get("count_median", 14)), 0.7)), 2, 90))
    counts = rng.multinomial(n, np.array(list(share.values())) / sum(share.values()))
    # one draw per location kind: each draw scans the whole volume
    located = [(kind, pt) for kind, c in zip(share, counts) for pt in draw_points(probs[kind], int(c), rng)]
    for kind, pt in located:
        pts = [pt]
        r = float(np.clip(rng.lognormal(np.log(p.get("radius_mm", 2.6)), 0.45), 1.0, 9.0))
        if kind == "periventricular":
            rot = _radial_rotation(_centre_direction(anat, pts[0]), rng)
            radii = (r * rng.uniform(1.3, 2.0), r, r * rng.uniform(0.7, 1.0))
        else:
            rot, radii = None, r * np.exp(rng.normal(0, 0.2, 3))
        blob = cv.blob(pts[0], radii, rot, rough=0.2, fine=True)
        if blob.empty:
            continue
        box = blob.box
        par = cv.par[box]
        pv = blob.soft(1.0, rng.uniform(0.8, 2.0)) * par
        u = rng.random()
        key = "blackhole" if u < p.get("blackhole_p", 0.2) else "active" if u < p.get("blackhole_p", 0.2) + p.get("active_p", 0.1) else "ms"
        cv.add(key, box, pv, p.get("contrast", (0.35, 1.0)), hetero=0.2)
        cv.mark(box, cv.label_mask(blob) & (par > 0.3), 1)
    return cv.result(kind="ms")


# --------------------------------------------------------------------------- WMH

def _wmh_lesions(cv: _Canvas, rng: np.random.Generator, grade: float, label: int, punctate_mm: float = 2.3) -> None:
    """Periventricular caps and bands plus deep punctate/confluent lesions of a Fazekas-like grade."""
    anat = cv.anat
    wm, vdist, depth = anat["wm"], anat["vdist"], anat["depth"]
    y_rel = anat.tpl_mm[1] + 18.0
    horns = 0.45 + 0.55 * sigmoid((np.abs(y_rel) - 18.0) / 4.0)   # caps at the frontal and occipital horns
    reach = (1.0 + 3.2 * grade) * horns * np.exp(0.35 * cv.rough)
    edge = 1.5
    pv = sigmoid((reach - vdist) * 4.4 / edge) * (vdist > 0.6) * wm
    full = (slice(None),) * 3
    cv.add("wmh", full, pv, (0.45, 1.0), hetero=0.35)
    t = rng.uniform(0.35, 0.6)
    if label:
        reach_l = reach * (1 + 0.12 * cv.fine)
        cv.mark(full, (sigmoid((reach_l - vdist) * 4.4 / edge) * (vdist > 0.6) * wm > t), label)
    n = rng.poisson(2 + 9 * grade)
    prob = wm * (wm > 0.6) * (vdist > 6) * (depth > 7)
    for pt in draw_points(prob, n, rng):
        big = grade > 1.6 and rng.random() < 0.25
        r = _loguniform(rng, 4.0, 11.0) if big else float(np.clip(rng.lognormal(np.log(punctate_mm), 0.4), 1.0, 5.0))
        blob = cv.blob(pt, r * np.exp(rng.normal(0, 0.2, 3)), rough=0.35 if big else 0.15, fine=not big)
        if blob.empty:
            continue
        par = cv.par[blob.box]
        cv.add("wmh", blob.box, blob.soft(1.0, 1.5) * par, (0.35, 1.0), hetero=0.3)
        if label:
            cv.mark(blob.box, cv.label_mask(blob) & (par > 0.3), label)


def wmh(anat: Anatomy, rng: np.random.Generator, p: dict, plan: dict | None = None) -> Lesions:
    """White matter hyperintensities; some cases carry an old infarct labelled 'other pathology'."""
    cv = _Canvas(anat, rng)
    grade = rng.uniform(*p.get("grade", (0.2, 3.0)))
    _wmh_lesions(cv, rng, grade, label=1, punctate_mm=p.get("punctate_mm", 2.3))
    if rng.random() < p.get("other_p", 0.3):
        other = stroke(anat, rng, {"stage": "chronic", "territorial_p": 0.3, "extra_lesions": 0.0,
                                   "territorial_mm": (6.0, 16.0), "label": p.get("other_label", 2)})
        cv.parts += other.parts
        cv.mark((slice(None),) * 3, other.label > 0, p.get("other_label", 2), over=(0, 1))
    return cv.result(kind="wmh", grade=grade)


# --------------------------------------------------------------------------- TBI

def tbi(anat: Anatomy, rng: np.random.Generator, p: dict, plan: dict | None = None) -> Lesions:
    """TBI: frontal/temporal contusions (haemorrhagic core dark on SWI, FLAIR-bright oedema),
    microbleeds, diffuse axonal injury, subdural haematoma and chronic encephalomalacia."""
    cv = _Canvas(anat, rng)
    gm, wm, depth, vdist = anat["gm"], anat["wm"], anat["depth"], anat["vdist"]
    x, y, z = anat.tpl_mm
    polar = (sigmoid((y - 18) / 5) * sigmoid((22 - z) / 5)
             + sigmoid((np.abs(x) - 30) / 5) * sigmoid((y + 32) / 5) * sigmoid((18 - y) / 5) * sigmoid(-z / 5))
    cortex = gm * (gm > 0.35) * (depth < 9)
    if rng.random() < p.get("contusion_p", 0.85):
        for pt in draw_points(cortex * polar, 1 + min(rng.poisson(p.get("extra_contusions", 1.2)), 4), rng):
            r = _loguniform(rng, *p.get("contusion_mm", (4.0, 20.0)))
            rot = _radial_rotation(_centre_direction(anat, pt), rng)
            blob = cv.blob(pt, (r * rng.uniform(0.6, 1.0), r, r * rng.uniform(0.7, 1.2)), rot, rough=0.35)
            if blob.empty:
                continue
            box, par = blob.box, cv.par[blob.box]
            pv = blob.soft(1.0, rng.uniform(1.5, 4.0)) * par
            core = blob.soft(rng.uniform(0.2, 0.65), 1.5) * par
            cv.add("haemorrhage", box, core, (0.4, 1.0), hetero=0.4)
            cv.add("oedema", box, np.clip(pv - core, 0, 1), (0.3, 0.9), hetero=0.3)
            cv.mark(box, cv.label_mask(blob, wobble=0.1) & (par > 0.3), 1)
    junction = (gm > 0.2) * (wm > 0.4) + 2.0 * wm * (np.abs(x) < 12) * (vdist < 6) * (vdist > 1)
    for pt in draw_points(junction, rng.poisson(p.get("microbleeds", 4.0)), rng):
        blob = cv.blob(pt, np.full(3, rng.uniform(1.0, 2.2)), rough=0.0)
        if blob.empty:
            continue
        cv.add("microbleed", blob.box, blob.soft(1.0, 1.0), (0.6, 1.0), hetero=0.0)
        cv.mark(blob.box, blob.soft(1.0, 1.0) > 0.4, 1)
    for pt in draw_points(wm * (wm > 0.7), rng.poisson(p.get("dai", 1.5)), rng):
        blob = cv.blob(pt, np.full(3, rng.uniform(1.5, 4.5)) * np.exp(rng.normal(0, 0.2, 3)), rough=0.2, fine=True)
        if not blob.empty:
            cv.add("gliosis", blob.box, blob.soft(1.0, 1.5) * cv.par[blob.box], (0.3, 0.9))
            cv.mark(blob.box, cv.label_mask(blob) & (cv.par[blob.box] > 0.3), 1)
    if rng.random() < p.get("subdural_p", 0.2):
        pts = draw_points((depth > 1) * (depth < 4) * (z > 10) * anat["brain"], 1, rng)
        if len(pts):
            r = rng.uniform(30, 55)
            blob = cv.blob(pts[0], (r, r, r * 0.8), rough=0.2)
            thick = rng.uniform(3.0, 9.0) * (1 - blob.q.clip(0, 1)) ** 0.5
            shell = sigmoid((thick - depth[blob.box]) * 4.4 / 1.5) * blob.soft(1.0, 4.0) * anat["brain"][blob.box]
            cv.add("haematoma", blob.box, shell, (0.5, 1.0), hetero=0.3)
            cv.mark(blob.box, shell > 0.5, 1)
    if rng.random() < p.get("chronic_p", 0.3):
        pts = draw_points(cortex * polar, 1, rng)
        if len(pts):
            blob = cv.blob(pts[0], np.full(3, _loguniform(rng, 6.0, 18.0)), rough=0.35)
            if not blob.empty:
                box, par, brain = blob.box, cv.par[blob.box], anat["brain"][blob.box]
                cav = blob.soft(rng.uniform(0.4, 0.8), 1.5) * brain
                cv.add("cavity", box, cav, (0.8, 1.0), hetero=0.05)
                cv.add("gliosis", box, np.clip(blob.soft(1.0, 2.0) - cav, 0, 1) * par, (0.4, 0.9))
                cv.mark(box, cv.label_mask(blob) & (brain > 0.5), 1)
    return cv.result(kind="tbi")


#: Lesion models by the name a manifest's `synth.lesions.model` gives.
MODELS = {"glioma": glioma, "stroke": stroke, "ms": ms, "wmh": wmh, "tbi": tbi}
#: Models that need a plan before the anatomy (their mass effect deforms it).
PLANS = {"glioma": glioma_plan}
