"""A model as a MONAI bundle: `mmlib export CKPT --bundle DIR`.

The bundle holds configs/metadata.json (the network's channels in its order, the
preprocessing and where the weights came from), configs/inference.json and models/model.pt (the network's state dict under
mmlib's names). `python -m monai.bundle run --config_file DIR/configs/inference.json --meta_file
DIR/configs/metadata.json --bundle_root DIR --images "['T1=t1.nii.gz']" --output seg.nii.gz`
segments a case through the same preprocessing and sliding window as `mmlib predict` (the bundle
needs mmlib installed: its preprocessing is mmlib's, not a MONAI transform chain).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import monai
import numpy as np
import torch
from torch import nn

import mmlib
from mmlib.atomic_files import atomic_write_json
from mmlib.data.loaders import ChannelMap
from mmlib.engine.checkpoint import atomic_save
from mmlib.engine.predict import CaseRequest, Predictor, Preprocessing, load_predictor, parse_pairs, predict_files
from mmlib.errors import CheckpointError
from mmlib.models.authors import in_mmlib_order
from mmlib.out_folder import prepare_out_dir

#: The bundle's own version (of its layout; bump when the files change meaning).
BUNDLE_VERSION = "0.1.0"


def _inference_config(predictor: Predictor) -> dict:
    """configs/inference.json: the network, the weights, and one case to segment (given on the
    command line: --images, --output, --probabilities, --brain_mask, --channels, --device)."""
    return {
        "imports": ["$import mmlib.engine.bundle as mmlib_bundle"],
        "bundle_root": ".",
        "device": "cpu",
        "images": [],
        "output": "seg.nii.gz",
        "probabilities": None,
        "brain_mask": None,
        "channels": [],
        "network_def": {"_target_": "mmlib.models.build_model", "arch": predictor.provenance.get("arch", "multiunet"),
                        "in_channels": len(predictor.channel_map),
                        "width": float(predictor.provenance.get("width", 1.0))},
        "predictor": "$mmlib_bundle.bundle_predictor(@network_def, @bundle_root, @device)",
        "run": ["$mmlib_bundle.segment_case(@predictor, @images, @output, @probabilities, @brain_mask, "
                "@channels, @device)"],
    }


def _metadata(predictor: Predictor, checkpoint: Path) -> dict:
    """configs/metadata.json: MONAI's fields plus mmlib's (channels, preprocessing, provenance)."""
    cmap, prep = predictor.channel_map, predictor.preprocessing
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    return {
        "version": BUNDLE_VERSION,
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"mmlib": getattr(mmlib, "__version__", "0")},
        "task": "brain lesion segmentation from any subset of MRI modalities",
        "description": "Multi-Unet of Xu et al., MIDL 2024: one input channel per modality (zeros where one "
                       "is missing), sigmoid output thresholded at 0.5.",
        "authors": "exported by mmlib",
        "copyright": "see the source of the weights (provenance)",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR",
                                 "num_channels": len(cmap), "spatial_shape": [prep.roi] * 3, "dtype": "float32",
                                 "value_range": [], "is_patch_data": True,
                                 "channel_def": {str(i): m for i, m in enumerate(predictor.network_channels)}}},
            "outputs": {"pred": {"type": "probabilities", "format": "segmentation", "num_channels": 1,
                                 "spatial_shape": [prep.roi] * 3, "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True, "channel_def": {"0": "lesion (sigmoid of the logit)"}}},
        },
        "mmlib": {"channels": list(predictor.network_channels), "channel_map": cmap.to_dict(),
                  "preprocessing": prep.to_dict(), "name": predictor.name,
                  "provenance": {**predictor.provenance, "sha256": digest}},
    }


def export_bundle(checkpoint: str | Path, bundle: Path) -> Path:
    """Write `checkpoint`'s model as a MONAI bundle in `bundle`; returns the folder."""
    checkpoint = Path(checkpoint)
    predictor = load_predictor(checkpoint, "cpu")
    bundle = prepare_out_dir(bundle, "--bundle")
    state = {k: v.detach().cpu() for k, v in predictor.network.state_dict().items()}
    atomic_save(state, bundle / "models" / "model.pt")
    atomic_write_json(bundle / "configs" / "inference.json", _inference_config(predictor))
    # metadata.json last: a bundle with it is whole.
    atomic_write_json(bundle / "configs" / "metadata.json", _metadata(predictor, checkpoint))
    return bundle


def bundle_predictor(network: nn.Module, bundle_root: str | Path, device: str = "cpu") -> Predictor:
    """The bundle's network with models/model.pt loaded (weights-only) and the channel map and
    preprocessing of configs/metadata.json."""
    root = Path(bundle_root)
    meta = json.loads((root / "configs" / "metadata.json").read_text())["mmlib"]
    weights = root / "models" / "model.pt"
    try:
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as err:
        raise CheckpointError(f"the bundle's weights do not fit its network: {err}", weights) from err
    prep = Preprocessing.from_dict(meta["preprocessing"], root / "configs" / "metadata.json")
    channels = tuple(meta["channels"])
    return Predictor(in_mmlib_order(network, channels).to(device).eval(), ChannelMap.from_dict(meta["channel_map"]),
                     prep, meta["name"], meta["provenance"], channels)


def segment_case(predictor: Predictor, images, output, probabilities=None, brain_mask=None,
                 channels=(), device: str = "cpu") -> Path:
    """The bundle's run step: `mmlib predict` on one case. images: ['T1=t1.nii.gz', ...] (the
    first one's grid is the output's), channels: ['DWI=PD', ...] as on mmlib's command line."""
    request = CaseRequest(parse_pairs(images, "images"), Path(output), probabilities and Path(probabilities),
                          brain_mask and Path(brain_mask), parse_pairs(channels, "channels"))
    return predict_files(predictor, request, device)
