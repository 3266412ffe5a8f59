"""How each twin's lesions look on each modality, beside the sign real MRI gives them.

Images are z-scored inside the brain as preprocessing does (mmlib.data.preprocess.prepare_case),
on the twin's own grid. A lesion's contrast-to-noise ratio (CNR) is its mean z minus a reference,
in units of the standard deviation of normal-appearing brain (brain voxels outside every label):
- `cnr_brain`: against the mean of normal-appearing brain;
- `cnr_tissue`: against the tissue each lesion voxel replaced (the mixture of CSF, GM and WM it
  held in the healthy anatomy, each tissue's z fitted on normal-appearing brain), the reference
  of the literature's 'hyper-, iso-, hypointense';
- `cnr_gm`: the same for the lesion voxels that replaced mostly grey matter (juxtacortical and
  cortical lesions).

The expected signs (LITERATURE) are standard neuroradiology, from:
- [Allen 2012] Allen LM, Hasso AN, Handwerker J, Farid H. Sequence-specific MR imaging findings
  that are useful in dating ischemic stroke. RadioGraphics 2012;32:1285-1297.
- [Rovira 2015] Rovira A, Wattjes MP, Tintore M, et al. Evidence-based guidelines: MAGNIMS
  consensus guidelines on the use of MRI in multiple sclerosis - clinical implementation in the
  diagnostic process. Nat Rev Neurol 2015;11:471-482.
- [Sahraian 2010] Sahraian MA, Radue EW, Haller S, Kappos L. Black holes in multiple sclerosis:
  definition, evolution, and clinical correlations. Acta Neurol Scand 2010;122:1-8.
- [Wardlaw 2013] Wardlaw JM, Smith EE, Biessels GJ, et al. Neuroimaging standards for research
  into small vessel disease (STRIVE). Lancet Neurol 2013;12:822-838.
- [Menze 2015] Menze BH, Jakab A, Bauer S, et al. The multimodal brain tumor image segmentation
  benchmark (BRATS). IEEE Trans Med Imaging 2015;34:1993-2024.
- [Greenberg 2009] Greenberg SM, Vernooij MW, Cordonnier C, et al. Cerebral microbleeds: a guide
  to detection and interpretation. Lancet Neurol 2009;8:165-174.
- [Haacke 2010] Haacke EM, Duhaime AC, Gean AD, et al. Common data elements in radiologic imaging
  of traumatic brain injury. J Magn Reson Imaging 2010;32:516-543.
- [Bradley 1993] Bradley WG Jr. MR appearance of hemorrhage in the brain. Radiology
  1993;189:15-26 (sub-acute methaemoglobin T1-bright; deoxyhaemoglobin and haemosiderin T2-dark).
- [Osborn 2018] Osborn AG, Hedlund GL, Salzman KL. Osborn's Brain: Imaging, Pathology, and
  Anatomy, 2nd ed. Elsevier, 2018 (textbook: glioma T1-iso to hypointense, T2/FLAIR-hyperintense).
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import numpy as np
import pandas as pd

from mmlib.data.manifest import ALL_DATABASES, load_manifest, manifest_dir
from mmlib.data.synth.twins import TwinCase, generate_case, site_scanners, synth_case_counts
from mmlib.presets import load_preset

#: A lesion counts as iso-intense within this many normal-appearing-brain SDs of its tissue.
ISO_CNR = 0.1
#: Lesion voxels that replaced grey matter needed for `cnr_gm` (else NaN).
MIN_GM_VOXELS = 5


class Expected(NamedTuple):
    """The sign real MRI gives a lesion on one modality: 'hyper', 'hypo', 'iso-hypo' or 'mixed'."""

    sign: str
    fact: str
    source: str


#: (database, region, modality) -> the literature's sign. Region 'lesion' is the merged label;
#: another region names label values of the release (REGIONS).
LITERATURE: dict[tuple[str, str, str], Expected] = {
    ("BRATS", "lesion", "FLAIR"): Expected("hyper", "oedema and tumour FLAIR-hyperintense", "Menze 2015"),
    ("BRATS", "lesion", "T2"): Expected("hyper", "oedema and tumour T2-hyperintense", "Menze 2015"),
    ("BRATS", "lesion", "T1"): Expected("hypo", "glioma T1-hypointense", "Osborn 2018"),
    ("BRATS", "lesion", "T1c"): Expected("mixed", "enhancing rim bright, necrosis and oedema dark", "Menze 2015"),
    ("BRATS", "enhancing", "T1c"): Expected("hyper", "enhancing tumour bright after gadolinium", "Menze 2015"),
    ("TUMOR2", "lesion", "T1"): Expected("hypo", "glioma T1-hypointense", "Osborn 2018"),
    ("ATLAS", "lesion", "T1"): Expected("hypo", "chronic infarct: CSF-like cavity and gliosis, T1-hypointense",
                                        "Allen 2012"),
    ("ISLES", "lesion", "T1"): Expected("hypo", "sub-acute infarct T1-hypointense", "Allen 2012"),
    ("ISLES", "lesion", "T2"): Expected("hyper", "sub-acute infarct T2-hyperintense", "Allen 2012"),
    ("ISLES", "lesion", "FLAIR"): Expected("hyper", "sub-acute infarct FLAIR-hyperintense", "Allen 2012"),
    ("ISLES", "lesion", "DWI"): Expected("hyper", "restricted diffusion, DWI-hyperintense", "Allen 2012"),
    ("MSSEG", "lesion", "FLAIR"): Expected("hyper", "MS lesions FLAIR-hyperintense", "Rovira 2015"),
    ("MSSEG", "lesion", "T2"): Expected("hyper", "MS lesions T2-hyperintense", "Rovira 2015"),
    ("MSSEG", "lesion", "PD"): Expected("hyper", "MS lesions PD-hyperintense (PD/T2 dual echo)", "Rovira 2015"),
    ("MSSEG", "lesion", "T1"): Expected("iso-hypo", "iso- to hypointense on T1, 'black holes' dark", "Sahraian 2010"),
    ("MSSEG", "lesion", "T1c"): Expected("mixed", "iso, active lesions enhancing", "Rovira 2015"),
    ("WMH", "lesion", "FLAIR"): Expected("hyper", "WMH FLAIR-hyperintense", "Wardlaw 2013"),
    ("WMH", "lesion", "T1"): Expected("iso-hypo", "WMH iso- or hypointense on T1", "Wardlaw 2013"),
    ("TBI", "lesion", "FLAIR"): Expected("hyper", "contusion oedema and gliosis FLAIR-hyperintense", "Haacke 2010"),
    ("TBI", "lesion", "T2"): Expected("hyper", "contusion oedema T2-hyperintense", "Haacke 2010"),
    ("TBI", "lesion", "T1"): Expected("mixed", "sub-acute blood T1-bright, oedema and gliosis dark", "Bradley 1993"),
    ("TBI", "lesion", "SWI"): Expected("hypo", "haemorrhage and microbleeds SWI-hypointense",
                                      "Haacke 2010, Greenberg 2009"),
}
#: Regions other than the merged lesion: the release's label values they cover.
REGIONS: dict[tuple[str, str], tuple[int, ...]] = {("BRATS", "enhancing"): (3,)}


def case_contrast(case: TwinCase, values: Iterable[int]) -> dict[str, dict[str, float]]:
    """CNRs of the voxels labelled `values` in one case, per modality (module docstring).

    The tissue a lesion voxel replaced is its healthy mixture of CSF, GM and WM (case.tissue);
    its expected z is that mixture of the pure tissues' z, fitted on normal-appearing brain.
    Returns {modality: {'cnr_brain', 'cnr_tissue', 'cnr_gm', 'voxels'}}; NaN where undefined.
    """
    brain = case.brain
    lesion = np.isin(case.label, list(values)) & brain
    normal = (case.label == 0) & brain
    shares_normal = case.tissue[:, normal].T
    shares = case.tissue[:, lesion].T
    in_gm = shares.argmax(1) == 1 if len(shares) else np.zeros(0, bool)
    out = {}
    for mod, img in case.images.items():
        inside = img[brain].astype(np.float64)
        z = (img - inside.mean()) / max(inside.std(), 1e-8)
        nab, les = z[normal], z[lesion]
        sd = max(float(nab.std()), 1e-8)
        pure = np.linalg.lstsq(shares_normal, nab, rcond=None)[0]   # z of pure CSF, GM, WM
        diff = les - shares @ pure
        empty = les.size == 0
        out[mod] = dict(
            cnr_brain=np.nan if empty else float((les.mean() - nab.mean()) / sd),
            cnr_tissue=np.nan if empty else float(diff.mean() / sd),
            cnr_gm=float(diff[in_gm].mean() / sd) if in_gm.sum() >= MIN_GM_VOXELS else np.nan,
            voxels=int(les.size))
    return out


def sign_holds(sign: str, cnr_tissue: float, cnr_gm: float) -> bool | None:
    """Whether measured CNRs agree with the literature's sign (None: 'mixed', nothing to hold).

    A lesion keeps its sign in any tissue: against the tissue it replaced and, where it replaced
    grey matter (cnr_gm not NaN), against grey matter. hyper/hypo: brighter/darker; iso-hypo: not
    brighter by more than ISO_CNR (juxtacortical MS lesions and WMH are not T1-bright).
    """
    values = [cnr_tissue] + ([cnr_gm] if np.isfinite(cnr_gm) else [])
    if sign == "hyper":
        return bool(all(v > 0 for v in values))
    if sign == "hypo":
        return bool(all(v < 0 for v in values))
    if sign == "iso-hypo":
        return bool(all(v <= ISO_CNR for v in values))
    return None


def twin_contrast(preset="quick", seed: int = 0, databases: Iterable[str] | None = None,
                  max_cases: int | None = 8, voxel_mm: float | None = None) -> pd.DataFrame:
    """Generate each twin's first cases in memory and measure their lesion contrast.

    One row per database x region x modality: the CNRs averaged over cases, the cases and lesion
    voxels measured. voxel_mm: the grid (default the preset's synth.voxel_mm).
    """
    p = load_preset(preset)
    voxel = float(voxel_mm or p.synth["voxel_mm"])
    names = list(databases or ALL_DATABASES)
    counts = synth_case_counts(p, names)
    rows = []
    for name in names:
        m = load_manifest(manifest_dir() / f"{name}.yaml")
        n = counts[name]
        scanners = site_scanners(m, seed)
        regions = {"lesion": m.lesion_values, **{r: v for (db, r), v in REGIONS.items() if db == name}}
        per_case = []
        for i in range(n if max_cases is None else min(n, max_cases)):
            case = generate_case(m, voxel, seed, i, n, scanners)
            per_case.append({r: case_contrast(case, v) for r, v in regions.items()})
        for region in regions:
            for mod in m.modalities:
                cases = [c[region][mod] for c in per_case if c[region][mod]["voxels"]]
                row = dict(database=name, region=region, modality=mod, cases=len(cases),
                           voxels=sum(c["voxels"] for c in cases))
                for key in ("cnr_brain", "cnr_tissue", "cnr_gm"):
                    vals = [c[key] for c in cases if np.isfinite(c[key])]
                    row[key] = float(np.mean(vals)) if vals else np.nan
                rows.append(row)
    return pd.DataFrame(rows)


def literature_table(measured: pd.DataFrame) -> pd.DataFrame:
    """`measured` (twin_contrast's rows) beside the literature's sign, its source and whether they agree.

    Rows the literature names and regions it does not (the merged lesion on every modality) both
    stay; those without an expected sign get '' and agree None.
    """
    out = measured.copy()
    exp = [LITERATURE.get((r.database, r.region, r.modality)) for r in out.itertuples()]
    out["literature"] = [e.sign if e else "" for e in exp]
    out["fact"] = [e.fact if e else "" for e in exp]
    out["source"] = [e.source if e else "" for e in exp]
    out["agrees"] = [sign_holds(e.sign, r.cnr_tissue, r.cnr_gm) if e else None
                     for e, r in zip(exp, out.itertuples())]
    return out


def twin_contrast_table(preset="quick", seed: int = 0, max_cases: int | None = 4) -> pd.DataFrame:
    """Every twin's lesion contrast beside the literature (notebook 00): twin_contrast + literature_table,
    the measured CNRs next to the expected sign."""
    table = literature_table(twin_contrast(preset, seed, max_cases=max_cases)).round(2)
    return table[["database", "region", "modality", "cnr_brain", "cnr_tissue", "cnr_gm", "literature", "agrees",
                  "fact", "source", "cases", "voxels"]]
