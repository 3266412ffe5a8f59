"""MRI contrast of the twins: tissue and lesion compartments -> one image per modality.

Intensities are on a canonical scale (WM on T1 ~ 0.9). Each database's scanner (its manifest's
`synth.scanner`, `synth.contrast`) then changes contrast (a gamma), gain, bias field, Rician
noise and slice thickness. A lesion is a set of compartments, each a weight map in [0, 1] that
replaces the normal tissue in that share (weight = partial volume x conspicuity): altered tissue
(LESION) scales the parenchyma it replaces by a factor per modality; a compartment with a signal of
its own (a tumour core, fluid, a clot: OWN_SIGNAL) replaces the voxel by that signal.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mmlib.data.synth.anatomy import Anatomy
from mmlib.data.synth.fields import sigmoid, smooth_noise

# Normal tissue per modality. 'blood' is venous blood (veins): dark on SWI, bright after gadolinium.
TISSUE: dict[str, dict[str, float]] = {
    "T1":    dict(csf=0.25, gm=0.62, wm=0.90, skull=0.12, scalp=1.05, blood=0.55),
    "T1c":   dict(csf=0.27, gm=0.65, wm=0.90, skull=0.12, scalp=1.05, blood=1.20),
    "T2":    dict(csf=1.30, gm=0.62, wm=0.48, skull=0.10, scalp=0.75, blood=0.35),
    "FLAIR": dict(csf=0.15, gm=0.68, wm=0.52, skull=0.08, scalp=0.80, blood=0.45),
    "PD":    dict(csf=0.95, gm=0.80, wm=0.66, skull=0.10, scalp=0.85, blood=0.55),
    "DWI":   dict(csf=0.18, gm=0.58, wm=0.50, skull=0.03, scalp=0.10, blood=0.30),
    "SWI":   dict(csf=0.85, gm=0.62, wm=0.74, skull=0.10, scalp=0.70, blood=0.10),
}
# How the template's residual T1 texture (deep grey nuclei darker than WM on T1) shows on
# each contrast, in units of the T1 WM-CSF difference: inverted on T2-like contrasts.
TEXTURE: dict[str, float] = {"T1": 0.65, "T1c": 0.65, "T2": -0.45, "FLAIR": -0.35, "PD": -0.25,
                             "DWI": 0.10, "SWI": -0.40}
# Lesion compartments of altered tissue (oedema, demyelination, gliosis, infarct, blood in tissue):
# a factor per modality on the tissue each one replaces, so a lesion keeps its sign whether it
# lies in grey or white matter (a juxtacortical MS lesion is not T1-bright against the cortex).
# Signs follow standard neuroradiology (sources in synth/lesion_contrast.py): oedema, infarct,
# gliosis, MS and WMH T1-dark and T2/FLAIR/PD-bright (sub-acute infarct and chronic gliosis below
# grey matter on T1 even in white matter: factor < GM/WM = 0.69); infarct DWI-bright (restricted
# diffusion); MS 'black holes' markedly T1-dark; sub-acute blood T1-bright, T2- and SWI-dark;
# microbleeds invisible on T1, blooming dark on SWI; enhancement only on T1c.
LESION: dict[str, dict[str, float]] = {
    "oedema":      dict(T1=0.70, T1c=0.70, T2=2.00, FLAIR=1.70, PD=1.35, DWI=1.15, SWI=0.95),
    "gliosis":     dict(T1=0.65, T1c=0.65, T2=1.75, FLAIR=1.70, PD=1.30, DWI=0.90, SWI=0.97),
    "infarct":     dict(T1=0.50, T1c=0.52, T2=1.85, FLAIR=1.70, PD=1.30, DWI=2.40, SWI=0.95),
    "ms":          dict(T1=0.85, T1c=0.85, T2=1.90, FLAIR=1.75, PD=1.35, DWI=1.10, SWI=0.97),
    "blackhole":   dict(T1=0.45, T1c=0.45, T2=2.20, FLAIR=1.55, PD=1.40, DWI=0.90, SWI=0.97),
    "active":      dict(T1=0.80, T1c=1.35, T2=2.00, FLAIR=1.80, PD=1.40, DWI=1.40, SWI=0.97),
    "wmh":         dict(T1=0.88, T1c=0.88, T2=1.75, FLAIR=1.70, PD=1.30, DWI=1.10, SWI=0.97),
    "haemorrhage": dict(T1=1.40, T1c=1.40, T2=0.70, FLAIR=1.05, PD=0.90, DWI=0.60, SWI=0.15),
    "microbleed":  dict(T1=1.00, T1c=1.00, T2=0.60, FLAIR=0.80, PD=0.80, DWI=0.80, SWI=0.12),
}
# Compartments of a substance of their own replace the tissue with their own signal (canonical
# scale): a tumour's solid and enhancing core (it fills what was parenchyma or sulcal CSF; T1-dark
# against grey matter too, bright after gadolinium), its necrotic fluid, the CSF-filled cavity of
# an old infarct or contusion, a subdural clot.
OWN_SIGNAL: dict[str, dict[str, float]] = {
    "enhancing":   dict(T1=0.55, T1c=1.35, T2=0.80, FLAIR=0.85, PD=0.85, DWI=0.75, SWI=0.55),
    "solid":       dict(T1=0.52, T1c=0.60, T2=0.90, FLAIR=0.90, PD=0.88, DWI=0.75, SWI=0.65),
    "necrosis":    dict(T1=0.30, T1c=0.33, T2=1.20, FLAIR=0.45, PD=0.92, DWI=0.25, SWI=0.80),
    "cavity":      dict(T1=0.28, T1c=0.28, T2=1.25, FLAIR=0.20, PD=0.93, DWI=0.18, SWI=0.85),
    "haematoma":   dict(T1=1.00, T1c=1.00, T2=0.70, FLAIR=0.95, PD=0.85, DWI=0.50, SWI=0.25),
}
# The thin bright periventricular lining seen on FLAIR/T2 in healthy brains (not a lesion).
_RIM = {"FLAIR": 0.18, "T2": 0.08, "PD": 0.06}


def vessel_map(anat: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Cortical and sulcal veins as thin tubes: where two smooth random fields are both ~0."""
    g = anat.grid
    a = smooth_noise(g.shape, g.spacing, 14.0, rng)
    b = smooth_noise(g.shape, g.spacing, 14.0, rng)
    tube = np.exp(-(a * a + b * b) / (2 * 0.10 ** 2))
    near_surface = np.clip(1 - anat["depth"] / 14.0, 0, 1)
    return (tube * np.clip(anat["csf"] + anat["gm"], 0, 1) * near_surface * anat["brain"]).astype(np.float32)


