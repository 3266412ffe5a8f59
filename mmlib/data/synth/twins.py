"""Synthetic twins of the paper's seven databases, written in their real releases' layouts.

`make_twins(out, preset, seed)` writes out/<NAME>/ for each database: the same pathology and
modality set as the real one, case counts in the paper's proportions (preset synth.case_scale
x the paper's count, clamped to [min_cases, max_cases]) and the file layout its manifest
describes. Every database's scanner, grid, orientation and lesion model parameters are data:
the `synth:` section of its manifest. Same seed -> byte-identical files.

A twin's folder carries a marker written before its first file ("writing") and rewritten after
its last ("complete"), so a run killed half-way is recognised and resumed (or restarted when the
settings differ); folders without the marker are never touched.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import nibabel as nib
import numpy as np

from mmlib.atomic_files import atomic_write_json, clean_stale_temps, is_temp_file, read_json
from mmlib.data.manifest import ALL_DATABASES, DatabaseManifest, load_manifest, manifest_dir
from mmlib.data.synth.anatomy import Grid, load_template, make_grid, sample_anatomy, sample_geometry
from mmlib.data.synth.contrast import (LESION, OWN_SIGNAL, TISSUE, add_lesions, normal_tissue,
                                      parenchyma, scanner_effects, susceptibility_artefact, vessel_map)
from mmlib.data.synth.fields import smooth_noise
from mmlib.data.synth.io import write_json, write_nifti
from mmlib.data.synth.pathology import MODELS, PLANS
from mmlib.errors import MMLibError
from mmlib.out_folder import OutLock, prepare_out_dir
from mmlib.presets import Preset, load_preset


@dataclass
class TwinCase:
    """One generated case before writing: RAS arrays on `grid`.

    images: canonical modality -> float32 (scanner units); label: uint8 in the release's values;
    brain: bool, the brain as preprocessing should find it (stripping mask or template brain);
    wm: bool, nearly pure white matter (a reference tissue for contrast checks);
    tissue: float32 (3, X, Y, Z), the shares of CSF, GM and WM each brain voxel held before any
    lesion (0 outside the brain): what a lesion voxel replaced.
    """

    images: dict[str, np.ndarray]
    label: np.ndarray
    brain: np.ndarray
    wm: np.ndarray
    tissue: np.ndarray
    grid: Grid
    site: str
    info: dict


def synth_case_counts(preset: str | Preset = "quick", databases: Iterable[str] = ALL_DATABASES) -> dict[str, int]:
    """Cases per twin: round(case_scale x the paper's count), clamped to [min_cases, max_cases]."""
    s = load_preset(preset).synth
    counts = {}
    for name in databases:
        m = load_manifest(manifest_dir() / f"{name}.yaml")
        n = int(round(s.get("case_scale", 0.0) * m.split_cases))
        counts[name] = int(np.clip(n, s.get("min_cases", 1), s.get("max_cases", n or 1)))
    return counts


def _sites(spec: dict, n: int) -> list[tuple[int, dict, int]]:
    """(site index, site spec, index within site) of each case; shares split by largest remainder."""
    sites = spec.get("sites") or [{"name": ""}]
    if isinstance(sites, int):
        sites = [{"name": f"{k + 1:03d}"} for k in range(sites)]
    share = np.array([float(s.get("share", 1.0)) for s in sites])
    exact = n * share / share.sum()
    counts = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    out = []
    for k, c in enumerate(counts):
        out += [(k, sites[k], j) for j in range(c)]
    return out


def _merge(*dicts: dict) -> dict:
    out: dict = {}
    for d in dicts:
        out.update(d or {})
    return out


def _rng(seed: int, name: str, *keys: int) -> np.random.Generator:
    # crc32, not hash(): Python's string hash changes between runs.
    return np.random.default_rng([seed, zlib.crc32(name.encode()), *keys])


def site_scanners(manifest: DatabaseManifest, seed: int) -> list[dict]:
    """Each site's scanner: the database's `scanner` with the site's overrides, plus its own
    contrast (gamma per modality) and gain drawn once per site."""
    spec = manifest.synth
    raw_sites = spec.get("sites") or [{"name": ""}]
    if isinstance(raw_sites, int):
        raw_sites = [{"name": f"{k + 1:03d}"} for k in range(raw_sites)]
    out = []
    for k, site in enumerate(raw_sites):
        rng = _rng(seed, manifest.name, 100_000 + k)
        sc = _merge(spec.get("scanner"), site.get("scanner"))
        gamma_sd = sc.get("gamma_sd", 0.08)
        sc["gammas"] = {m: float(np.exp(rng.normal(0, gamma_sd))) for m in manifest.modalities}
        lo, hi = sc.get("gain", (800.0, 1600.0))
        sc["gain_value"] = float(rng.uniform(lo, hi))
        out.append(sc)
    return out


def generate_case(manifest: DatabaseManifest, voxel_mm: float, seed: int, index: int, n_cases: int,
                  scanners: list[dict] | None = None) -> TwinCase:
    """Generate case `index` (0-based) of `manifest`'s twin; depends only on (seed, name, index)."""
    spec = manifest.synth
    if not spec or "lesions" not in spec:
        raise MMLibError(f"manifest of {manifest.name} has no synth.lesions section", manifest.path)
    scanners = scanners or site_scanners(manifest, seed)
    k, site, _ = _sites(spec, n_cases)[index]
    sc_site = scanners[k]
    rng = _rng(seed, manifest.name, index)
    gspec = spec.get("grid", {})
    tpl = load_template(voxel_mm)
    spacing = voxel_mm * np.asarray(gspec.get("voxel_scale", (1.0, 1.0, 1.0)), float)
    grid = make_grid(tpl, spacing, gspec.get("fov", "brain"))
    geom = sample_geometry(tpl, rng, spec.get("geometry", {}))
    lp = dict(spec["lesions"])
    model = lp.pop("model")
    plan = PLANS[model](tpl, geom, rng, lp) if model in PLANS else None
    anat = sample_anatomy(tpl, grid, geom, rng, masses=(plan or {}).get("masses", ()),
                          head=not manifest.skull_stripped)
    for _ in range(10):   # a twin's case always has a lesion: redraw the rare empty one
        lesions = MODELS[model](anat, rng, lp, plan)
        if lesions.label.any():
            break
    vessels = vessel_map(anat, rng) if {"SWI", "T1c"} & set(manifest.modalities) else None
    thick_axis = int(np.argmax(spacing)) if spacing.max() > spacing.min() * 1.05 else None
    ratio = float(spacing.max() / spacing.min())
    # A manifest's `lesion_contrast` overrides factors (LESION) or signals (OWN_SIGNAL) by key.
    factors = {key: _merge(v, spec.get("lesion_contrast", {}).get(key)) for key, v in LESION.items()}
    own = {key: _merge(v, spec.get("lesion_contrast", {}).get(key)) for key, v in OWN_SIGNAL.items()}
    case_gain = sc_site["gain_value"] * float(np.exp(rng.normal(0, 0.1)))
    images = {}
    for mod in manifest.modalities:
        tissue = _merge(TISSUE[mod], spec.get("contrast", {}).get(mod))
        img = normal_tissue(anat, mod, tissue, vessels)
        if lesions.parts:
            img = add_lesions(img, lesions.parts, mod, factors, own, parenchyma(anat, mod, tissue))
        sc = _merge(sc_site, spec.get("modalities", {}).get(mod))
        if mod == "DWI":
            img = img + sc.get("artefact", 0.6) * susceptibility_artefact(anat, rng)
        sc["gamma"] = sc_site["gammas"][mod] * float(np.exp(rng.normal(0, 0.03)))
        images[mod] = scanner_effects(img, anat, sc, rng, thick_axis, ratio) * case_gain
    label = lesions.label
    if manifest.skull_stripped:
        # Skull stripping differs from case to case: the mask's level and outline vary.
        wobble = smooth_noise(grid.shape, grid.spacing, 20.0, rng)
        brain = (anat["brain"] + 0.06 * wobble) > rng.uniform(0.4, 0.6)
        for mod in images:
            images[mod] = np.where(brain, np.maximum(images[mod], 1.0), 0.0).astype(np.float32)
        label = np.where(brain, label, 0).astype(np.uint8)
    else:
        brain = anat["brain"] > 0.5
    shares = np.stack([anat["csf"], anat["gm"], anat["wm"]]) * brain
    return TwinCase(images=images, label=label, brain=brain, wm=(anat["wm"] > 0.9) & brain,
                    tissue=shares.astype(np.float32), grid=grid, site=str(site.get("name", "")),
                    info=dict(lesions.info))


# --------------------------------------------------------------------------- writing

def _orient(array: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """RAS array + affine -> the same image stored in axis codes `codes` (e.g. 'LPS', 'PSR')."""
    if codes == "RAS":
        return array, affine
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                           nib.orientations.axcodes2ornt(tuple(codes)))
    out = nib.orientations.apply_orientation(array, ornt)
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, array.shape[:3])
    return np.ascontiguousarray(out), new_affine


