"""Training-step time of the study's networks, measured side by side in one run.

Prints seconds per step and ratios against the first row: Multi-Unet at the preset's width
vs. the paper's width, channels-last memory, and (on a GPU) mixed precision vs. float32, plus
LFUnet / MAFUnet against Multi-Unet (the paper calls LFUnet memory-hungry: peak memory is
printed on a GPU). Run: python benchmarks/bench_train_step.py [--preset quick] [--steps 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import torch

from mmlib.engine.device import amp_dtype, pick_device
from mmlib.models import build_model
from mmlib.presets import load_preset


def step_time(arch: str, width: float, crop: int, batch: int, channels: int, device, steps: int,
              channels_last: bool = False, amp: bool = False) -> tuple[float, float]:
    """Mean seconds per Adam step on random data, and peak GPU memory (GiB; 0 on CPU)."""
    torch.manual_seed(0)
    model = build_model(arch, channels, width).to(device).train()
    x = torch.randn(batch, channels, crop, crop, crop, device=device)
    y = (torch.rand(batch, 1, crop, crop, crop, device=device) > 0.9).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def one():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype(), enabled=amp):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        loss.backward()
        opt.step()

    one()  # warm-up (allocations, kernel choice)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    return (time.perf_counter() - t0) / steps, peak


def _one_thread_steps(args) -> float:
    """Worker: seconds per step with one CPU thread (what each process of Study.train_all uses)."""
    arch, width, crop, batch, channels, steps = args
    torch.set_num_threads(1)
    return step_time(arch, width, crop, batch, channels, torch.device("cpu"), steps, channels_last=True)[0]


def processes_vs_threads(arch: str, width: float, crop: int, batch: int, channels: int, steps: int) -> float:
    """Models trained per second by N one-thread processes side by side over one N-thread
    process, N = the cores this process may use (the quick study's Study.train_all)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    threaded = step_time(arch, width, crop, batch, channels, torch.device("cpu"), steps, channels_last=True)[0]
    with mp.get_context("spawn").Pool(n) as pool:
        per_process = pool.map(_one_thread_steps, [(arch, width, crop, batch, channels, steps)] * n)
    return threaded * n / max(per_process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--databases", type=int, default=5, help="batch = batch_per_database x this")
    args = parser.parse_args()
    preset = load_preset(args.preset)
    device = pick_device(args.device)
    batch = preset.batch_per_database * args.databases
    gpu = device.type == "cuda"
    rows = [("multiunet", preset.width, False, False), ("multiunet", preset.width, True, False),
            ("multiunet", 1.0, False, False)]
    if gpu:
        rows += [("multiunet", preset.width, False, True), ("multiunet", 1.0, False, True)]
    rows += [("lfunet", preset.width, False, gpu), ("mafunet", preset.width, False, gpu)]
    print(f"device {device}, preset {preset.name}: crop {preset.crop}^3, batch {batch}, 6 channels, "
          f"{args.steps} timed steps each")
    base = None
    for arch, width, cl, amp in rows:
        sec, peak = step_time(arch, width, preset.crop, batch, 6, device, args.steps, cl, amp)
        base = base or sec
        mem = f"  peak {peak:5.2f} GiB" if gpu else ""
        print(f"{arch:9s} width {width:4.2f} {'channels-last' if cl else 'contiguous   '} "
              f"{'amp ' if amp else 'fp32'}  {sec:7.3f} s/step  x{sec / base:5.2f}{mem}")
    if not gpu:
        for b, what in ((preset.batch_per_database * args.databases, "joint"),
                        (max(preset.min_batch, preset.batch_per_database), "single-database")):
            gain = processes_vs_threads("multiunet", preset.width, preset.crop, b, 6, args.steps)
            print(f"one-thread processes side by side vs one process with all threads, {what} batch {b}: "
                  f"x{gain:4.2f} models per second")


if __name__ == "__main__":
    main()
