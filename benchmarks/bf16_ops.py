"""Which operation of the U-Net goes wrong in bf16 on this machine? Each op the network runs, forward
and backward, in bf16 against float32 on the same inputs, including the inputs that are hard for
low precision: constant channels (a dropped modality, background) at several magnitudes, and an
empty crop for the Dice. Prints one line per op: finite or not, largest relative error.

    python benchmarks/bf16_ops.py [--threads N]

Relative errors of near-zero results are large by construction; read them beside the finite
column. InstanceNorm's backward on a near-constant channel (gradient ~ 1/std) is the op bf16 gets
furthest from float32; mmlib's InstanceNorm (mmlib/models/multiunet.py) takes its statistics in
float32 under autocast, shown on the line under each. Run it on a CPU where bf16 training went
non-finite (a Zen 4's AVX512-BF16 kernels, for example) to see which op it is there.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from mmlib.engine.losses import dice_loss
from mmlib.models.multiunet import InstanceNorm3d


def compare(name: str, fn, *inputs: torch.Tensor) -> None:
    """Run fn in float32 and under bf16 autocast (inputs cast to bf16); forward and input gradients."""
    outs = {}
    for dtype in (torch.float32, torch.bfloat16):
        xs = [x.detach().to(dtype).requires_grad_(x.is_floating_point()) for x in inputs]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = fn(*xs)
        y.float().sum().backward()
        outs[dtype] = (y.detach().float(), [x.grad.float() for x in xs if x.grad is not None])
    (y32, g32), (y16, g16) = outs[torch.float32], outs[torch.bfloat16]
    finite = bool(torch.isfinite(y16).all()) and all(bool(torch.isfinite(g).all()) for g in g16)

    def rel(a, b):
        return float((a - b).norm() / b.norm().clamp_min(1e-12))

    grad = max((rel(a, b) for a, b in zip(g16, g32)), default=0.0)
    print(f"{name:58s} {'finite' if finite else 'NON-FINITE':10s} forward {rel(y16, y32):8.2e}  backward {grad:8.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 32, 32, 32, generator=g)
    x[:, 3:] = 0  # dropped modalities
    w = torch.randn(8, 6, 3, 3, 3, generator=g) * 0.1
    b = torch.randn(8, generator=g) * 0.1
    for layout, fmt in (("contiguous", torch.contiguous_format), ("channels-last", torch.channels_last_3d)):
        compare(f"conv3d 3x3x3, 3 of 6 channels zero, {layout}",
                lambda x, w, b: F.conv3d(x.contiguous(memory_format=fmt), w, b, padding=1), x, w, b)
        compare(f"conv3d stride 2, {layout}",
                lambda x, w, b: F.conv3d(x.contiguous(memory_format=fmt), w, b, stride=2, padding=1), x, w, b)
    for level in (0.0, 1.0, 30.0, 1000.0):
        for noise in (0.0, 1e-3):
            h = level + noise * torch.randn(2, 8, 16, 16, 16, generator=g)
            for layout, fmt in (("contiguous", torch.contiguous_format), ("channels-last", torch.channels_last_3d)):
                compare(f"instance_norm, channel {level:g} +- {noise:g}, {layout}",
                        lambda h: F.instance_norm(h.contiguous(memory_format=fmt), eps=1e-5), h)
            compare(f"  mmlib's InstanceNorm3d (float32 statistics), {level:g} +- {noise:g}",
                    lambda h: InstanceNorm3d(8)(h.contiguous(memory_format=torch.channels_last_3d)), h)
    h = torch.randn(2, 8, 16, 16, 16, generator=g)
    compare("prelu (one slope)", lambda h, a: F.prelu(h, a), h, torch.tensor([0.25]))
    compare("avg_pool3d k3 s2 p1 (the residual path)", lambda h: F.avg_pool3d(h, 3, 2, 1), h)
    compare("nearest upsampling x2", lambda h: F.interpolate(h, scale_factor=2, mode="nearest"), h)
    logits = torch.randn(2, 1, 16, 16, 16, generator=g)
    empty = torch.zeros(2, 1, 16, 16, 16)
    compare("sigmoid + per-sample Dice loss, crop without lesion",
            lambda z: dice_loss(z, empty, torch.ones_like(empty), batch=False), logits)


if __name__ == "__main__":
    main()