def _fill(pattern: str, case: str, star: str | None) -> str:
    name = case.rsplit("/", 1)[-1]
    path = pattern.replace("{case}", case).replace("{name}", name)
    if "*" in path:
        if star is None:
            raise MMLibError(f"pattern {pattern!r} has '*' but synth.layout.star is not set")
        path = path.replace("*", star)
    return path


def case_paths(manifest: DatabaseManifest, index: int, n_cases: int) -> dict[str, str]:
    """Relative paths of case `index`'s files (modalities and 'label') in the release layout."""
    spec = manifest.synth.get("layout", {})
    k, site, j = _sites(manifest.synth, n_cases)[index]
    fields = dict(n=index + 1, i=index, j=j, j1=j + 1, k=k + 1, site=site.get("name", ""),
                  id=int(site.get("first_id", 0)) + j)
    if manifest.layout.kind == "msd4d":
        name = f"{spec.get('prefix', manifest.name)}_{index + 1:03d}.nii.gz"
        return {"image": f"{manifest.layout.images_dir}/{name}", "label": f"{manifest.layout.labels_dir}/{name}"}
    case = spec["case"].format(**fields)
    star = spec.get("star")
    paths = {}
    for f, mod in enumerate(manifest.modalities):
        paths[mod] = _fill(manifest.layout.images[mod], case,
                           None if star is None else star.format(uid=spec.get("uid_base", 0) + 10 * index + f, **fields))
    if manifest.layout.label:
        f = len(manifest.modalities)
        paths["label"] = _fill(manifest.layout.label, case,
                               None if star is None else star.format(uid=spec.get("uid_base", 0) + 10 * index + f, **fields))
    return paths


