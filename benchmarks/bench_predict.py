"""`mmlib predict` benchmark: one 1 mm case of 182 x 218 x 182 voxels (MNI-sized) with 4 modalities
(BRATS's FLAIR, T1, T1c, T2) through the authors' architecture with random weights, saved in their
released checkpoint format: the whole command (reading, the authors' preprocessing, 128^3 sliding
windows, writing the mask and probabilities on the input's grid) in a fresh process. Prints wall
time and peak resident memory (and, with --json, writes them).

    OMP_NUM_THREADS=2 python benchmarks/bench_predict.py --threads 2 --json cpu.json
    python benchmarks/bench_predict.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from mmlib.models import MultiUNet
from mmlib.models.authors import to_authors_state_dict

SHAPE = (182, 218, 182)
MODALITIES = ("FLAIR", "T1", "T1c", "T2")


def write_case(folder: Path, seed: int = 0) -> dict[str, Path]:
    """A skull-stripped 1 mm case: an ellipsoid brain of smooth random intensities, 0 outside."""
    rng = np.random.default_rng(seed)
    g = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    centre, radii = np.array(SHAPE) / 2, (70, 90, 70)
    brain = sum(((g[i] - centre[i]) / radii[i]) ** 2 for i in range(3)) < 1
    affine = np.eye(4)
    affine[:3, 3] = -np.array(SHAPE) / 2
    files = {}
    for i, mod in enumerate(MODALITIES):
        data = ndimage.gaussian_filter(rng.normal(100, 30, SHAPE).astype(np.float32), 2) + 10 * i
        files[mod] = folder / f"{mod}.nii.gz"
        nib.save(nib.Nifti1Image(np.where(brain, data, 0).astype(np.float32), affine), files[mod])
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the predict process")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        torch.save(to_authors_state_dict(MultiUNet(6)), tmp / "authors.pth")
        files = write_case(tmp)
        cmd = [sys.executable, "-m", "mmlib", "predict", "--checkpoint", str(tmp / "authors.pth"),
               "--out", str(tmp / "seg.nii.gz"), "--probabilities", str(tmp / "prob.nii.gz"), "--device", args.device]
        for mod, path in files.items():
            cmd += ["--image", f"{mod}={path}"]
        env = dict(os.environ)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode:
            sys.exit(done.stderr)
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20  # KiB on Linux
        assert nib.load(tmp / "seg.nii.gz").shape == SHAPE
    figures = {"case": "x".join(map(str, SHAPE)) + " at 1 mm, 4 modalities", "model": "authors' Multi-Unet (random)",
               "device": args.device, "threads": env.get("OMP_NUM_THREADS", "all"), "wall_s": round(wall, 1),
               "peak_rss_gib": round(peak_gib, 2), "cpu": platform.processor() or platform.machine(),
               "torch": torch.__version__}
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
