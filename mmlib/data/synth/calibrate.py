"""How hard is a twin? The best single-intensity-threshold Dice, a floor a trained model must beat.

For each modality and direction (lesion brighter / darker), one threshold on brain-z-scored
intensities is chosen to maximise the mean Dice over cases. A twin on which this floor is high
is too easy; the paper's models reach Table 3's Dice, so the floor should sit well below.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from mmlib.data.cases import IGNORE
from mmlib.data.manifest import ALL_DATABASES, load_manifest, manifest_dir
from mmlib.data.synth.twins import generate_case, site_scanners, synth_case_counts
from mmlib.presets import load_preset

#: z-score thresholds tried (brain-normalised intensities).
THRESHOLDS = np.linspace(-5.0, 8.0, 261)


def _case_curves(z: np.ndarray, lesion: np.ndarray, other: np.ndarray, n_lesion: int) -> tuple[np.ndarray, np.ndarray]:
    """Dice of 'z > t' and 'z < t' at every threshold t, via cumulative histograms."""
    edges = np.concatenate([[-np.inf], THRESHOLDS, [np.inf]])
    h_les = np.histogram(z[lesion], edges)[0]
    h_oth = np.histogram(z[other], edges)[0]
    below_les = np.cumsum(h_les)[:-1]      # voxels with z < t_i
    below_oth = np.cumsum(h_oth)[:-1]
    above_les, above_oth = lesion.sum() - below_les, other.sum() - below_oth
    # n_lesion also counts lesion voxels outside the brain: always missed.
    up = 2 * above_les / np.maximum(above_les + above_oth + n_lesion, 1)
    down = 2 * below_les / np.maximum(below_les + below_oth + n_lesion, 1)
    return up, down


def best_threshold_dice(images: Sequence[dict[str, np.ndarray]], labels: Sequence[np.ndarray],
                        brains: Sequence[np.ndarray] | None = None) -> dict:
    """Best single-threshold Dice per modality and direction, and overall.

    images: per case {modality: 3D array}; labels: per case 3D array, 1 lesion, 0 background,
    IGNORE (255) left out; brains: per case bool 3D (default: voxels non-zero in every modality).
    Returns {'per_modality': {(mod, 'above'|'below'): (dice, threshold)}, 'best': (mod, dir, dice, t)}.
    """
    mods = list(images[0])
    sums = {(m, d): np.zeros(len(THRESHOLDS)) for m in mods for d in ("above", "below")}
    n = 0
    for i, case in enumerate(images):
        lab = np.asarray(labels[i])
        brain = (np.asarray(brains[i], bool) if brains is not None
                 else np.all([case[m] != 0 for m in mods], axis=0))
        n_lesion = int((lab == 1).sum())
        if n_lesion == 0:
            continue
        n += 1
        lesion = (lab == 1)[brain]
        other = (lab == 0)[brain]
        for m in mods:
            v = np.asarray(case[m], np.float64)[brain]
            z = (v - v.mean()) / max(v.std(), 1e-8)
            up, down = _case_curves(z, lesion, other, n_lesion)
            sums[(m, "above")] += up
            sums[(m, "below")] += down
    per = {}
    for key, s in sums.items():
        mean = s / max(n, 1)
        j = int(np.argmax(mean))
        per[key] = (float(mean[j]), float(THRESHOLDS[j]))
    (m, d), (dice, t) = max(per.items(), key=lambda kv: kv[1][0])
    return {"per_modality": per, "best": (m, d, dice, t), "cases": n}


def twin_threshold_baseline(preset="quick", seed: int = 0, databases: Iterable[str] | None = None,
                            max_cases: int | None = None) -> dict[str, dict]:
    """Generate each twin in memory (nothing written) and measure its threshold floor."""
    p = load_preset(preset)
    names = list(databases or ALL_DATABASES)
    counts = synth_case_counts(p, names)
    out = {}
    for name in names:
        m = load_manifest(manifest_dir() / f"{name}.yaml")
        n = counts[name]
        scanners = site_scanners(m, seed)
        images, labels, brains = [], [], []
        for i in range(n if max_cases is None else min(n, max_cases)):
            case = generate_case(m, float(p.synth["voxel_mm"]), seed, i, n, scanners)
            lab = np.zeros(case.label.shape, np.uint8)
            lab[np.isin(case.label, m.lesion_values)] = 1
            lab[np.isin(case.label, m.ignore_values)] = IGNORE
            images.append(case.images)
            labels.append(lab)
            brains.append(case.brain)
        out[name] = best_threshold_dice(images, labels, brains)
    return out


if __name__ == "__main__":   # python -m mmlib.data.synth.calibrate [preset] [max_cases]
    import sys

    res = twin_threshold_baseline(sys.argv[1] if len(sys.argv) > 1 else "quick",
                                  max_cases=int(sys.argv[2]) if len(sys.argv) > 2 else None,
                                  databases=sys.argv[3].split(",") if len(sys.argv) > 3 else None)
    for name, r in res.items():
        mod, d, dice, t = r["best"]
        detail = ", ".join(f"{k[0]}{'+' if k[1] == 'above' else '-'} {v[0]:.2f}" for k, v in r["per_modality"].items())
        print(f"{name:7s} best {mod} {d} z={t:+.2f}: Dice {dice:.3f}   [{detail}]")
