"""Reading releases as released: NIfTI quirks, each layout's cases and ids, MSD 4D files, the split."""

from __future__ import annotations

import gzip
import json
import os
import struct

import nibabel as nib
import numpy as np
import pytest

from fixtures import lock_folder, tiny_affine, tiny_label, write_tiny_release
from mmlib.data.manifest import ALL_DATABASES, parse_manifest
from mmlib.data.nifti import load_channels, load_label, load_volume, save_volume
from mmlib.data.readers import find_cases, read_case, split_cases
from mmlib.errors import ImageReadError, LayoutError

AFFINE = tiny_affine()


def _raises_naming(path, match, fn, *args):
    with pytest.raises(ImageReadError, match=match) as info:
        fn(*args)
    assert info.value.file == str(path)
    return info.value


# --- nifti.py: the quirks of released files -------------------------------------------------

def test_int16_file_with_scale_factors_reads_as_scaled_floats(tmp_path):
    raw = np.arange(512, dtype=np.int16).reshape(8, 8, 8)
    plain = tmp_path / "scaled.nii"
    nib.save(nib.Nifti1Image(raw, AFFINE), plain)
    blob = bytearray(plain.read_bytes())
    blob[112:120] = struct.pack("<ff", 0.5, 10.0)  # scl_slope, scl_inter of the NIfTI-1 header
    path = tmp_path / "scaled.nii.gz"
    path.write_bytes(gzip.compress(bytes(blob)))
    img = load_volume(path)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.asarray(img.dataobj), raw * 0.5 + 10.0)


def test_volume_keeps_the_files_affine(tmp_path):
    affine = np.diag([-1.0, 1.0, 2.0, 1.0])
    path = save_volume(np.ones((8, 8, 8), np.float32), affine, tmp_path / "a.nii.gz")
    np.testing.assert_allclose(load_volume(path).affine, affine)


def test_trailing_singleton_axis_reads_as_3d(tmp_path):
    path = save_volume(np.ones((8, 8, 8, 1), np.float32), AFFINE, tmp_path / "t.nii.gz")
    assert load_volume(path).shape == (8, 8, 8)


def test_channel_is_taken_from_the_last_axis_of_a_4d_file(tmp_path):
    data = np.stack([np.full((8, 8, 8), c, np.float32) for c in (5, 6, 7)], axis=-1)
    path = save_volume(data, AFFINE, tmp_path / "c.nii.gz")
    assert float(load_volume(path, channel=2).dataobj[0, 0, 0]) == 7
    assert [float(i.dataobj[0, 0, 0]) for i in load_channels(path)] == [5, 6, 7]


def test_channel_out_of_range_is_an_error_naming_the_file(tmp_path):
    path = save_volume(np.ones((8, 8, 8, 2), np.float32), AFFINE, tmp_path / "c.nii.gz")
    _raises_naming(path, "channel 2 out of range", load_volume, path, 2)


def test_image_of_five_dimensions_is_refused(tmp_path):
    path = save_volume(np.ones((8, 8, 8, 2, 2), np.float32), AFFINE, tmp_path / "5d.nii.gz")
    _raises_naming(path, "3D or 4D", load_volume, path)


def test_nan_and_inf_values_are_counted(tmp_path):
    data = np.ones((8, 8, 8), np.float32)
    data[0, 0, :3] = np.nan
    data[1, 1, 1] = np.inf
    path = save_volume(data, AFFINE, tmp_path / "nan.nii.gz")
    _raises_naming(path, "4 voxel", load_volume, path)


def test_missing_file_is_an_error_naming_it(tmp_path):
    _raises_naming(tmp_path / "none.nii.gz", "not found", load_volume, tmp_path / "none.nii.gz")


