"""The integrity check lists every problem of a release, each with the file it concerns."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest

from fixtures import tiny_affine, tiny_label, write_tiny_release
from mmlib.data.integrity import CheckReport, Problem, check_database, same_grid
from mmlib.data.manifest import ALL_DATABASES
from mmlib.data.nifti import save_volume

AFFINE = tiny_affine()


def _noise(shape=(8, 8, 8), seed=0):
    return np.random.default_rng(seed).uniform(50, 150, shape).astype(np.float32)


def _problems_of(report: CheckReport, path) -> list[str]:
    return [p.problem for p in report.problems if p.file == str(path)]


@pytest.mark.parametrize("name", ALL_DATABASES)
def test_clean_tiny_release_has_no_problems(tmp_path, manifests, name):
    write_tiny_release(manifests[name], tmp_path)
    report = check_database(manifests[name], tmp_path)
    assert report.cases == 3
    assert report.problems == []


def test_broken_release_lists_every_problem_with_its_file_in_one_report(tmp_path, manifests):
    manifest = manifests["TBI"]
    write_tiny_release(manifest, tmp_path, n_cases=5)
    missing = tmp_path / "sub-001/anat/sub-001_SWI.nii.gz"
    missing.unlink()
    nan_image = _noise()
    nan_image[0, 0, 0] = np.nan
    nan_file = save_volume(nan_image, AFFINE, tmp_path / "sub-002/anat/sub-002_FLAIR.nii.gz")
    wrong_label = tiny_label(manifest)
    wrong_label[6, 6, 6] = 7
    wrong_file = save_volume(wrong_label, AFFINE, tmp_path / "derivatives/lesions/sub-003/sub-003_desc-lesion_mask.nii.gz")
    truncated = tmp_path / "sub-004/anat/sub-004_T2w.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:-40])
    short_label = save_volume(tiny_label(manifest, (8, 8, 6)), AFFINE,
                              tmp_path / "derivatives/lesions/sub-005/sub-005_desc-lesion_mask.nii.gz")

    report = check_database(manifest, tmp_path)

    assert report.cases == 5
    assert len(report.problems) == 5
    assert "no file matches" in _problems_of(report, missing)[0]
    assert "1 voxel(s) are NaN" in _problems_of(report, nan_file)[0]
    assert "unexpected label value(s) [7]" in _problems_of(report, wrong_file)[0]
    assert "cannot read" in _problems_of(report, truncated)[0]
    assert "label shape (8, 8, 6) differs" in _problems_of(report, short_label)[0]


def test_missing_root_is_reported(tmp_path, manifests):
    report = check_database(manifests["WMH"], tmp_path / "nowhere")
    assert report.problems == [Problem(str(tmp_path / "nowhere"), "release folder of WMH not found")]


def test_release_without_cases_is_reported(tmp_path, manifests):
    report = check_database(manifests["WMH"], tmp_path)
    assert report.cases == 0
    assert [p.file for p in report.problems] == [str(tmp_path)]
    assert "no cases found" in report.problems[0].problem


def test_several_files_matching_one_pattern_are_reported(tmp_path, manifests):
    manifest = manifests["ISLES"]
    write_tiny_release(manifest, tmp_path, n_cases=1)
    save_volume(_noise(), AFFINE, tmp_path / "Training/1/VSD.Brain.XX.O.MR_T1.9/VSD.Brain.XX.O.MR_T1.9.nii")
    (problem,) = check_database(manifest, tmp_path).problems
    assert "T1: several files match" in problem.problem
    assert problem.file == str(tmp_path / "Training/1/VSD.Brain.XX.O.MR_T1.*/VSD.Brain.XX.O.MR_T1.*.nii")


def test_constant_image_is_reported_as_empty(tmp_path, manifests):
    write_tiny_release(manifests["TUMOR2"], tmp_path, n_cases=1)
    path = save_volume(np.zeros((8, 8, 8), np.float32), AFFINE, tmp_path / "sub-001/anat/sub-001_T1w.nii.gz")
    assert ["T1: empty image: every voxel is 0"] == _problems_of(check_database(manifests["TUMOR2"], tmp_path), path)


def test_non_invertible_affine_is_reported(tmp_path, manifests):
    write_tiny_release(manifests["TUMOR2"], tmp_path, n_cases=1)
    header = nib.Nifti1Header()  # nibabel refuses a singular qform, so the file carries only an sform
    header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)
    path = tmp_path / "sub-001/anat/sub-001_T1w.nii.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        nib.save(nib.Nifti1Image(_noise(), None, header), path)
    assert "not invertible" in _problems_of(check_database(manifests["TUMOR2"], tmp_path), path)[0]


def test_modalities_on_different_grids_are_allowed(tmp_path, manifests):
    write_tiny_release(manifests["WMH"], tmp_path, n_cases=1)
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    save_volume(_noise((4, 4, 4)), coarse, tmp_path / "training/Utrecht/0/pre/T1.nii.gz")
    assert check_database(manifests["WMH"], tmp_path).problems == []


def test_label_on_a_reoriented_copy_of_an_image_grid_is_accepted(tmp_path, manifests):
    manifest = manifests["TUMOR2"]
    write_tiny_release(manifest, tmp_path, n_cases=1)
    flip_x = np.array([[-1, 0, 0, 7], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    save_volume(tiny_label(manifest)[::-1], AFFINE @ flip_x,
                tmp_path / "derivatives/lesions/sub-001/sub-001_desc-lesion_mask.nii.gz")
    assert check_database(manifest, tmp_path).problems == []


def test_label_matching_no_image_grid_is_reported(tmp_path, manifests):
    manifest = manifests["TUMOR2"]
    write_tiny_release(manifest, tmp_path, n_cases=1)
    shifted = AFFINE.copy()
    shifted[:3, 3] += 0.5
    path = save_volume(tiny_label(manifest), shifted, tmp_path / "derivatives/lesions/sub-001/sub-001_desc-lesion_mask.nii.gz")
    assert "matches no image" in _problems_of(check_database(manifest, tmp_path), path)[0]


def test_modalities_sharing_an_affine_with_different_shapes_are_reported(tmp_path, manifests):
    write_tiny_release(manifests["WMH"], tmp_path, n_cases=1)
    path = save_volume(_noise((8, 8, 7)), AFFINE, tmp_path / "training/Utrecht/0/pre/T1.nii.gz")
    assert _problems_of(check_database(manifests["WMH"], tmp_path), path) == [
        "T1 shape (8, 8, 7) differs from FLAIR shape (8, 8, 8) on the same affine"]


def test_msd_4d_file_with_wrong_channel_count_is_reported(tmp_path, manifests):
    write_tiny_release(manifests["BRATS"], tmp_path, n_cases=1)
    path = save_volume(_noise((8, 8, 8, 3)), AFFINE, tmp_path / "imagesTr/BRATS_001.nii.gz")
    assert "has 3 channel(s)" in _problems_of(check_database(manifests["BRATS"], tmp_path), path)[0]


def test_msd_dataset_json_mismatch_is_reported_and_the_cases_still_checked(tmp_path, manifests):
    write_tiny_release(manifests["BRATS"], tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "T1w"}}))
    report = check_database(manifests["BRATS"], tmp_path)
    assert report.cases == 3
    assert [p.file for p in report.problems] == [str(tmp_path / "dataset.json")]


def test_msd_image_without_label_is_reported(tmp_path, manifests):
    write_tiny_release(manifests["BRATS"], tmp_path, n_cases=1)
    (tmp_path / "labelsTr/BRATS_001.nii.gz").unlink()
    (problem,) = check_database(manifests["BRATS"], tmp_path).problems
    assert problem.file == str(tmp_path / "labelsTr/BRATS_001.nii.gz")


def test_hidden_files_are_ignored_silently(tmp_path, manifests):
    write_tiny_release(manifests["BRATS"], tmp_path)
    (tmp_path / "imagesTr/._BRATS_001.nii.gz").write_bytes(b"AppleDouble")
    (tmp_path / "labelsTr/._BRATS_001.nii.gz").write_bytes(b"AppleDouble")
    report = check_database(manifests["BRATS"], tmp_path)
    assert (report.cases, report.problems) == (3, [])


def test_report_to_json_gives_database_root_cases_and_problems(tmp_path, manifests):
    write_tiny_release(manifests["TUMOR2"], tmp_path, n_cases=2)
    (tmp_path / "sub-002/anat/sub-002_T1w.nii.gz").unlink()
    out = json.loads(json.dumps(check_database(manifests["TUMOR2"], tmp_path).to_json()))
    assert out["database"] == "TUMOR2" and out["root"] == str(tmp_path) and out["cases"] == 2
    assert out["problems"] == [{"file": str(tmp_path / "sub-002/anat/sub-002_T1w.nii.gz"),
                                "problem": "case sub-002: T1: no file matches the pattern"}]


def test_progress_bar_does_not_change_the_report(tmp_path, manifests):
    write_tiny_release(manifests["ATLAS"], tmp_path)
    assert check_database(manifests["ATLAS"], tmp_path, progress=True) == check_database(manifests["ATLAS"], tmp_path)


def test_same_grid_accepts_axis_permutations_and_refuses_half_voxel_shifts():
    swap_xy = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    assert same_grid((8, 6, 4), AFFINE, (6, 8, 4), AFFINE @ swap_xy)
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.5
    assert not same_grid((8, 8, 8), AFFINE, (8, 8, 8), shifted)


def test_every_case_check_reports_is_refused_by_reading_and_the_others_read(tmp_path, manifests):
    from mmlib.data.readers import find_cases, read_case
    from mmlib.errors import MMLibError

    manifest = manifests["WMH"]
    write_tiny_release(manifest, tmp_path, n_cases=6)
    cases = find_cases(manifest, tmp_path)
    label = tiny_label(manifest).astype(np.int16)
    label[6, 6, 6] = -1
    save_volume(label, AFFINE, cases[0].label)                                  # value the manifest does not name
    save_volume(np.full((8, 8, 8), 3.0, np.float32), AFFINE, cases[1].images["T1"])   # empty image
    save_volume(tiny_label(manifest, (8, 8, 6)), AFFINE, cases[2].label)       # label on no image's grid
    save_volume(_noise((8, 8, 7)), AFFINE, cases[3].images["T1"])              # modalities disagree
    report = check_database(manifest, tmp_path)
    flagged = {p.file for p in report.problems}
    assert len(report.problems) == 4
    for case in find_cases(manifest, tmp_path):
        files = {str(p) for p in (*case.images.values(), case.label)}
        if files & flagged:
            with pytest.raises(MMLibError) as err:
                read_case(manifest, case)
            assert err.value.file in flagged
        else:
            read_case(manifest, case)


def test_a_file_shared_by_two_cases_is_reported_for_both(tmp_path, manifests):
    from mmlib.data.manifest import parse_manifest

    raw = dict(manifests["TUMOR2"].raw, layout={"kind": "pattern", "cases": ["a/sub-*", "b/sub-*"],
                                                "images": {"T1": "{case}/t1.nii.gz"},
                                                "label": "masks/{name}.nii.gz"})
    manifest = parse_manifest(raw)
    for site in ("a", "b"):
        save_volume(_noise(), AFFINE, tmp_path / site / "sub-001" / "t1.nii.gz")
    mask = save_volume(tiny_label(manifest), AFFINE, tmp_path / "masks" / "sub-001.nii.gz")
    report = check_database(manifest, tmp_path)
    assert [(p.file, p.problem) for p in report.problems] == [
        (str(mask), "case a/sub-001: label: the same file is also label of case b/sub-001"),
        (str(mask), "case b/sub-001: label: the same file is also label of case a/sub-001")]
