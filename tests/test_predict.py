"""`mmlib predict` and `mmlib export`: segmenting new scans with mmlib's models and the authors'."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

import mmlib.engine.predict as predict_module
from authors_reference import authors_input, random_authors_net
from fixtures import write_tiny_release
from mmlib.cli import main
from mmlib.data.loaders import ChannelMap
from mmlib.data.preprocess import prepare_case
from mmlib.data.readers import find_cases, read_case
from mmlib.engine.bundle import bundle_predictor
from mmlib.engine.checkpoint import save_checkpoint
from mmlib.engine.evaluate import ROW_COLUMNS, EvalSettings, evaluate_cases
from mmlib.engine.predict import load_predictor
from mmlib.errors import CheckpointError
from mmlib.models import MultiUNet
from mmlib.models.authors import AUTHORS_CHANNELS, authors_multiunet, to_authors_state_dict

FACTS = json.loads((Path(__file__).parent / "data" / "authors_checkpoint_keys.json").read_text())
TINY_PREP = {"spacing_mm": 3.0, "roi": 32, "overlap": 0.25, "background": "zero", "crop": True}


def tiny_checkpoint(path: Path, modalities=("FLAIR", "T1", "T2"), preprocessing=TINY_PREP, seed: int = 0) -> Path:
    """An mmlib checkpoint of a small random Multi-Unet (width 0.25) with the given channels."""
    torch.manual_seed(seed)
    model = MultiUNet(len(modalities), 1, 0.25)
    config = {"arch": "multiunet", "width": 0.25, "name": "tiny"}
    if preprocessing is not None:
        config["preprocessing"] = preprocessing
    save_checkpoint(path, model, None, None, 0, config, ChannelMap(tuple(modalities)).to_dict())
    return path


def brain_volume(shape, centre, radii) -> np.ndarray:
    """An ellipsoid brain (bool) in voxel coordinates."""
    g = np.indices(shape).astype(float)
    return sum(((g[i] - centre[i]) / radii[i]) ** 2 for i in range(3)) < 1


def write_image(path: Path, brain: np.ndarray, affine: np.ndarray, seed: int) -> Path:
    """A skull-stripped image: smooth random intensities inside `brain`, 0 outside."""
    rng = np.random.default_rng(seed)
    data = ndimage.gaussian_filter(rng.normal(100, 30, brain.shape), 1.5) + 20 * brain
    nib.save(nib.Nifti1Image(np.where(brain, data, 0).astype(np.float32), affine), path)
    return path


def oblique_affine() -> np.ndarray:
    """Anisotropic voxels (1.5 x 1.2 x 3 mm), rotated 20 deg about z and 10 deg about x, shifted."""
    a, b = np.deg2rad(20), np.deg2rad(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([1.5, 1.2, 3.0])
    affine[:3, 3] = (-30.0, 12.0, -40.0)
    return affine


@pytest.fixture
def case(tmp_path):
    """A three-modality case on an oblique anisotropic grid, the brain off-centre."""
    shape = (64, 64, 40)
    brain = brain_volume(shape, (18, 22, 14), (10, 12, 6))
    files = {m: write_image(tmp_path / f"{m}.nii.gz", brain, oblique_affine(), i)
             for i, m in enumerate(("T1", "FLAIR", "T2"))}
    return argparse.Namespace(files=files, brain=brain, shape=shape, affine=oblique_affine())


def predict(tmp_path, ckpt, images: dict, *extra) -> int:
    args = ["predict", "--checkpoint", str(ckpt), "--out", str(tmp_path / "seg.nii.gz")]
    for mod, path in images.items():
        args += ["--image", f"{mod}={path}"]
    return main([*args, *extra])


@pytest.fixture
def seen(monkeypatch):
    """What the network is given: the (C, X, Y, Z) input and its present-channel mask of each call."""
    calls = []
    real = predict_module.predict_probabilities

    def spy(model, image, presents, *args, **kwargs):
        calls.append((np.array(image), np.array(presents)))
        return real(model, image, presents, *args, **kwargs)

    monkeypatch.setattr(predict_module, "predict_probabilities", spy)
    return calls


# --------------------------------------------------------------------------- the authors' checkpoint

def test_the_reference_network_has_the_tensors_of_the_released_checkpoints():
    state = random_authors_net().state_dict()
    assert [(k, list(v.shape)) for k, v in state.items()] == [(k, s) for k, s in FACTS["tensors"]]
    assert sum(v.numel() for v in state.values()) == FACTS["parameters"]
    assert list(AUTHORS_CHANNELS) == FACTS["channels"]


def test_the_authors_state_dict_loads_parameter_for_parameter_and_back():
    net = random_authors_net(seed=3)
    model = authors_multiunet(net.state_dict())
    back = to_authors_state_dict(model)
    assert all(torch.equal(back[k], v) for k, v in net.state_dict().items())
    x = torch.randn(1, 6, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5)


def test_the_authors_model_reads_mmlibs_channel_order_as_theirs_in_predict_and_in_the_bundle(tmp_path):
    net = random_authors_net(seed=2)
    torch.save(net.state_dict(), tmp_path / "authors.pth")
    predictor = load_predictor(tmp_path / "authors.pth")
    ours = predictor.channel_map.modalities  # mmlib's order: FLAIR, T1, T1c, T2, PD, SWI
    assert ours != AUTHORS_CHANNELS and predictor.network_channels == AUTHORS_CHANNELS
    x = torch.randn(1, 6, 32, 32, 32)  # in the authors' order
    x_ours = x[:, [AUTHORS_CHANNELS.index(m) for m in ours]]
    assert main(["export", str(tmp_path / "authors.pth"), "--bundle", str(tmp_path / "bundle")]) == 0
    network = MultiUNet(6)
    bundled = bundle_predictor(network, tmp_path / "bundle")
    with torch.no_grad():
        theirs = net(x)
        assert torch.allclose(predictor.model(x_ours), theirs, atol=1e-5)
        assert torch.allclose(bundled.model(x_ours), theirs, atol=1e-5)


def test_a_state_dict_of_other_shapes_under_the_authors_names_is_refused(tmp_path):
    state = random_authors_net().state_dict()
    state["conv_1.conv.unit0.conv.weight"] = torch.zeros(16, 4, 3, 3, 3)
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="6 input channels"):
        load_predictor(tmp_path / "other.pth")


def test_authors_checkpoint_gives_their_networks_probabilities_on_a_128_cube(tmp_path):
    """The whole path (files -> 1 mm grid -> the authors' z-score -> 128^3 window -> sigmoid ->
    the input's grid) against their network on their preprocessing, within 1e-3."""
    net = random_authors_net(seed=1)
    torch.save(net.state_dict(), tmp_path / "authors.pth")
    shape = (128, 128, 128)
    brain = brain_volume(shape, (60, 66, 62), (45, 52, 40))
    files = {m: write_image(tmp_path / f"{m}.nii.gz", brain, np.eye(4), i) for i, m in enumerate(("T1", "FLAIR"))}
    out = tmp_path / "prob.nii.gz"
    assert predict(tmp_path, tmp_path / "authors.pth", files, "--probabilities", str(out)) == 0

    images = {m: np.asarray(nib.load(p).dataobj, np.float32) for m, p in files.items()}
    x = authors_input(images, brain, AUTHORS_CHANNELS)
    with torch.inference_mode():
        theirs = torch.sigmoid(net(torch.from_numpy(x)[None]))[0, 0].numpy()
    ours = np.asarray(nib.load(out).dataobj)
    assert theirs.std() > 0.01  # not saturated: the comparison can fail
    assert np.abs(ours - theirs).max() < 1e-3
    seg = np.asarray(nib.load(tmp_path / "seg.nii.gz").dataobj)
    assert np.array_equal(seg == 1, ours > 0.5)


# --------------------------------------------------------------------------- grids, subsets, channels

def test_outputs_lie_on_the_first_images_oblique_anisotropic_grid_over_its_brain(tmp_path, case):
    ckpt = tiny_checkpoint(tmp_path / "ck.pt")
    prob_file = tmp_path / "prob.nii.gz"
    assert predict(tmp_path, ckpt, case.files, "--probabilities", str(prob_file)) == 0
    seg, prob = nib.load(tmp_path / "seg.nii.gz"), nib.load(prob_file)
    for img in (seg, prob):
        assert img.shape == case.shape
        assert np.allclose(img.affine, case.affine, atol=1e-5)
    p = np.asarray(prob.dataobj)
    # The model's grid keeps the image's axes and is cut to the brain's box (+ a margin, + the
    # resampling's reach): probabilities exist over the brain and vanish well beyond its box.
    inner = ndimage.binary_erosion(case.brain, iterations=2)
    assert (p[inner] > 0).all()
    near = np.zeros(case.shape, bool)
    reach = np.ceil(20.0 / np.array([1.5, 1.2, 3.0])).astype(int)  # 20 mm in voxels of each axis
    box = tuple(slice(max(0, ix.min() - r), ix.max() + r + 1) for ix, r in zip(np.nonzero(case.brain), reach))
    near[box] = True
    assert (~near).sum() > 1000 and (p[~near] == 0).all()
    assert np.isin(np.unique(np.asarray(seg.dataobj)), (0, 1)).all()


def test_any_subset_gives_the_missing_channels_zeros(tmp_path, case, seen):
    ckpt = tiny_checkpoint(tmp_path / "ck.pt")
    for subset in (("T1",), ("FLAIR", "T2"), ("T2", "T1", "FLAIR")):
        assert predict(tmp_path, ckpt, {m: case.files[m] for m in subset}) == 0
        image, present = seen[-1]
        channels = ("FLAIR", "T1", "T2")
        for c, mod in enumerate(channels):
            assert present[0, c] == (mod in subset)
            if mod in subset:  # z-scored inside the brain, 0 outside (the study's preprocessing)
                assert image[c].std() > 0.1
            else:
                assert not image[c].any()


def test_a_new_modality_goes_on_the_channel_named_as_in_appendix_b(tmp_path, case, seen):
    ckpt = tiny_checkpoint(tmp_path / "ck.pt", modalities=("FLAIR", "T1", "T2", "PD"))
    dwi = case.files["T2"]  # any image will do as the new modality's
    assert predict(tmp_path, ckpt, {"T1": case.files["T1"], "DWI": dwi}, "--channel", "DWI=PD") == 0
    as_dwi = np.asarray(nib.load(tmp_path / "seg.nii.gz").dataobj).copy()
    image_dwi = seen[-1][0]
    assert predict(tmp_path, ckpt, {"T1": case.files["T1"], "PD": dwi}) == 0
    assert np.array_equal(seen[-1][0], image_dwi)
    assert np.array_equal(np.asarray(nib.load(tmp_path / "seg.nii.gz").dataobj), as_dwi)
    assert image_dwi[3].any() and not image_dwi[0].any() and not image_dwi[2].any()


def test_a_new_modality_without_a_channel_is_refused_naming_the_free_ones(tmp_path, case, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ck.pt", modalities=("FLAIR", "T1", "T2", "PD"))
    assert predict(tmp_path, ckpt, {"T1": case.files["T1"], "DWI": case.files["T2"]}) == 2
    err = capsys.readouterr().err
    assert "--channel DWI=" in err and "FLAIR, T2, PD" in err and len(err.strip().splitlines()) == 1
    assert predict(tmp_path, ckpt, {"T1": case.files["T1"], "DWI": case.files["T2"]}, "--channel", "DWI=T1") == 2
    assert "share a channel" in capsys.readouterr().err
    assert not (tmp_path / "seg.nii.gz").exists()


def test_a_brain_mask_given_decides_the_z_scoring(tmp_path, case, seen):
    ckpt = tiny_checkpoint(tmp_path / "ck.pt")
    half = case.brain.copy()
    half[:16] = False
    nib.save(nib.Nifti1Image(half.astype(np.uint8), case.affine), tmp_path / "mask.nii.gz")
    assert predict(tmp_path, ckpt, {"T1": case.files["T1"]}) == 0
    whole = seen[-1][0][1]
    assert predict(tmp_path, ckpt, {"T1": case.files["T1"]}, "--brain-mask", str(tmp_path / "mask.nii.gz")) == 0
    masked = seen[-1][0][1]
    assert (masked != 0).sum() < 0.8 * (whole != 0).sum()


def test_mmlib_checkpoints_without_preprocessing_take_their_studys_preset(tmp_path):
    model_dir = tmp_path / "study" / "models" / "MD-multiunet-drop-s0-abc"
    model_dir.mkdir(parents=True)
    ckpt = tiny_checkpoint(model_dir / "final.pt", preprocessing=None)
    with pytest.raises(CheckpointError, match="does not record its preprocessing"):
        load_predictor(ckpt)
    (tmp_path / "study" / "study.json").write_text(json.dumps({"layout": 1, "preset": "smoke", "data_root": None}))
    prep = load_predictor(ckpt).preprocessing
    assert (prep.spacing_mm, prep.roi) == (6.0, 32)


# --------------------------------------------------------------------------- several cases

def test_a_database_gets_one_segmentation_per_case_and_the_studys_rows(tmp_path, manifests):
    manifest = manifests["WMH"]
    ids = write_tiny_release(manifest, tmp_path / "WMH", n_cases=2, shape=(24, 24, 24))
    ckpt = tiny_checkpoint(tmp_path / "ck.pt")
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(ckpt), "--manifest", "WMH", "--root", str(tmp_path / "WMH"),
                 "--out", str(out)]) == 0
    assert len(list(out.glob("*.nii.gz"))) == len(ids)
    rows = pd.read_csv(out / "metrics.csv")
    assert list(rows.columns) == list(ROW_COLUMNS) and len(rows) == len(ids)
    # The study's own evaluation of the same model on the same prepared cases gives the same rows.
    predictor = load_predictor(ckpt)
    cases = [prepare_case(manifest, read_case(manifest, f), 3.0) for f in find_cases(manifest, tmp_path / "WMH")]
    study = evaluate_cases(predictor.model, cases, predictor.channel_map,
                           EvalSettings(32, 0.25, "cpu", progress=False), model_name="tiny")
    assert np.allclose(rows.sort_values("case_id")["dice"], study.sort_values("case_id")["dice"])
    summary = pd.read_csv(out / "summary.csv")
    assert np.isclose(summary["dice_mean"].iloc[0], rows["dice"].mean())