def test_truncated_gzip_is_an_image_read_error_naming_the_file(tmp_path):
    path = save_volume(np.random.default_rng(0).random((8, 8, 8)), AFFINE, tmp_path / "cut.nii.gz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a download cut short
    _raises_naming(path, "cannot read", load_volume, path)


def test_garbage_file_is_an_image_read_error_naming_the_file(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(b"\x1f\x8b this is not gzip at all" * 10)
    _raises_naming(path, "cannot read", load_volume, path)


def test_float_labels_are_rounded_to_integers(tmp_path):
    data = np.zeros((8, 8, 8), np.float32)
    data[2:4, 2:4, 2:4] = 0.999999
    data[5, 5, 5] = 2.0000001
    label = load_label(save_volume(data, AFFINE, tmp_path / "l.nii.gz"))
    assert np.issubdtype(label.get_data_dtype(), np.integer)
    assert sorted(np.unique(np.asarray(label.dataobj))) == [0, 1, 2]


def test_label_values_far_from_integers_are_refused(tmp_path):
    data = np.zeros((8, 8, 8), np.float32)
    data[1, 1, 1] = 0.5
    path = save_volume(data, AFFINE, tmp_path / "soft.nii.gz")
    _raises_naming(path, "not integers", load_label, path)


def test_save_volume_leaves_no_temporary_file(tmp_path):
    save_volume(np.zeros((8, 8, 8), np.float32), AFFINE, tmp_path / "sub" / "x.nii.gz")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.nii.gz"]


# --- readers.py: cases and ids in each release layout -----------------------------------------

EXPECTED_IDS = {
    "BRATS": ["BRATS_001", "BRATS_002", "BRATS_003"],
    "ATLAS": ["sub-r001s001", "sub-r001s003", "sub-r002s002"],
    "MSSEG": ["Center_01/Patient_01", "Center_03/Patient_01", "Center_07/Patient_01"],
    "TBI": ["sub-001", "sub-002", "sub-003"],
    "WMH": ["training/Amsterdam/GE3T/102", "training/Singapore/51", "training/Utrecht/0"],
    "ISLES": ["Training/1", "Training/2", "Training/3"],
    "TUMOR2": ["sub-001", "sub-002", "sub-003"],
}


@pytest.mark.parametrize("name", ALL_DATABASES)
def test_reader_finds_every_case_with_its_release_id(tmp_path, manifests, name):
    write_tiny_release(manifests[name], tmp_path)
    cases = find_cases(manifests[name], tmp_path)
    assert [c.case_id for c in cases] == EXPECTED_IDS[name]
    for case in cases:
        assert not case.problems
        assert set(case.images) == set(manifests[name].modalities)
        assert all(p.is_file() for p in case.images.values()) and case.label.is_file()


@pytest.mark.parametrize("name", ALL_DATABASES)
def test_read_case_gives_3d_float32_images_in_manifest_order_and_the_label(tmp_path, manifests, name):
    manifest = manifests[name]
    write_tiny_release(manifest, tmp_path)
    raw = read_case(manifest, find_cases(manifest, tmp_path)[0])
    assert tuple(raw.images) == manifest.modalities
    assert all(img.shape == (8, 8, 8) and img.get_data_dtype() == np.float32 for img in raw.images.values())
    assert set(np.unique(np.asarray(raw.label.dataobj))) == {0, *manifest.lesion_values, *manifest.ignore_values}


def test_missing_root_is_a_layout_error_naming_the_root(tmp_path, manifests):
    with pytest.raises(LayoutError) as info:
        find_cases(manifests["MSSEG"], tmp_path / "nowhere")
    assert info.value.file == str(tmp_path / "nowhere")


def test_msd_hidden_macos_files_are_not_cases(tmp_path, manifests):
    write_tiny_release(manifests["BRATS"], tmp_path)
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / folder / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "imagesTr" / ".DS_Store").write_bytes(b"junk")
    assert [c.case_id for c in find_cases(manifests["BRATS"], tmp_path)] == EXPECTED_IDS["BRATS"]


def _constant_channels(root, values):
    """Channel c holds values[c] at voxel (0, 0, 0) (and one brighter voxel: not an empty image)."""
    data = np.stack([np.full((8, 8, 8), v, np.float32) for v in values], axis=-1)
    data[4, 4, 4] += 10
    save_volume(data, AFFINE, root / "imagesTr" / "BRATS_001.nii.gz")


def test_msd_4d_channel_order_follows_the_manifest(tmp_path, manifests):
    manifest = manifests["BRATS"]
    write_tiny_release(manifest, tmp_path, n_cases=1)
    _constant_channels(tmp_path, [1, 2, 3, 4])  # FLAIR, T1w, t1gd, T2w as in the release
    raw = read_case(manifest, find_cases(manifest, tmp_path)[0])
    assert {m: float(i.dataobj[0, 0, 0]) for m, i in raw.images.items()} == {"FLAIR": 1, "T1": 2, "T1c": 3, "T2": 4}


def test_msd_4d_channels_in_another_order_are_mapped_by_layout_channels(tmp_path, manifests):
    raw_manifest = dict(manifests["BRATS"].raw, layout={"kind": "msd4d", "channels": ["T2w", "t1gd", "FLAIR", "T1w"]})
    manifest = parse_manifest(raw_manifest)
    (tmp_path / "labelsTr").mkdir()
    _constant_channels(tmp_path, [4, 3, 1, 2])
    raw = read_case(manifest, find_cases(manifest, tmp_path)[0])
    assert {m: float(i.dataobj[0, 0, 0]) for m, i in raw.images.items()} == {"FLAIR": 1, "T1": 2, "T1c": 3, "T2": 4}


def test_msd_dataset_json_disagreeing_with_the_manifest_is_an_error_naming_it(tmp_path, manifests):
    write_tiny_release(manifests["BRATS"], tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "T1w", "1": "FLAIR", "2": "t1gd", "3": "T2w"}}))
    with pytest.raises(LayoutError) as info:
        find_cases(manifests["BRATS"], tmp_path)
    assert info.value.file == str(tmp_path / "dataset.json")


