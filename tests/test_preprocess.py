"""Preprocessing specifications, on tiny synthetic volumes built here with nibabel."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mmlib.data import preprocess
from mmlib.data.cases import IGNORE, CaseFiles, RawCase
from mmlib.data.manifest import parse_manifest
from mmlib.data.preprocess import (PreprocessError, load_cached_case, prepare_case, prepare_database,
                                   safe_name, save_cached_case)
from mmlib.errors import ImageReadError

N = 20  # voxels per axis at 2 mm


def manifest(**changes):
    raw = {"name": "TOY", "pathology": "toy", "modalities": ["FLAIR", "T1"], "skull_stripped": True,
           "brain_mask": "derived",
           "layout": {"kind": "pattern", "cases": "*",
                      "images": {"FLAIR": "{case}/flair.nii.gz", "T1": "{case}/t1.nii.gz"},
                      "label": "{case}/label.nii.gz"},
           "labels": {"lesion": [1, 2], "ignore": [3]}, "split": {"cases": 4, "train": 2}}
    raw.update(changes)
    return parse_manifest(raw)


def world_grid(shape, affine):
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def head(shape=(N, N, N), zooms=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0)):
    """A sphere of radius 14 mm centred at (19, 19, 19) mm whose intensity grows with world x."""
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = origin
    w = world_grid(shape, affine)
    inside = np.linalg.norm(w - 19.0, axis=-1) < 14
    return np.where(inside, 100.0 + w[..., 0], 0.0).astype(np.float32), affine


def label_volume(affine, shape=(N, N, N)):
    w = world_grid(shape, affine)
    lab = np.zeros(shape, np.uint8)
    lab[np.linalg.norm(w - [15, 19, 19], axis=-1) < 5] = 1
    lab[np.linalg.norm(w - [25, 19, 19], axis=-1) < 4] = 2
    lab[np.linalg.norm(w - [19, 27, 19], axis=-1) < 3] = 3
    return lab


def raw_case(case_id="c1", flair=None, t1=None, label="default"):
    data, affine = head()
    flair = flair or nib.Nifti1Image(data, affine)
    t1 = t1 or nib.Nifti1Image(data * 0.5 + 10 * (data > 0), affine)
    if label == "default":
        label = nib.Nifti1Image(label_volume(affine), affine)
    files = CaseFiles("TOY", case_id, {"FLAIR": Path(f"{case_id}/flair.nii.gz"),
                                       "T1": Path(f"{case_id}/t1.nii.gz")}, Path(f"{case_id}/label.nii.gz"))
    return RawCase(files, {"FLAIR": flair, "T1": t1}, label)


def to_lps(img):
    """The same object stored in LPS voxel order (x and y flipped), affine to match."""
    data = np.asarray(img.dataobj)[::-1, ::-1, :].copy()
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [data.shape[0] - 1, data.shape[1] - 1]
    return nib.Nifti1Image(data, img.affine @ flip)


def test_lps_and_ras_images_of_one_object_prepare_identically():
    ras = raw_case()
    lps = RawCase(ras.files, {m: to_lps(im) for m, im in ras.images.items()}, to_lps(ras.label))
    assert nib.aff2axcodes(lps.images["FLAIR"].affine) == ("L", "P", "S")
    a, b = prepare_case(manifest(), ras, 2.0), prepare_case(manifest(), lps, 2.0)
    np.testing.assert_allclose(a.image, b.image, atol=1e-5)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.brain, b.brain)


def test_modalities_with_different_voxel_sizes_end_on_one_grid():
    def ramp(shape, zooms, origin):  # the same world-space intensity ramp, sampled on a grid
        affine = np.diag([*zooms, 1.0])
        affine[:3, 3] = origin
        w = world_grid(shape, affine)
        return nib.Nifti1Image((100 + w[..., 0] + 2 * w[..., 1] + 0.5 * w[..., 2]).astype(np.float32), affine)

    coarse = ramp((N, N, N), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    fine = ramp((2 * N, 2 * N, N), (1.0, 1.0, 2.0), (-0.5, -0.5, 0.0))  # same field of view
    case = prepare_case(manifest(), raw_case(flair=coarse, t1=fine), 2.0)
    assert case.image.shape == (2, N, N, N) and case.spacing == (2.0, 2.0, 2.0)
    core = (slice(2, -2),) * 3  # away from the edges, where blurring before downsampling acts
    np.testing.assert_allclose(case.image[0][core], case.image[1][core], atol=0.02)


def test_zscore_inside_brain_has_mean_zero_std_one_and_zero_outside():
    case = prepare_case(manifest(), raw_case(), 2.0)
    for channel in case.image:
        assert abs(channel[case.brain].mean()) < 1e-4
        assert abs(channel[case.brain].std() - 1) < 1e-3
        assert not channel[~case.brain].any()
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8 and case.brain.dtype == bool


def test_labels_merge_lesion_values_to_one_and_ignore_values_to_255():
    raw = raw_case()
    truth = label_volume(raw.label.affine)
    case = prepare_case(manifest(), raw, 2.0)
    assert set(np.unique(case.label)) == {0, 1, IGNORE}
    assert (case.label == 1).sum() == np.isin(truth, [1, 2]).sum()
    assert (case.label == IGNORE).sum() == (truth == 3).sum()


@pytest.mark.parametrize("value", [7, -1])
def test_label_values_the_manifest_does_not_name_are_refused_naming_the_file(value):
    raw = raw_case()
    data = np.asarray(raw.label.dataobj).astype(np.int16)
    data[1, 1, 1] = value  # outside the brain: only the refusal can notice it
    bad = RawCase(raw.files, raw.images, nib.Nifti1Image(data, raw.label.affine))
    with pytest.raises(ImageReadError, match=rf"unexpected label value\(s\) \[{value}\]") as err:
        prepare_case(manifest(), bad, 2.0)
    assert err.value.file.endswith("label.nii.gz")


def test_missing_label_gives_all_background_with_a_warning():
    with pytest.warns(UserWarning, match="no label"):
        case = prepare_case(manifest(), raw_case(label=None), 2.0)
    assert not case.label.any()


def test_volume_is_cropped_to_the_brain_with_a_margin():
    case = prepare_case(manifest(), raw_case(), 2.0)
    assert all(n < N for n in case.shape)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        assert not case.brain.any(axis=other)[: preprocess.CROP_MARGIN].any()


def test_unstripped_head_mask_keeps_the_brain_and_drops_the_skull():
    w = world_grid((N, N, N), np.diag([2.0, 2, 2, 1]))
    r = np.linalg.norm(w - 19.0, axis=-1)
    data = np.where(r < 12, 100.0, 0.0) + np.where((r > 15) & (r < 18), 150.0, 0.0)
    img = nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2, 2, 1]))
    case = prepare_case(manifest(skull_stripped=False), raw_case(flair=img, t1=img), 2.0)
    assert 0.8 < case.brain.sum() / (r < 12).sum() < 1.25


def test_empty_brain_raises_naming_the_file():
    zero = nib.Nifti1Image(np.zeros((N, N, N), np.float32), np.diag([2.0, 2, 2, 1]))
    with pytest.raises(PreprocessError, match="empty brain mask") as err:
        prepare_case(manifest(), raw_case(flair=zero, t1=zero), 2.0)
    assert err.value.file.endswith("flair.nii.gz")


def test_non_finite_image_raises_naming_the_file():
    data, affine = head()
    data[3, 3, 3] = np.nan
    with pytest.raises(ImageReadError) as err:
        prepare_case(manifest(), raw_case(t1=nib.Nifti1Image(data, affine)), 2.0)
    assert err.value.file.endswith("t1.nii.gz")


# --------------------------------------------------------------------------- cache

@pytest.fixture
def fake_release(monkeypatch):
    """prepare_database over two cases (one id with '/'), counting prepare_case calls."""
    calls = []
    real = preprocess.prepare_case
    ids = ["Center_01/Patient_01", "p2"]
    monkeypatch.setattr(preprocess, "_readers", lambda: (
        lambda m, root: [raw_case(i).files for i in ids],
        lambda m, files: raw_case(files.case_id)))
    monkeypatch.setattr(preprocess, "prepare_case", lambda *a: calls.append(1) or real(*a))
    return calls


def test_cache_is_reused_on_the_second_call(tmp_path, fake_release):
    first = prepare_database(manifest(), tmp_path, 4.0, tmp_path / "cache", progress=False)
    assert len(fake_release) == 2
    second = prepare_database(manifest(), tmp_path, 4.0, tmp_path / "cache", progress=False)
    assert len(fake_release) == 2
    assert [c.case_id for c in second] == ["Center_01/Patient_01", "p2"]
    np.testing.assert_array_equal(first[0].image, second[0].image)


def test_cache_is_invalidated_by_a_changed_manifest_or_spacing(tmp_path, fake_release):
    prepare_database(manifest(), tmp_path, 4.0, tmp_path / "cache", progress=False)
    prepare_database(manifest(labels={"lesion": [1, 2, 3], "ignore": []}), tmp_path, 4.0, tmp_path / "cache", progress=False)
    assert len(fake_release) == 4
    prepare_database(manifest(), tmp_path, 5.0, tmp_path / "cache", progress=False)
    assert len(fake_release) == 6


def test_corrupt_cache_entry_is_recomputed(tmp_path, fake_release):
    prepare_database(manifest(), tmp_path, 4.0, tmp_path / "cache", progress=False)
    entry = next((tmp_path / "cache" / "TOY").glob("*/p2.npz"))
    entry.write_bytes(b"not a zip")
    cases = prepare_database(manifest(), tmp_path, 4.0, tmp_path / "cache", progress=False)
    assert len(fake_release) == 3 and cases[1].case_id == "p2"
    assert load_cached_case(entry).case_id == "p2"


def test_interrupted_write_leaves_no_entry(tmp_path, monkeypatch):
    def crash(fh, arrays):
        fh.write(b"half an npz")
        raise KeyboardInterrupt

    monkeypatch.setattr(preprocess, "_write_npz", crash)
    case = prepare_case(manifest(), raw_case(), 4.0)
    with pytest.raises(KeyboardInterrupt):
        save_cached_case(case, tmp_path / "c1.npz")
    assert list(tmp_path.iterdir()) == []


def test_cached_case_round_trips(tmp_path):
    case = prepare_case(manifest(), raw_case(), 4.0)
    save_cached_case(case, tmp_path / "c.npz")
    back = load_cached_case(tmp_path / "c.npz")
    assert (back.database, back.case_id, back.modalities, back.spacing) == \
           (case.database, case.case_id, case.modalities, case.spacing)
    for name in ("image", "label", "brain"):
        np.testing.assert_array_equal(getattr(back, name), getattr(case, name))


def test_case_ids_become_distinct_safe_file_names():
    names = {safe_name(i) for i in ("a/b", "a_b", "a b", "../x")}
    assert len(names) == 4 and all("/" not in n and not n.startswith(".") for n in names)
    assert safe_name("sub-r001s001") == "sub-r001s001"


def test_template_brain_mask_is_the_mni_brain_for_images_in_mni_space():
    from nilearn.datasets import load_mni152_brain_mask
    template = load_mni152_brain_mask(resolution=2)
    affine = np.diag([6.0, 6, 6, 1])
    affine[:3, 3] = [-96, -132, -72]  # a 6 mm grid over the template's field of view
    head_img = nib.Nifti1Image(np.full((33, 39, 32), 50.0, np.float32), affine)
    atlas = manifest(modalities=["T1"], skull_stripped=False, brain_mask="template",
                     layout={"kind": "pattern", "cases": "*", "images": {"T1": "{case}/t1.nii.gz"}})
    raw = raw_case()
    with pytest.warns(UserWarning, match="no label"):
        case = prepare_case(atlas, RawCase(raw.files, {"T1": head_img}, None), 6.0)
    brain_ml = case.brain.sum() * 6.0 ** 3 / 1000
    template_ml = template.get_fdata().sum() * 2.0 ** 3 / 1000
    assert abs(brain_ml / template_ml - 1) < 0.1


# --------------------------------------------------------------------------- cache keyed by the data

def _release(root):
    """A TOY release of two cases on disk (images and label of raw_case)."""
    from mmlib.data.nifti import save_volume

    for cid in ("c1", "c2"):
        raw = raw_case(cid)
        for name, img in (("flair", raw.images["FLAIR"]), ("t1", raw.images["T1"]), ("label", raw.label)):
            save_volume(np.asarray(img.dataobj), img.affine, root / cid / f"{name}.nii.gz")


def test_a_changed_input_file_is_prepared_again_not_taken_from_the_cache(tmp_path):
    from mmlib.data.nifti import save_volume

    root = tmp_path / "release"
    _release(root)
    before = prepare_database(manifest(), root, 2.0, tmp_path / "cache", progress=False)
    raw = raw_case("c1")
    fixed = np.asarray(raw.label.dataobj).copy()
    fixed[fixed == 3] = 1  # a fixed label: the ignored region becomes lesion
    save_volume(fixed, raw.label.affine, root / "c1" / "label.nii.gz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        after = prepare_database(manifest(), root, 2.0, tmp_path / "cache", progress=False)
    assert (after[0].label == 1).sum() > (before[0].label == 1).sum()
    assert not (after[0].label == IGNORE).any()
    np.testing.assert_array_equal(after[1].label, before[1].label)  # the unchanged case is the cached one
    assert [str(w.message) for w in caught if w.category is preprocess.DataChangedWarning] == [
        "TOY case c1: c1/label.nii.gz changed since it was prepared; preparing it again"]
    assert set(after[0].sources) == {"c1/flair.nii.gz", "c1/label.nii.gz", "c1/t1.nii.gz"}
    again = prepare_database(manifest(), root, 2.0, tmp_path / "cache", progress=False)  # no warning now
    np.testing.assert_array_equal(again[0].label, after[0].label)


def test_a_root_given_relative_to_the_working_directory_records_the_same_inputs(tmp_path, monkeypatch):
    from mmlib.data.identity import cases_identity

    root = tmp_path / "release"
    _release(root)
    absolute = prepare_database(manifest(), root, 2.0, tmp_path / "cache", progress=False)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", preprocess.DataChangedWarning)  # the cached entries are still current
        relative = prepare_database(manifest(), Path("release"), 2.0, Path("cache"), progress=False)
    assert all(None not in stats for c in relative for stats in c.sources.values())
    assert [c.sources for c in relative] == [c.sources for c in absolute]
    assert cases_identity(relative, Path("release")) == cases_identity(absolute, root)


def test_another_root_gets_its_own_cache_folder(tmp_path, fake_release):
    prepare_database(manifest(), tmp_path / "a", 4.0, tmp_path / "cache", progress=False)
    prepare_database(manifest(), tmp_path / "b", 4.0, tmp_path / "cache", progress=False)
    assert len(fake_release) == 4
    assert len(list((tmp_path / "cache" / "TOY").iterdir())) == 2
    prepare_database(manifest(), tmp_path / "a" / ".." / "a", 4.0, tmp_path / "cache", progress=False)
    assert len(fake_release) == 4  # the same folder, written another way


def test_cache_entries_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_cached_case(prepare_case(manifest(), raw_case(), 4.0), tmp_path / "c.npz")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "c.npz").st_mode & 0o777 == 0o644


def test_data_identity_changes_with_a_file_and_the_root_but_not_with_reading(tmp_path):
    import shutil

    from mmlib.data.identity import data_identity
    from mmlib.data.nifti import save_volume

    _release(tmp_path / "r")
    m = manifest()
    first = data_identity(m, tmp_path / "r")
    assert data_identity(m, tmp_path / "r") == first
    prepare_database(m, tmp_path / "r", 4.0, tmp_path / "cache", progress=False)
    assert data_identity(m, tmp_path / "r") == first
    shutil.copytree(tmp_path / "r", tmp_path / "copy")
    assert data_identity(m, tmp_path / "copy") != first
    raw = raw_case("c2")
    save_volume(np.asarray(raw.images["T1"].dataobj) * 2, raw.images["T1"].affine, tmp_path / "r" / "c2" / "t1.nii.gz")
    assert data_identity(m, tmp_path / "r") != first


def test_cases_identity_follows_the_prepared_cases_inputs_and_root(tmp_path):
    from mmlib.data.identity import cases_identity
    from mmlib.data.nifti import save_volume

    _release(tmp_path / "r")
    cases = prepare_database(manifest(), tmp_path / "r", 4.0, tmp_path / "cache", progress=False)
    first = cases_identity(cases, tmp_path / "r")
    assert cases_identity(cases[::-1], tmp_path / "r" / ".") == first
    assert cases_identity(cases, tmp_path / "elsewhere") != first
    raw = raw_case("c1")
    save_volume(np.asarray(raw.images["FLAIR"].dataobj) + 1, raw.images["FLAIR"].affine,
                tmp_path / "r" / "c1" / "flair.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", preprocess.DataChangedWarning)
        changed = prepare_database(manifest(), tmp_path / "r", 4.0, tmp_path / "cache", progress=False)
    assert cases_identity(changed, tmp_path / "r") != first
    with pytest.raises(ValueError, match="not from prepare_database"):
        cases_identity([prepare_case(manifest(), raw_case(), 4.0)])