# --------------------------------------------------------------------------- the MONAI bundle

def test_the_monai_bundle_reproduces_predict(tmp_path, case):
    ckpt = tiny_checkpoint(tmp_path / "ck.pt")
    assert predict(tmp_path, ckpt, case.files, "--probabilities", str(tmp_path / "prob.nii.gz")) == 0
    bundle = tmp_path / "bundle"
    assert main(["export", str(ckpt), "--bundle", str(bundle)]) == 0
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["mmlib"]["channels"] == ["FLAIR", "T1", "T2"]
    assert meta["mmlib"]["preprocessing"]["spacing_mm"] == 3.0
    images = [f"{m}={p}" for m, p in case.files.items()]
    settings = dict(config_file=str(bundle / "configs" / "inference.json"),
                    meta_file=str(bundle / "configs" / "metadata.json"), bundle_root=str(bundle), images=images,
                    output=str(tmp_path / "bseg.nii.gz"), probabilities=str(tmp_path / "bprob.nii.gz"))
    if importlib.util.find_spec("fire"):  # MONAI's command line needs python-fire
        cmd = [sys.executable, "-m", "monai.bundle", "run"]
        for key, value in settings.items():
            cmd += [f"--{key}", repr(value) if isinstance(value, list) else value]
    else:  # the same function `python -m monai.bundle run` calls
        cmd = [sys.executable, "-c", f"from monai.bundle import run; run(**{settings!r})"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for ours, theirs in (("seg", "bseg"), ("prob", "bprob")):
        a, b = nib.load(tmp_path / f"{ours}.nii.gz"), nib.load(tmp_path / f"{theirs}.nii.gz")
        assert np.allclose(a.affine, b.affine)
        assert np.abs(np.asarray(a.dataobj, np.float32) - np.asarray(b.dataobj, np.float32)).max() < 1e-6


# --------------------------------------------------------------------------- bad input

def _bad_inputs(tmp_path, case):
    """name -> (images, extra arguments, checkpoint, the file the message must name)."""
    ck = tiny_checkpoint(tmp_path / "ck.pt")
    t1 = case.files["T1"]
    far = case.affine.copy()
    far[:3, 3] += 1000.0
    nib.save(nib.Nifti1Image(np.asarray(nib.load(t1).dataobj), far), tmp_path / "far.nii.gz")
    data = np.asarray(nib.load(t1).dataobj)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), case.affine), tmp_path / "4d.nii.gz")
    nan = data.copy()
    nan[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, case.affine), tmp_path / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(case.shape, np.uint8), case.affine), tmp_path / "empty.nii.gz")
    nib.save(nib.Nifti1Image(case.brain.astype(np.float32) * 2, case.affine), tmp_path / "label.nii.gz")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    (tmp_path / "code.pkl").write_bytes(pickle.dumps(argparse.Namespace(a=1)))
    return {
        "no overlap": ({"T1": t1, "FLAIR": tmp_path / "far.nii.gz"}, [], ck, "far.nii.gz"),
        "4D file": ({"T1": tmp_path / "4d.nii.gz"}, [], ck, "4d.nii.gz"),
        "NaN": ({"T1": tmp_path / "nan.nii.gz"}, [], ck, "nan.nii.gz"),
        "empty brain mask": ({"T1": t1}, ["--brain-mask", str(tmp_path / "empty.nii.gz")], ck, "empty.nii.gz"),
        "label-valued image": ({"T1": tmp_path / "label.nii.gz"}, [], ck, "label.nii.gz"),
        "foreign checkpoint": ({"T1": t1}, [], tmp_path / "other.pt", "other.pt"),
        "pickle": ({"T1": t1}, [], tmp_path / "code.pkl", "code.pkl"),
    }