def test_msd_case_without_label_reads_with_label_none(tmp_path, manifests):
    write_tiny_release(manifests["BRATS"], tmp_path, n_cases=1)
    (tmp_path / "labelsTr" / "BRATS_001.nii.gz").unlink()
    case = find_cases(manifests["BRATS"], tmp_path)[0]
    assert case.label is None and "label" in case.problems
    assert read_case(manifests["BRATS"], case).label is None


def test_hidden_case_folders_are_not_cases(tmp_path, manifests):
    write_tiny_release(manifests["TBI"], tmp_path)
    (tmp_path / "sub-001" / ".anat_backup").mkdir()
    (tmp_path / ".sub-999" / "anat").mkdir(parents=True)
    assert [c.case_id for c in find_cases(manifests["TBI"], tmp_path)] == EXPECTED_IDS["TBI"]


def test_case_folder_with_glob_metacharacters_finds_its_own_files(tmp_path, manifests):
    manifest = manifests["TUMOR2"]
    for name in ("sub-[ab]", "sub-a"):
        save_volume(np.ones((8, 8, 8), np.float32), AFFINE, tmp_path / name / "anat" / f"{name}_T1w.nii.gz")
    cases = {c.case_id: c for c in find_cases(manifest, tmp_path)}
    assert cases["sub-[ab]"].images["T1"] == tmp_path / "sub-[ab]" / "anat" / "sub-[ab]_T1w.nii.gz"


def test_missing_modality_is_recorded_by_find_cases_and_raised_by_read_case(tmp_path, manifests):
    manifest = manifests["MSSEG"]
    write_tiny_release(manifest, tmp_path, n_cases=1)
    (tmp_path / "Center_01/Patient_01/Preprocessed_Data/DP_preprocessed.nii.gz").unlink()
    case = find_cases(manifest, tmp_path)[0]
    assert case.images["PD"] is None
    expected = str(tmp_path / "Center_01/Patient_01/Preprocessed_Data/DP_preprocessed.nii.gz")
    assert case.problems["PD"][0] == expected
    with pytest.raises(LayoutError, match="Center_01/Patient_01: PD") as info:
        read_case(manifest, case)
    assert info.value.file == expected