def write_case(manifest: DatabaseManifest, case: TwinCase, root: Path, index: int, n_cases: int) -> None:
    """Write one case's files where the manifest's layout expects them."""
    gspec = manifest.synth.get("grid", {})
    codes, dtype = gspec.get("orientation", "RAS"), gspec.get("dtype", "int16")
    paths = case_paths(manifest, index, n_cases)
    affine = case.grid.affine
    if manifest.layout.kind == "msd4d":
        vol = np.stack([case.images[m] for m in manifest.layout.channels], axis=-1)
        arr, aff = _orient(vol, affine, codes)
        write_nifti(root / paths["image"], arr, aff, dtype)
    else:
        for mod in manifest.modalities:
            arr, aff = _orient(case.images[mod], affine, codes)
            write_nifti(root / paths[mod], arr, aff, dtype)
    arr, aff = _orient(case.label, affine, codes)
    write_nifti(root / paths["label"], arr, aff, "uint8")


def _write_dataset_json(manifest: DatabaseManifest, root: Path, n_cases: int) -> None:
    """The MSD dataset.json: channel names as the real Task01_BrainTumour states them."""
    spec = manifest.synth.get("layout", {})
    names = spec.get("channel_names", list(manifest.layout.channels))
    entries = [case_paths(manifest, i, n_cases) for i in range(n_cases)]
    write_json(root / "dataset.json", {
        "name": spec.get("dataset_name", manifest.name),
        "description": f"Synthetic twin of {manifest.name} (mmlib.data.synth)",
        "tensorImageSize": "4D",
        "modality": {str(i): n for i, n in enumerate(names)},
        "labels": spec.get("label_names", {"0": "background"}),
        "numTraining": n_cases, "numTest": 0,
        "training": [{"image": "./" + e["image"], "label": "./" + e["label"]} for e in entries],
        "test": [],
    })


#: Hidden file marking a folder as a twin written here (readers skip hidden names).
MARKER = ".mmlib_synth.json"
#: Hidden file in a folder of twins made by `ensure_twins`: the settings they were made with.
TWINS_MARKER = ".mmlib-twins.json"
#: Bump when the generator's output changes: twins of another version are made again.
SYNTH_VERSION = 3   # 2: lesions relative to the tissue they replace; 3: stroke T1-dark against brain


def _plain(obj):
    """`obj` as it reads back from JSON (tuples -> lists), for comparing with a marker."""
    return json.loads(json.dumps(obj, default=str))


def _twin_params(name: str, p: Preset, seed: int, n: int, voxel_mm: float) -> dict:
    return _plain({"database": name, "preset": p.name, "synth": p.synth, "seed": seed, "cases": n,
                   "voxel_mm": voxel_mm, "version": SYNTH_VERSION})


def twin_state(root: str | Path) -> tuple[str, dict | None]:
    """(state, marker) of a twin's folder. state: 'absent' (no folder, or only temporary files
    of a killed run), 'writing' (interrupted), 'complete', 'damaged' (our marker, unreadable),
    'foreign' (a folder or file mmlib did not write). Markers of older mmlib, written after the
    last file, count as complete."""
    root = Path(root)
    if not root.exists():
        return "absent", None
    if not root.is_dir():
        return "foreign", None
    if (root / MARKER).exists():
        info = read_json(root / MARKER)
        if not isinstance(info, dict):
            return "damaged", None
        state = info.get("state", "complete")
        return (state if state in ("writing", "complete") else "damaged"), info
    if any(not is_temp_file(e.name) for e in root.iterdir()):
        return "foreign", None
    return "absent", None


