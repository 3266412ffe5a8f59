"""Engine benchmark, side by side in one run (a table on stdout, all figures in --json): a
reference-style training loop (a MONAI DataLoader per database decoding gzipped NIfTI, one forward
per database, fp32, loss.item() each step, as the authors' code) against mmlib's; all modality
combinations of a case, one pass per subset against one pass; step variants (fp32/bf16,
channels-last, --compile). GPU: python benchmarks/bench_engine.py --device cuda --compile --json g.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mmlib.data.cases import PreparedCase
from mmlib.data.loaders import ChannelMap, JointBatches
from mmlib.data.manifest import TRAINING_DATABASES, load_manifest
from mmlib.engine.device import pick_device
from mmlib.engine.evaluate import EvalSettings, evaluate_all_combinations
from mmlib.engine.train import TrainStep
from mmlib.models import build_model
from mmlib.presets import load_preset

#: bf16 dense peak, TFLOP/s, by a substring of the device name (vendor datasheets, no sparsity).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}
#: Defaults per device kind: the paper's scale on a GPU, something minutes-long on a CPU.
DEFAULTS = {"cuda": {"crop": 128, "width": 1.0, "batch_per_database": 2, "volume": (160, 192, 160),
                     "cases": 4, "steps": 10, "eval_volume": (160, 192, 160), "rounds": 1},
            "cpu": {"crop": 32, "width": 0.5, "batch_per_database": 2, "volume": (56, 64, 56),
                    "cases": 4, "steps": 6, "eval_volume": (56, 64, 56), "rounds": 2}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def flops_per_sample(channels: int, width: float, crop: int) -> float:
    """FLOPs of one forward + backward of one crop^3 sample (counted on the meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model("multiunet", channels, width).to("meta")
    x = torch.zeros(1, channels, crop, crop, crop, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return float(counter.get_total_flops())


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, f"{override:g} TFLOP/s (given)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tf in PEAK_TFLOPS.items():
            if key in name:
                return tf, f"{tf:g} TFLOP/s bf16 dense ({name})"
        return None, f"unknown for {name}; pass --peak-tflops"
    return None, "not stated for a CPU; pass --peak-tflops"


# --------------------------------------------------------------------------- synthetic data

def smooth_volume(rng: np.random.Generator, shape) -> np.ndarray:
    """Blobs of ~8 voxels plus a little noise: compresses about like an MRI, unlike white noise."""
    coarse = rng.normal(size=tuple(-(-s // 8) for s in shape)).astype(np.float32)
    vol = np.kron(coarse, np.ones((8, 8, 8), np.float32))[tuple(slice(0, s) for s in shape)]
    return vol + 0.1 * rng.normal(size=shape).astype(np.float32)


def make_data(folder: Path, volume, n_cases: int, seed: int = 0):
    """Per training database: its cases as PreparedCase and as gzipped NIfTI files (one 4D image
    with all modalities, one label), the layout the authors' loaders read."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    cases, files = {}, {}
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in volume], indexing="ij"))
    for name in TRAINING_DATABASES:
        mods = load_manifest(name).modalities
        cases[name], files[name] = [], ([], [])
        for i in range(n_cases):
            image = np.stack([smooth_volume(rng, volume) for _ in mods])
            centre = np.array([rng.integers(s // 4, 3 * s // 4) for s in volume])[:, None, None, None]
            label = (((grid - centre) ** 2).sum(0) < (min(volume) // 6) ** 2).astype(np.uint8)
            cases[name].append(PreparedCase(name, f"{name}-{i}", tuple(mods), image, label,
                                            np.ones(volume, bool), (1.0, 1.0, 1.0)))
            img_path, seg_path = folder / f"{name}-{i}-img.nii.gz", folder / f"{name}-{i}-seg.nii.gz"
            nib.save(nib.Nifti1Image(np.moveaxis(image, 0, -1), np.eye(4)), img_path)
            nib.save(nib.Nifti1Image(label, np.eye(4)), seg_path)
            files[name][0].append(str(img_path)), files[name][1].append(str(seg_path))
    return cases, files


# --------------------------------------------------------------------------- training loops

def reference_loop(files, cmap: ChannelMap, crop: int, per_db: int, width: float, device, steps: int,
                   warmup: int = 2, workers: int = 2) -> dict:
    """The authors' loop as described: per database an ImageDataset over gzipped NIfTI with
    EnsureChannelFirst, RandSpatialCrop, RandRotate90(0.1, (0, 2)), a DataLoader (shuffle, 2
    workers), zipped; a zero tensor with all channels per database, one forward each, outputs
    concatenated, DiceLoss(sigmoid=True), Adam, fp32, loss.item() every step."""
    from monai.data import DataLoader, ImageDataset
    from monai.losses import DiceLoss
    from monai.transforms import Compose, EnsureChannelFirst, RandRotate90, RandSpatialCrop

    def transform():
        return Compose([EnsureChannelFirst(), RandSpatialCrop((crop,) * 3, random_size=False),
                        RandRotate90(prob=0.1, spatial_axes=(0, 2))])

    loaders, channels = [], []
    for name, (images, labels) in files.items():
        ds = ImageDataset(images, seg_files=labels, transform=transform(), seg_transform=transform())
        # Persistent workers: kinder to the reference than respawning them every epoch.
        loaders.append(DataLoader(ds, batch_size=per_db, shuffle=True, num_workers=workers,
                                  persistent_workers=workers > 0))
        channels.append(cmap.channels(load_manifest(name).modalities))
    iters = [iter(loader) for loader in loaders]

    def draw(i):
        try:
            return next(iters[i])
        except StopIteration:
            iters[i] = iter(loaders[i])
            return next(iters[i])

    torch.manual_seed(0)
    model = build_model("multiunet", len(cmap), width).to(device).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn = DiceLoss(sigmoid=True)
    wait = total = 0.0
    reset_peak(device)
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        drawn = [draw(i) for i in range(len(loaders))]
        t1 = time.perf_counter()
        outs, labels = [], []
        for (img, seg), chans in zip(drawn, channels):
            x = torch.zeros(img.shape[0], len(cmap), crop, crop, crop)
            x[:, chans] = img.as_tensor() if hasattr(img, "as_tensor") else img
            outs.append(model(x.to(device)))
            labels.append(seg.to(device))
        loss = loss_fn(torch.cat(outs), torch.cat(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
        if step >= warmup:
            wait += t1 - t0
            total += time.perf_counter() - t0
    return {"s_per_step": total / steps, "loader_wait_share": wait / total, "peak_gib": peak_gib(device),
            "samples_per_step": per_db * len(loaders)}


@contextlib.contextmanager
def count_syncs(device: torch.device):
    """Collects the host synchronisations CUDA reports inside the block (none on CPU)."""
    found: list = []
    if device.type != "cuda":
        yield found
        return
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode(0)
            found.extend(w for w in log if "synchroniz" in str(w.message))


def mmlib_loop(sets, cmap: ChannelMap, crop: int, per_db: int, width: float, device, steps: int,
               amp: bool, channels_last: bool, compile=False, data_on_device: bool | None = None,
               memory_budget=None, warmup: int = 2) -> dict:
    """mmlib's loop: JointBatches (drawn on a GPU, as train() does; a memory budget forces the
    host-volume path) and TrainStep; losses read once at the end (train(): every log_every)."""
    batches = JointBatches(sets, cmap, crop=crop, batch_per_database=per_db, drop=True, rotate_p=0.1,
                           lesion_crop_p=0.0, seed=0, rotate_planes=((0, 2),))
    if data_on_device is None:
        data_on_device = device.type == "cuda" or memory_budget is not None
    source = batches.to(device, memory_budget=memory_budget) if data_on_device else batches
    torch.manual_seed(0)
    model = build_model("multiunet", len(cmap), width)
    step = TrainStep(model, 1e-3, device, amp=amp, channels_last=channels_last, compile=compile, dice_batch=False)
    t0 = time.perf_counter()
    for s in range(warmup):
        step(source.batch(s), 1e-3)
    sync(device)
    warm_s = time.perf_counter() - t0
    reset_peak(device)
    losses, wait = [], 0.0
    t0 = time.perf_counter()
    with count_syncs(device) as syncs:  # the steps only, not the read-back and sync below
        for s in range(warmup, warmup + steps):
            t1 = time.perf_counter()
            batch = source.batch(s)
            wait += time.perf_counter() - t1
            losses.append(step(batch, 1e-3))
    values = torch.stack(losses).tolist()
    sync(device)
    total = time.perf_counter() - t0
    # The batch's own device time, alone: on a GPU its kernels queue behind the step's.
    t1 = time.perf_counter()
    for s in range(steps):
        source.batch(warmup + steps + s)
        sync(device)
    alone = (time.perf_counter() - t1) / steps
    if hasattr(source, "close"):
        source.close()
    per_step = total / steps
    return {"s_per_step": per_step, "loader_wait_share": max(wait / total, alone / per_step),
            "loader_host_wait_share": wait / total, "loader_alone_s": alone, "peak_gib": peak_gib(device),
            "samples_per_step": batches.global_batch, "warmup_s": warm_s, "syncs_per_step": len(syncs) / steps,
            "precision": step.precision, "finite": all(np.isfinite(values))}


# --------------------------------------------------------------------------- evaluation

def eval_case(cmap: ChannelMap, width: float, roi: int, volume, device, rounds: int = 2) -> dict:
    """Seconds per case for all modality combinations: today's path (one pass per subset, 4
    windows per forward, contiguous, autocast on CUDA only) against the batched variants."""
    rng = np.random.default_rng(1)
    mods = load_manifest("BRATS").modalities
    label = np.zeros(volume, np.uint8)
    label[tuple(slice(s // 3, s // 2) for s in volume)] = 1
    case = PreparedCase("BRATS", "b0", tuple(mods), np.stack([smooth_volume(rng, volume) for _ in mods]),
                        label, np.ones(volume, bool), (1.0, 1.0, 1.0))
    torch.manual_seed(0)
    model = build_model("multiunet", len(cmap), width).to(device).eval()
    today_amp = device.type == "cuda"
    variants = {"today": dict(batched=False, channels_last=False, amp=today_amp),
                "batched": dict(batched=True, channels_last=False, amp=today_amp),
                "batched_channels_last": dict(batched=True, channels_last=True, amp=today_amp)}
    if device.type == "cpu":
        variants["batched_channels_last_bf16"] = dict(batched=True, channels_last=True, amp=True)
    times = {k: [] for k in variants}
    rows = {}
    for _ in range(rounds):  # in turns, the best of each
        for key, kw in variants.items():
            sync(device)
            t0 = time.perf_counter()
            rows[key] = evaluate_all_combinations(model, [case], cmap,
                                                  EvalSettings(roi, 0.25, device, progress=False, **kw))
            sync(device)
            times[key].append(time.perf_counter() - t0)
    today = rows["today"]["dice"].values
    return {"subsets": len(rows["today"]), "volume": list(volume), "roi": roi,
            "variants": {k: {**kw, "s_per_case": min(times[k]), "speedup": min(times["today"]) / min(times[k]),
                             "max_dice_diff_vs_today": float(np.abs(rows[k]["dice"].values - today).max())}
                         for k, kw in variants.items()}}


# --------------------------------------------------------------------------- step variants

def step_variants(cmap_len: int, width: float, crop: int, batch: int, device, compile: bool,
                  rounds: int = 3, steps: int = 3) -> list[dict]:
    """Seconds per training step on fixed random data, variants timed in turns (best round)."""
    variants = [("fp32", False, False, False), ("fp32", False, True, False),
                ("bf16", True, False, False), ("bf16", True, True, False)]
    if compile:  # each compile takes minutes: on a GPU only the likely best is compiled
        variants += ([("fp32", False, True, True)] if device.type == "cpu" else []) + [("bf16", True, True, True)]
    g = torch.Generator().manual_seed(0)
    batch_ = {"x": torch.randn(batch, cmap_len, crop, crop, crop, generator=g),
              "y": (torch.rand(batch, 1, crop, crop, crop, generator=g) > 0.9).float(),
              "valid": torch.ones(batch, 1, crop, crop, crop),
              "present": torch.ones(batch, cmap_len, dtype=torch.bool)}
    batch_ = {k: v.to(device) for k, v in batch_.items()}
    runs = []
    for name, amp, cl, comp in variants:
        torch.manual_seed(0)
        step = TrainStep(build_model("multiunet", cmap_len, width), 1e-3, device, amp=amp,
                         channels_last=cl, compile=comp, dice_batch=False)
        t0 = time.perf_counter()
        step(batch_, 1e-3), step(batch_, 1e-3)  # warm-up: kernel choice, compilation
        sync(device)
        runs.append({"precision": name, "used": step.precision, "channels_last": cl, "compiled": comp,
                     "warmup_s": time.perf_counter() - t0, "times": [], "step": step, "finite": True})
    for _ in range(rounds):
        for r in runs:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                loss = r["step"](batch_, 1e-3)
            sync(device)
            r["times"].append((time.perf_counter() - t0) / steps)
            r["finite"] = r["finite"] and bool(torch.isfinite(loss))
    out = []
    for r in runs:
        r.pop("step")
        r["s_per_step"] = min(r.pop("times"))
        out.append(r)
    return out


# --------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--crop", type=int)
    parser.add_argument("--width", type=float)
    parser.add_argument("--batch-per-database", type=int)
    parser.add_argument("--steps", type=int, help="timed steps per training loop")
    parser.add_argument("--cases", type=int, help="synthetic cases per database")
    parser.add_argument("--rounds", type=int, help="training loops run in turns this often (best kept)")
    parser.add_argument("--peak-tflops", type=float, help="the device's bf16 dense peak, if not known")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd steps")
    parser.add_argument("--skip", nargs="*", default=[], choices=["reference", "train", "eval", "variants"])
    parser.add_argument("--json", default="bench_engine.json")
    args = parser.parse_args()
    device = pick_device(args.device)
    d = dict(DEFAULTS["cuda" if device.type == "cuda" else "cpu"])
    crop, width = args.crop or d["crop"], args.width or d["width"]
    per_db, steps = args.batch_per_database or d["batch_per_database"], args.steps or d["steps"]
    volume = tuple(max(v, crop) for v in d["volume"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    cmap = ChannelMap.from_databases([load_manifest(n).modalities for n in TRAINING_DATABASES])
    flops = flops_per_sample(len(cmap), width, crop)
    peak, peak_text = peak_tflops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    report = {"device": name, "torch": torch.__version__, "crop": crop, "width": width,
              "batch": per_db * len(TRAINING_DATABASES), "gflop_per_sample": flops / 1e9, "peak": peak_text}
    print(f"{name}; torch {torch.__version__}; crop {crop}^3, width {width}, batch {report['batch']} "
          f"({per_db} per database); {flops / 1e9:.1f} GFLOP forward+backward per sample; peak {peak_text}")

    def row(label: str, r: dict) -> None:
        sps = r["samples_per_step"] / r["s_per_step"]
        share = f"{100 * sps * flops / (peak * 1e12):5.1f}%" if peak else "  n/a"
        mem = f"{r['peak_gib']:6.2f}" if r.get("peak_gib") is not None else "   n/a"
        syncs = f"{r['syncs_per_step']:5.1f}" if "syncs_per_step" in r and device.type == "cuda" else "  n/a"
        r.update(samples_per_s=sps, peak_share=(sps * flops / (peak * 1e12)) if peak else None)
        # A loop is what it computed: its precision after the self-check, and whether its losses were finite.
        ran = f"{r.get('precision', 'float32')}{'' if r.get('finite', True) else ', NON-FINITE'}"
        print(f"{label:38s} {r['s_per_step']:8.3f} {sps:9.2f} {share:>7s} {100 * r['loader_wait_share']:8.1f}% "
              f"{mem:>8s} {syncs:>6s}  {ran}")

    with tempfile.TemporaryDirectory() as tmp:
        if not {"reference", "train"} <= set(args.skip):
            t0 = time.perf_counter()
            sets, files = make_data(Path(tmp), volume, args.cases or d["cases"])
            print(f"\nsynthetic data: {args.cases or d['cases']} cases of {volume} per database, "
                  f"written in {time.perf_counter() - t0:.0f} s")
            print(f"{'training loop':38s} {'s/step':>8s} {'samples/s':>9s} {'of peak':>7s} {'loader':>9s} "
                  f"{'peak GiB':>8s} {'syncs':>6s}")
            loops = {}
            if "reference" not in args.skip:
                loops["reference"] = ("reference-style, fp32",
                                      lambda: reference_loop(files, cmap, crop, per_db, width, device, steps))
            if "train" not in args.skip:
                cl = device.type == "cpu"  # train()'s default
                for key, label, kw in [
                        ("mmlib_fp32", "mmlib, fp32", dict(amp=False, channels_last=cl)),
                        ("mmlib_bf16", "mmlib, bf16", dict(amp=True, channels_last=cl)),
                        ("mmlib_bf16_cl", "mmlib, bf16, channels-last", dict(amp=True, channels_last=True)),
                        ("mmlib_bf16_host", "mmlib, bf16, host volumes + prefetch",
                         dict(amp=True, channels_last=cl, memory_budget=0))]:
                    if key == "mmlib_bf16_cl" and cl:
                        continue  # the CPU default already
                    loops[key] = (label, lambda kw=kw: mmlib_loop(sets, cmap, crop, per_db, width, device, steps, **kw))
            train_rows = {}
            for _ in range(args.rounds or d["rounds"]):  # in turns; the best round of each
                for key, (_, fn) in loops.items():
                    r = fn()
                    if key not in train_rows or r["s_per_step"] < train_rows[key]["s_per_step"]:
                        train_rows[key] = r
            for key, (label, _) in loops.items():
                row(label, train_rows[key])
            if train_rows:
                if "reference" in train_rows and len(train_rows) > 1:
                    best = min((r for k, r in train_rows.items() if k != "reference" and r.get("finite", True)),
                           key=lambda r: r["s_per_step"])
                    report["speedup_best_vs_reference"] = train_rows["reference"]["s_per_step"] / best["s_per_step"]
                    print(f"best mmlib loop vs reference-style: x{report['speedup_best_vs_reference']:.1f}")
            report["training"] = train_rows
            del sets

    if "eval" not in args.skip:
        ev = eval_case(cmap, width, crop, tuple(max(v, crop) for v in d["eval_volume"]), device)
        report["evaluation"] = ev
        print(f"\nall {ev['subsets']} modality combinations of one {tuple(ev['volume'])} case, roi {crop} "
              f"(best of 2 rounds in turns)")
        for key, r in ev["variants"].items():
            print(f"  {key:28s} {'amp ' if r['amp'] else 'fp32'} {r['s_per_case']:7.2f} s/case  x{r['speedup']:5.2f}"
                  f"  max |Dice - today's| {r['max_dice_diff_vs_today']:.1e}")

    if "variants" not in args.skip:
        if device.type == "cpu":  # the quick study's joint step
            q = load_preset("quick")
            v_crop, v_width, v_batch = q.crop, q.width, q.batch_per_database * len(TRAINING_DATABASES)
        else:
            v_crop, v_width, v_batch = crop, width, per_db * len(TRAINING_DATABASES)
        variants = step_variants(len(cmap), v_width, v_crop, v_batch, device, args.compile)
        report["step_variants"] = {"crop": v_crop, "width": v_width, "batch": v_batch, "runs": variants}
        base = variants[0]["s_per_step"]
        print(f"\ntraining step variants (crop {v_crop}^3, width {v_width}, batch {v_batch}; best of 3 rounds in turns)")
        for r in variants:
            print(f"  {r['precision']} {'channels-last' if r['channels_last'] else 'contiguous   '} "
                  f"{'compiled' if r['compiled'] else '        '} {r['s_per_step']:7.3f} s/step  "
                  f"x{base / r['s_per_step']:5.2f} vs fp32 contiguous  (warm-up {r['warmup_s']:.1f} s; ran in "
                  f"{r['used']}{'' if r['finite'] else ', NON-FINITE loss'})")

    report["max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    report["cpu_count"] = os.cpu_count()
    Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