def test_several_files_matching_one_pattern_are_recorded(tmp_path, manifests):
    manifest = manifests["ATLAS"]
    write_tiny_release(manifest, tmp_path, n_cases=1)
    anat = tmp_path / "ATLAS_2/Training/R001/sub-r001s001/ses-1/anat"
    save_volume(np.ones((8, 8, 8), np.float32), AFFINE, anat / "copy_space-MNI152NLin2009aSym_T1w.nii.gz")
    case = find_cases(manifest, tmp_path)[0]
    assert case.images["T1"] is None and "several files" in case.problems["T1"][1]
    with pytest.raises(LayoutError, match="several files"):
        read_case(manifest, case)


def _header_claiming(shape, data: bytes) -> bytes:
    header = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), AFFINE).header.copy()
    header.set_data_shape(shape)
    return header.binaryblock + b"\0" * 4 + data


@pytest.mark.parametrize("name,shape,match", [
    ("claims_400.nii.gz", (400, 400, 400), "a gzip file of .* bytes cannot hold more than"),
    ("claims_64.nii", (64, 64, 64), "but the file has"),
    ("claims_4d.nii.gz", (8, 8, 8, 500), "500 volumes beyond the 3 spatial axes"),
])
def test_header_claiming_more_data_than_the_file_can_hold_is_refused(tmp_path, name, shape, match):
    payload = _header_claiming(shape, np.random.default_rng(0).bytes(30_000))
    path = tmp_path / name
    path.write_bytes(gzip.compress(payload) if name.endswith(".gz") else payload)
    _raises_naming(path, match, load_volume, path)


def test_voxel_limit_is_a_setting(tmp_path, monkeypatch):
    path = save_volume(np.ones((8, 8, 8), np.float32), AFFINE, tmp_path / "x.nii.gz")
    monkeypatch.setenv("MMLIB_MAX_VOXELS", "100")
    _raises_naming(path, "more than the limit of 100 .*MMLIB_MAX_VOXELS", load_volume, path)
    monkeypatch.setenv("MMLIB_MAX_VOXELS", "512")
    assert load_volume(path).shape == (8, 8, 8)


def test_unreadable_file_is_reported_as_a_permission_problem(tmp_path, monkeypatch):
    path = save_volume(np.ones((8, 8, 8), np.float32), AFFINE, tmp_path / "x.nii.gz")

    def denied(filename, *args, **kwargs):
        raise PermissionError(13, "Permission denied", filename)

    monkeypatch.setattr(nib, "load", denied)
    _raises_naming(path, ": permission denied: cannot read the file$", load_volume, path)


def test_save_volume_honours_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        path = save_volume(np.ones((8, 8, 8), np.float32), AFFINE, tmp_path / "x.nii.gz")
    finally:
        os.umask(old)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o664)


def test_one_file_reached_by_two_cases_is_a_problem_of_both_and_refused(tmp_path, manifests):
    raw = dict(manifests["TUMOR2"].raw, layout={"kind": "pattern", "cases": ["a/sub-*", "b/sub-*"],
                                                "images": {"T1": "{name}_T1w.nii.gz"}, "label": "{case}/mask.nii.gz"})
    manifest = parse_manifest(raw)
    shared = save_volume(np.random.default_rng(0).uniform(1, 2, (8, 8, 8)).astype(np.float32), AFFINE,
                         tmp_path / "sub-001_T1w.nii.gz")
    for site in ("a", "b"):
        save_volume(tiny_label(manifest), AFFINE, tmp_path / site / "sub-001" / "mask.nii.gz")
    cases = find_cases(manifest, tmp_path)
    assert [c.case_id for c in cases] == ["a/sub-001", "b/sub-001"]
    assert [c.problems["T1"] for c in cases] == [(str(shared), "the same file is also T1 of case b/sub-001"),
                                                 (str(shared), "the same file is also T1 of case a/sub-001")]
    with pytest.raises(LayoutError, match="the same file") as info:
        read_case(manifest, cases[0])
    assert info.value.file == str(shared)