def _remove_twin(root: Path) -> None:
    """Delete a twin's folder: renamed to a hidden name first, so a kill during the deletion
    leaves hidden litter (removed by the next run) instead of a half folder without its marker."""
    trash = root.with_name(f".{root.name}.deleting-{os.getpid()}-{secrets.token_hex(4)}")
    os.rename(root, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _case_written(manifest: DatabaseManifest, root: Path, index: int, n: int) -> bool:
    # Every file is written atomically, so a file that exists is whole.
    return all((root / rel).is_file() for rel in case_paths(manifest, index, n).values())


def make_twins(out_dir: str | Path, preset: str | Preset = "quick", seed: int = 0,
               databases: Iterable[str] | None = None, progress: bool = True,
               reuse: bool = False) -> dict[str, Path]:
    """Write the synthetic twins: out_dir/<NAME>/ in each database's release layout.

    Returns {name: root folder}. A twin interrupted with the same settings is resumed, one with
    other settings restarted; a complete twin is replaced (kept when `reuse` and its settings
    match). A folder mmlib did not write is refused (MMLibError). Files are written atomically
    under a lock on out_dir (mmlib.out_folder.OutLock).
    """
    from tqdm.auto import tqdm

    p = load_preset(preset)
    names = list(databases or ALL_DATABASES)
    counts = synth_case_counts(p, names)
    voxel_mm = float(p.synth.get("voxel_mm", 2.0))
    out_dir = prepare_out_dir(out_dir)
    roots = {}
    with OutLock(out_dir):
        (out_dir / TWINS_MARKER).unlink(missing_ok=True)  # ensure_twins rewrites it when done
        clean_stale_temps(out_dir, recursive=False)
        for trash in out_dir.glob(".*.deleting-*"):
            shutil.rmtree(trash, ignore_errors=True)
        bar = tqdm(total=sum(counts.values()), desc="synthetic twins", unit="case", disable=not progress)
        for name in names:
            manifest = load_manifest(manifest_dir() / f"{name}.yaml")
            root, n = out_dir / name, counts[name]
            params = _twin_params(name, p, seed, n, voxel_mm)
            state, info = twin_state(root)
            if state == "foreign":
                raise MMLibError("exists and is not a synthetic twin written by mmlib (it has no "
                                 f"{MARKER}); choose another --out", root)
            same = info is not None and {k: v for k, v in info.items() if k != "state"} == params
            if state == "complete" and same and reuse:
                roots[name] = root
                bar.update(n)
                continue
            resume = state == "writing" and same
            if resume:
                clean_stale_temps(root)
            elif root.exists():
                _remove_twin(root)
            write_json(root / MARKER, {"state": "writing", **params})
            scanners = site_scanners(manifest, seed)
            for i in range(n):
                bar.set_postfix_str(name)
                if not (resume and _case_written(manifest, root, i, n)):
                    write_case(manifest, generate_case(manifest, voxel_mm, seed, i, n, scanners), root, i, n)
                bar.update()
            if manifest.layout.kind == "msd4d":
                _write_dataset_json(manifest, root, n)
            write_json(root / MARKER, {"state": "complete", **params})
            roots[name] = root
        bar.close()
    return roots


def ensure_twins(out_dir: str | Path, preset: str | Preset = "quick", seed: int = 0,
                 progress: bool = True) -> Path:
    """The seven twins in out_dir, made unless the same ones are complete there; returns out_dir.

    An interrupted run is resumed, a damaged or truncated marker means 'make again', and the
    marker of the whole set (TWINS_MARKER) is written atomically once every twin is complete.
    """
    p = load_preset(preset)
    out_dir = Path(out_dir)
    want = _plain({"preset": p.name, "seed": seed, "synth": p.synth})
    if read_json(out_dir / TWINS_MARKER) == want and all(
            twin_state(out_dir / name)[0] == "complete" for name in ALL_DATABASES):
        return out_dir
    make_twins(out_dir, preset=p, seed=seed, progress=progress, reuse=True)
    atomic_write_json(out_dir / TWINS_MARKER, want)
    return out_dir


def main(out: str | Path, preset: str = "quick", seed: int = 0, databases: Iterable[str] | None = None) -> dict[str, Path]:
    """Entry point for `mmlib synth`: write the twins and print where they are."""
    roots = make_twins(out, preset, seed, databases)
    for name, root in roots.items():
        print(f"{name}: {root}")
    return roots