def susceptibility_artefact(anat: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """EPI pile-up: bright patches above the sinuses and petrous bones (frontal base, temporal
    lobes), the classic mimic of restricted diffusion on DWI."""
    g = anat.grid
    x, y, z = anat.tpl_mm
    region = (sigmoid((y - 15) / 6) * sigmoid((5 - z) / 6)
              + sigmoid((np.abs(x) - 32) / 6) * sigmoid((-8 - z) / 6) * sigmoid((10 - y) / 8))
    patches = np.clip(smooth_noise(g.shape, g.spacing, 9.0, rng) - 0.5, 0, None)
    return (patches * region * anat["brain"]).astype(np.float32)


def normal_tissue(anat: Anatomy, modality: str, tissue: dict[str, float], vessels: np.ndarray | None) -> np.ndarray:
    """Healthy image of one modality from the tissue maps (canonical scale)."""
    m = anat.maps
    img = (m["gm"] * tissue["gm"] + m["wm"] * tissue["wm"] + m["csf"] * tissue["csf"]
           + m["skull"] * tissue["skull"] + m["scalp"] * tissue["scalp"])
    img = img + m["texture"] * TEXTURE[modality]
    if modality in _RIM:
        rim = np.exp(-((m["vdist"] - 1.5) / 1.3) ** 2) * m["wm"]
        img = img + _RIM[modality] * rim
    if vessels is not None:
        img = img * (1 - vessels) + vessels * tissue["blood"]
    return img.astype(np.float32)


def parenchyma(anat: Anatomy, modality: str, tissue: dict[str, float]) -> np.ndarray:
    """The parenchyma's own value in each voxel: GM and WM in their local proportion, with the
    template's texture, without the CSF that shares the voxel (what altered tissue replaces)."""
    m = anat.maps
    par = m["gm"] + m["wm"]
    gm_share = np.where(par > 1e-3, m["gm"] / np.maximum(par, 1e-3), 0.0)
    value = gm_share * tissue["gm"] + (1 - gm_share) * tissue["wm"] + m["texture"] * TEXTURE[modality]
    return np.maximum(value, 0).astype(np.float32)


def add_lesions(img: np.ndarray, parts, modality: str, factors: dict, own: dict,
                par_img: np.ndarray) -> np.ndarray:
    """Replace tissue by lesion compartments (weights w_k, overlaps sharing the voxel):
    img + sum_k w_k*(a_k - r_k). Altered tissue (LESION): a_k - r_k = (factors[k] - 1)*par_img, the
    parenchyma's share changed by its factor; a signal of its own (OWN_SIGNAL): own[k] - img."""
    if not parts:
        return img
    total = np.zeros(img.shape, np.float32)
    delta = np.zeros(img.shape, np.float32)
    for key, box, weight in parts:
        total[box] += weight
        if key in own:
            delta[box] += weight * (own[key][modality] - img[box])
        else:
            delta[box] += weight * (factors[key][modality] - 1) * par_img[box]
    over = np.maximum(total, 1.0)   # overlapping compartments share the voxel
    return img + delta / over


def scanner_effects(img: np.ndarray, anat: Anatomy, sc: dict, rng: np.random.Generator,
                    thick_axis: int | None, thick_ratio: float) -> np.ndarray:
    """Contrast gamma, bias field, slice profile and Rician noise of one acquisition."""
    g = anat.grid
    img = np.maximum(img, 0) ** sc.get("gamma", 1.0)
    bias = sc.get("bias", 0.2)
    if bias > 0:
        img = img * np.exp(bias * smooth_noise(g.shape, g.spacing, sc.get("bias_scale_mm", 90.0), rng))
    blur = sc.get("blur_mm", 0.0)
    if blur > 0:   # an acquisition coarser than the grid (e.g. EPI diffusion)
        img = ndimage.gaussian_filter(img, blur / g.spacing)
    if thick_axis is not None and thick_ratio > 1.05:
        # A thick slice averages what lies across it.
        img = ndimage.gaussian_filter1d(img, 0.45 * (thick_ratio - 1.0) + 0.3, axis=thick_axis)
    sigma = sc.get("noise", 0.03)
    if sigma > 0:
        n1 = rng.standard_normal(img.shape, np.float32)
        n2 = rng.standard_normal(img.shape, np.float32)
        img = np.sqrt((img + sigma * n1) ** 2 + (sigma * n2) ** 2)
    return img.astype(np.float32)