def test_a_folder_that_cannot_be_listed_is_a_permission_problem_not_a_missing_file(tmp_path, manifests, monkeypatch):
    manifest = manifests["TBI"]
    write_tiny_release(manifest, tmp_path, n_cases=1)
    locked = tmp_path / "sub-001" / "anat"  # as without read and search permission

    lock_folder(monkeypatch, locked)
    case = find_cases(manifest, tmp_path)[0]
    assert case.problems["FLAIR"] == (str(locked / "sub-001_FLAIR.nii.gz"), f"permission denied: cannot list {locked}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file whatever its permissions")
def test_a_folder_without_read_permission_is_reported_as_such(tmp_path, manifests):
    manifest = manifests["TBI"]
    write_tiny_release(manifest, tmp_path, n_cases=1)
    locked = tmp_path / "sub-001" / "anat"
    locked.chmod(0o000)
    try:
        case = find_cases(manifest, tmp_path)[0]
    finally:
        locked.chmod(0o755)
    assert "permission denied" in case.problems["FLAIR"][1]


def test_read_case_refuses_what_the_integrity_check_reports(tmp_path, manifests):
    manifest = manifests["TUMOR2"]
    write_tiny_release(manifest, tmp_path, n_cases=2)
    label = tiny_label(manifest).astype(np.int16)
    label[5, 5, 5] = 7
    bad_label = save_volume(label, AFFINE, tmp_path / "derivatives/lesions/sub-001/sub-001_desc-lesion_mask.nii.gz")
    empty = save_volume(np.zeros((8, 8, 8), np.float32), AFFINE, tmp_path / "sub-002/anat/sub-002_T1w.nii.gz")
    cases = find_cases(manifest, tmp_path)
    _raises_naming(bad_label, r"unexpected label value\(s\) \[7\]", read_case, manifest, cases[0])
    _raises_naming(empty, "empty image", read_case, manifest, cases[1])
    assert read_case(manifest, cases[1], validate=False).images["T1"].shape == (8, 8, 8)


# --- split --------------------------------------------------------------------------------------

def test_split_is_deterministic_and_independent_of_input_order(manifests):
    ids = [f"case_{i:03d}" for i in range(60)]
    first = split_cases(manifests["WMH"], ids)
    assert split_cases(manifests["WMH"], list(reversed(ids))) == first
    assert len(first[0]) == 42 and len(first[1]) == 18
    assert sorted(first[0] + first[1]) == ids


def test_split_of_case_files_matches_the_split_of_their_ids(tmp_path, manifests):
    manifest = manifests["TBI"]
    write_tiny_release(manifest, tmp_path, n_cases=6)
    cases = find_cases(manifest, tmp_path)
    train, test = split_cases(manifest, cases)
    train_ids, test_ids = split_cases(manifest, [c.case_id for c in cases])
    assert [c.case_id for c in train] == train_ids and [c.case_id for c in test] == test_ids


def test_the_test_cases_are_the_last_ones_by_name(manifests):
    ids = [f"case_{i:03d}" for i in range(60)][::-1]
    train, test = split_cases(manifests["WMH"], ids)
    assert train == [f"case_{i:03d}" for i in range(42)]
    assert test == [f"case_{i:03d}" for i in range(42, 60)]


def test_evaluation_only_database_splits_into_test_cases_only(manifests):
    train, test = split_cases(manifests["ISLES"], ["b", "a", "c"])
    assert train == [] and test == ["a", "b", "c"]
