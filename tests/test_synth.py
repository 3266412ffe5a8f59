"""Synthetic twins: layouts, reproducibility, counts, labels, modalities and lesion contrast."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from mmlib.data.manifest import ALL_DATABASES, load_manifest, manifest_dir
from mmlib.data.readers import find_cases, read_case
from mmlib.data.synth import best_threshold_dice, generate_case, make_twins, synth_case_counts
from mmlib.data.synth.contrast import LESION, OWN_SIGNAL, TISSUE, add_lesions
from mmlib.data.synth.lesion_contrast import LITERATURE, literature_table, sign_holds, twin_contrast
from mmlib.data.synth.twins import site_scanners
from mmlib.errors import MMLibError

SMOKE_VOXEL_MM = 6.0
# Contrast is measured at the CPU presets' 3 mm: MS lesions of a few mm still fill voxels there.
CONTRAST_VOXEL_MM = 3.0


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict[str, Path]:
    """The smoke twins of all seven databases, seed 0."""
    return make_twins(tmp_path_factory.mktemp("twins"), "smoke", seed=0, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@functools.lru_cache(maxsize=None)
def _case(name: str, index: int = 0, seed: int = 0):
    m = load_manifest(manifest_dir() / f"{name}.yaml")
    n = synth_case_counts("smoke")[name]
    return m, generate_case(m, SMOKE_VOXEL_MM, seed, index, n, site_scanners(m, seed))


def test_twins_are_written_for_every_database(twins):
    assert set(twins) == set(ALL_DATABASES)
    assert all(twins[n] == twins[n].parent / n for n in ALL_DATABASES)


@pytest.mark.parametrize("name", ALL_DATABASES)
def test_twin_is_found_in_its_release_layout(twins, manifests, name):
    cases = find_cases(manifests[name], twins[name])
    assert len(cases) == synth_case_counts("smoke")[name]
    for c in cases:
        assert not c.problems, c.problems
        assert c.label is not None and all(p is not None for p in c.images.values())


def test_layouts_follow_the_real_releases(twins):
    assert (twins["BRATS"] / "imagesTr" / "BRATS_001.nii.gz").is_file()
    assert (twins["BRATS"] / "labelsTr" / "BRATS_001.nii.gz").is_file()
    assert list((twins["ATLAS"] / "ATLAS_2" / "Training").glob(
        "R*/sub-r*s*/ses-1/anat/sub-r*s*_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz"))
    assert (twins["WMH"] / "training" / "Utrecht" / "0" / "pre" / "FLAIR.nii.gz").is_file()
    assert list((twins["ISLES"] / "Training").glob("*/VSD.Brain.XX.O.MR_Flair.*/VSD.Brain.XX.O.MR_Flair.*.nii"))
    assert list(twins["MSSEG"].glob("Center_*/Patient_*/Preprocessed_Data/GADO_preprocessed.nii.gz"))
    assert list(twins["TBI"].glob("derivatives/lesions/sub-*/sub-*_desc-lesion_mask.nii.gz"))


def test_brats_dataset_json_names_the_channels(twins):
    meta = json.loads((twins["BRATS"] / "dataset.json").read_text())
    assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert meta["numTraining"] == synth_case_counts("smoke")["BRATS"]


def test_same_seed_gives_identical_bytes(twins, tmp_path):
    again = make_twins(tmp_path, "smoke", seed=0, databases=["ISLES", "WMH", "BRATS"], progress=False)
    for name, root in again.items():
        assert _files(root) == _files(twins[name]), name


def test_another_seed_gives_other_cases(twins, tmp_path):
    other = make_twins(tmp_path, "smoke", seed=1, databases=["ISLES"], progress=False)["ISLES"]
    a, b = _files(twins["ISLES"]), _files(other)
    assert set(a) != set(b) or any(a[k] != b[k] for k in a)
    assert [p for p in b if "MR_DWI" in p] and all(a.get(k) != v for k, v in b.items() if "MR_DWI" in k)


def test_case_counts_follow_the_preset():
    assert synth_case_counts("smoke") == {n: 4 for n in ALL_DATABASES}
    quick = synth_case_counts("quick")
    for name in ALL_DATABASES:
        paper = load_manifest(manifest_dir() / f"{name}.yaml").split_cases
        assert quick[name] == min(48, max(12, round(0.1 * paper)))
    assert quick["BRATS"] > quick["MSSEG"]


@pytest.mark.parametrize("name", ALL_DATABASES)
def test_labels_and_modalities_are_the_manifests(twins, manifests, name):
    m = manifests[name]
    values = set()
    for c in find_cases(m, twins[name]):
        raw = read_case(m, c)
        assert tuple(raw.images) == m.modalities
        lab = np.asarray(raw.label.dataobj)
        assert (lab > 0).any(), f"{c.case_id} has an empty label"
        values |= set(np.unique(lab).tolist())
    assert values <= {0, *m.lesion_values, *m.ignore_values}
    assert 1 in values
    if name == "BRATS":
        assert values == {0, 1, 2, 3}


def test_wmh_marks_other_pathology_with_label_2(tmp_path):
    m = load_manifest(manifest_dir() / "WMH.yaml")
    scanners = site_scanners(m, 0)
    found = any((generate_case(m, SMOKE_VOXEL_MM, 0, i, 12, scanners).label == 2).any() for i in range(12))
    assert found


@pytest.mark.parametrize("name", ALL_DATABASES)
def test_lesions_lie_inside_the_brain(name):
    m, case = _case(name)
    lesion = case.label > 0
    assert lesion.any()
    assert (lesion & case.brain).sum() >= 0.95 * lesion.sum()


def test_skull_stripped_twins_are_zero_outside_the_brain():
    for name in ("BRATS", "MSSEG", "ISLES", "TBI", "TUMOR2"):
        m, case = _case(name)
        for img in case.images.values():
            assert (img[~case.brain] == 0).all() and (img[case.brain] > 0).all()


@pytest.mark.parametrize("name", ["ATLAS", "WMH"])
def test_unstripped_twins_keep_skull_and_background(name):
    m, case = _case(name)
    img = case.images[m.modalities[-1] if name == "WMH" else "T1"]   # T1 shows the scalp fat bright
    outside = img[~case.brain]
    assert (outside > 0).mean() > 0.5                     # noise floor, skull and scalp are not zeroed
    assert np.percentile(outside, 99.5) > np.median(img[case.brain])   # a bright scalp rim


def _lesion_vs_wm(name: str, modality: str, values=None) -> list[tuple[float, float]]:
    out = []
    for i in range(2):
        m, case = _case(name, i)
        lesion = np.isin(case.label, values or m.lesion_values) & case.brain
        wm = case.wm & (case.label == 0)
        img = case.images[modality]
        out.append((float(img[lesion].mean()), float(img[wm].mean())))
    return out


@pytest.mark.parametrize("name,modality,sign", [
    ("ATLAS", "T1", -1),      # chronic stroke cavity: darker than white matter on T1
    ("ISLES", "DWI", +1),     # sub-acute stroke: restricted diffusion
    ("ISLES", "FLAIR", +1),
    ("BRATS", "FLAIR", +1),   # tumour and oedema bright on FLAIR
    ("TUMOR2", "T1", -1),
    ("MSSEG", "FLAIR", +1),
    ("MSSEG", "PD", +1),
    ("WMH", "FLAIR", +1),
    ("TBI", "FLAIR", +1),
])
def test_lesion_contrast_has_the_designed_sign(name, modality, sign):
    for lesion, wm in _lesion_vs_wm(name, modality):
        assert sign * (lesion - wm) > 0, (lesion, wm)


def test_enhancing_tumour_is_brightest_on_t1c():
    m, case = _case("BRATS")
    enh = case.label == 3
    if not enh.any():
        pytest.skip("no enhancing tumour in this case")
    t1c, t1 = case.images["T1c"], case.images["T1"]
    wm = case.wm & (case.label == 0)
    assert t1c[enh].mean() / t1c[wm].mean() > t1[enh].mean() / t1[wm].mean()


def _composite(key: str, modality: str, tissue: str) -> tuple[float, float]:
    """(healthy, lesioned) value of one voxel of `tissue` fully replaced by compartment `key`."""
    healthy = np.full((1, 1, 1), TISSUE[modality][tissue], np.float32)
    box = (slice(0, 1),) * 3
    out = add_lesions(healthy, [(key, box, np.ones((1, 1, 1), np.float32))], modality, LESION, OWN_SIGNAL, healthy)
    return float(healthy[0, 0, 0]), float(out[0, 0, 0])


@pytest.mark.parametrize("key", sorted(LESION))
def test_a_tissue_lesion_keeps_its_sign_in_grey_and_white_matter(key):
    for modality in TISSUE:
        (gm, gm_lesion), (wm, wm_lesion) = _composite(key, modality, "gm"), _composite(key, modality, "wm")
        assert np.sign(round(gm_lesion - gm, 6)) == np.sign(round(wm_lesion - wm, 6)), (modality, gm_lesion, wm_lesion)


@pytest.mark.parametrize("key", ["infarct", "gliosis"])
def test_stroke_compartments_are_darker_than_grey_matter_on_t1_in_any_tissue(key):
    for tissue in ("gm", "wm"):
        assert _composite(key, "T1", tissue)[1] < TISSUE["T1"]["gm"], tissue


@pytest.mark.parametrize("key", ["ms", "blackhole", "active"])
def test_ms_lesions_are_pd_bright_and_not_t1_bright_in_any_tissue(key):
    for tissue in ("gm", "wm"):
        healthy, lesioned = _composite(key, "PD", tissue)
        assert lesioned > healthy, tissue
        healthy, lesioned = _composite(key, "T1", tissue)
        assert lesioned <= healthy, tissue


def test_sign_holds_needs_the_sign_against_the_tissue_and_in_grey_matter():
    assert sign_holds("hyper", 0.5, 0.2) and not sign_holds("hyper", 0.5, -0.1)
    assert sign_holds("hypo", -0.5, np.nan) and not sign_holds("hypo", -0.5, 0.02)
    assert sign_holds("iso-hypo", 0.05, -0.3) and not sign_holds("iso-hypo", -0.3, 0.4)
    assert sign_holds("mixed", 1.0, -1.0) is None


@functools.lru_cache(maxsize=1)
def _contrast_table():
    return literature_table(twin_contrast("smoke", seed=0, max_cases=None, voxel_mm=CONTRAST_VOXEL_MM))


@pytest.mark.parametrize("key", sorted(k for k, e in LITERATURE.items() if e.sign != "mixed"))
def test_twin_lesions_have_the_sign_the_literature_reports(key):
    table = _contrast_table()
    name, region, modality = key
    row = table[(table.database == name) & (table.region == region) & (table.modality == modality)]
    assert len(row) == 1 and row.cases.iloc[0] > 0
    assert row.agrees.iloc[0], row.to_dict("records")


@pytest.mark.parametrize("name", ["ISLES", "ATLAS"])
def test_stroke_lesions_are_markedly_t1_dark_against_normal_appearing_brain(name):
    table = _contrast_table()
    row = table[(table.database == name) & (table.region == "lesion") & (table.modality == "T1")]
    assert row.cnr_brain.iloc[0] <= -0.8, row.to_dict("records")  # a cavity or an infarct: markedly dark


@pytest.mark.parametrize("name,values", [("BRATS", (2, 3)), ("BRATS", (1, 2, 3)), ("TUMOR2", (1,))])
def test_the_tumour_label_is_one_connected_region(name, values):
    """The core (BRATS 2-3) and the whole tumour (BRATS 1-3; Tumor 2 has one label) have no crumbs."""
    for index in range(2):
        m, case = _case(name, index)
        assert ndimage.label(np.isin(case.label, values), np.ones((3, 3, 3)))[1] == 1, index


def test_best_threshold_dice_finds_a_perfect_threshold():
    rng = np.random.default_rng(0)
    img = rng.normal(0, 1, (20, 20, 20))
    lab = np.zeros(img.shape, np.uint8)
    lab[5:10, 5:10, 5:10] = 1
    img[lab == 1] += 20
    res = best_threshold_dice([{"FLAIR": img}], [lab], [np.ones(img.shape, bool)])
    mod, direction, dice, _ = res["best"]
    assert (mod, direction) == ("FLAIR", "above") and dice > 0.99
    assert res["per_modality"][("FLAIR", "below")][0] < 0.2


def test_rerun_replaces_a_twin_and_refuses_foreign_folders(tmp_path):
    root = make_twins(tmp_path, "smoke", seed=0, databases=["TUMOR2"], progress=False)["TUMOR2"]
    (root / "sub-999").mkdir()
    make_twins(tmp_path, "smoke", seed=0, databases=["TUMOR2"], progress=False)
    assert not (root / "sub-999").exists()
    foreign = tmp_path / "other" / "TUMOR2"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(MMLibError):
        make_twins(tmp_path / "other", "smoke", seed=0, databases=["TUMOR2"], progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_twin_state_tells_interrupted_complete_damaged_and_foreign_folders(tmp_path):
    from mmlib.data.synth.twins import MARKER, twin_state

    assert twin_state(tmp_path / "none") == ("absent", None)
    (tmp_path / "litter").mkdir()
    (tmp_path / "litter" / f".x.nii.gz.{2 ** 22 + 7}-0123abcd.tmp").write_bytes(b"half")
    assert twin_state(tmp_path / "litter")[0] == "absent"  # only a killed run's temporary file
    for name, marker, state in (("w", {"state": "writing"}, "writing"), ("c", {"state": "complete"}, "complete"),
                                ("old", {"database": "X", "cases": 3}, "complete"), ("d", None, "damaged")):
        (tmp_path / name).mkdir()
        (tmp_path / name / MARKER).write_text(json.dumps(marker)[:-1] if marker is None else json.dumps(marker))
        assert twin_state(tmp_path / name)[0] == state, name
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    assert twin_state(tmp_path / "mine")[0] == "foreign"


def test_an_interrupted_twin_with_other_settings_is_restarted_and_deletion_litter_removed(tmp_path):
    from mmlib.data.synth.twins import MARKER, twin_state

    root = make_twins(tmp_path, "smoke", seed=0, databases=["TUMOR2"], progress=False)["TUMOR2"]
    marker = json.loads((root / MARKER).read_text())
    (root / MARKER).write_text(json.dumps(dict(marker, state="writing", seed=5)))
    (root / "sub-999").mkdir()  # would survive a resume
    trash = tmp_path / ".TUMOR2.deleting-1-0123abcd"
    (trash / "sub-001").mkdir(parents=True)  # a deletion killed half-way
    make_twins(tmp_path, "smoke", seed=0, databases=["TUMOR2"], progress=False)
    assert twin_state(root)[0] == "complete" and not (root / "sub-999").exists()
    assert not trash.exists()
