"""Manifests: the packaged ones load, and every mistake is named together with its file."""

from __future__ import annotations

import copy

import pytest
import yaml

from mmlib.data.manifest import ALL_DATABASES, load_manifest
from mmlib.data.modalities import MODALITIES
from mmlib.errors import ManifestError, MMLibError


@pytest.mark.parametrize("name", ALL_DATABASES)
def test_every_packaged_manifest_loads(name):
    manifest = load_manifest(name)
    assert manifest.name == name
    assert set(manifest.modalities) <= set(MODALITIES)


def test_packaged_manifests_give_the_papers_case_counts(manifests):
    counts = {n: (m.split_cases, m.split_train) for n, m in manifests.items()}
    assert counts == {"BRATS": (484, 444), "ATLAS": (655, 459), "MSSEG": (53, 37), "TBI": (281, 156),
                      "WMH": (60, 42), "ISLES": (28, 0), "TUMOR2": (51, 0)}


def test_msd_manifest_maps_release_channel_names_to_canonical_modalities(manifests):
    assert manifests["BRATS"].layout.channels == ("FLAIR", "T1", "T1c", "T2")


def _write(tmp_path, raw, text=None):
    path = tmp_path / "BROKEN.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(raw))
    return path


def _brats(manifests):
    return copy.deepcopy(manifests["BRATS"].raw)


def _error(path) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.file == str(path)
    assert str(path) in str(info.value)
    return info.value.problem


def test_unknown_modality_is_named(tmp_path, manifests):
    raw = _brats(manifests)
    raw["modalities"] = ["FLAIR", "T1", "T1c", "X-RAY"]
    assert "X-RAY" in _error(_write(tmp_path, raw))


def test_duplicate_modality_is_named(tmp_path, manifests):
    raw = _brats(manifests)
    raw["modalities"] = ["FLAIR", "T1", "T1w", "T2"]
    assert "duplicate modality 'T1w'" in _error(_write(tmp_path, raw))


def test_split_with_more_training_cases_than_cases_is_refused(tmp_path, manifests):
    raw = _brats(manifests)
    raw["split"] = {"cases": 10, "train": 20}
    assert "split" in _error(_write(tmp_path, raw))


def test_missing_key_is_named(tmp_path, manifests):
    raw = _brats(manifests)
    del raw["labels"]
    assert "missing key(s): labels" in _error(_write(tmp_path, raw))


def test_unknown_key_is_named(tmp_path, manifests):
    raw = _brats(manifests)
    raw["colour"] = "blue"
    assert "unknown key(s): colour" in _error(_write(tmp_path, raw))


def test_broken_yaml_is_reported_as_not_valid_yaml(tmp_path):
    assert "not valid YAML" in _error(_write(tmp_path, None, text="name: [BRATS\nmodalities: {"))


def test_missing_manifest_file_is_named(tmp_path):
    assert "not found" in _error(tmp_path / "NOPE.yaml")


def _wmh(manifests):
    return copy.deepcopy(manifests["WMH"].raw)


@pytest.mark.parametrize("where,pattern,problem", [
    ("images", "/data/{case}/FLAIR.nii.gz", "is absolute"),
    ("images", "~/{case}/FLAIR.nii.gz", "is absolute"),
    ("images", "{case}/../../{name}/FLAIR.nii.gz", "climbs out of the root folder"),
    ("label", "../labels/{name}.nii.gz", "climbs out of the root folder"),
    ("cases", "/**", "is absolute"),
    ("cases", "training/../../*", "climbs out of the root folder"),
    ("label", "derivatives/mask.nii.gz", "names the same file for every case"),
])
def test_patterns_leaving_the_root_or_shared_by_every_case_are_refused(tmp_path, manifests, where, pattern, problem):
    raw = _wmh(manifests)
    if where == "images":
        raw["layout"]["images"]["FLAIR"] = pattern
    else:
        raw["layout"][where] = pattern
    message = _error(_write(tmp_path, raw))
    assert problem in message and repr(pattern) in message


def test_msd_folders_leaving_the_root_are_refused(tmp_path, manifests):
    raw = _brats(manifests)
    raw["layout"]["labels"] = "../labelsTr"
    assert "climbs out of the root folder" in _error(_write(tmp_path, raw))


def test_a_folder_given_as_manifest_is_named(tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    assert "is a folder" in _error(tmp_path / "dir.yaml")


def test_data_root_from_env_takes_the_argument_then_the_variable_and_refuses_a_missing_folder(tmp_path, monkeypatch):
    from mmlib.data.manifest import data_root_from_env, use_twins

    monkeypatch.delenv("MMLIB_DATA_ROOT", raising=False)
    for name in ALL_DATABASES:
        monkeypatch.delenv(f"MMLIB_{name}_ROOT", raising=False)
    assert data_root_from_env(None) is None and use_twins(["WMH"])
    monkeypatch.setenv("MMLIB_DATA_ROOT", str(tmp_path))
    assert data_root_from_env(None) == tmp_path and not use_twins(["WMH"])
    assert data_root_from_env(tmp_path / ".") == tmp_path
    monkeypatch.setenv("MMLIB_DATA_ROOT", str(tmp_path / "gone"))
    with pytest.raises(MMLibError, match="MMLIB_DATA_ROOT does not exist") as err:
        data_root_from_env(None)
    assert err.value.file == str(tmp_path / "gone")
    monkeypatch.delenv("MMLIB_DATA_ROOT")
    monkeypatch.setenv("MMLIB_WMH_ROOT", str(tmp_path))
    assert not use_twins(["WMH"]) and use_twins(["BRATS"])