@pytest.mark.parametrize("what", ["no overlap", "4D file", "NaN", "empty brain mask", "label-valued image",
                                  "foreign checkpoint", "pickle"])
def test_bad_input_is_refused_in_one_line_naming_the_file_and_nothing_is_written(tmp_path, case, capsys, what):
    images, extra, ckpt, named = _bad_inputs(tmp_path, case)[what]
    assert predict(tmp_path, ckpt, images, *extra, "--probabilities", str(tmp_path / "prob.nii.gz")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mmlib predict: error:") and named in err
    assert not (tmp_path / "seg.nii.gz").exists() and not (tmp_path / "prob.nii.gz").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".seg")]


def test_images_on_another_grid_are_resampled_with_a_warning(tmp_path, case, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ck.pt")
    shifted = case.affine.copy()
    shifted[:3, 3] += 4.0
    nib.save(nib.Nifti1Image(np.asarray(nib.load(case.files["FLAIR"]).dataobj), shifted), tmp_path / "moved.nii.gz")
    assert predict(tmp_path, ckpt, {"T1": case.files["T1"], "FLAIR": tmp_path / "moved.nii.gz"}) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "moved.nii.gz" in err and "resampled" in err
    assert nib.load(tmp_path / "seg.nii.gz").shape == case.shape
