"""The training loop of the paper (PAPER.md, Training): Adam, lr x0.1 after a step, Dice loss.

Plain PyTorch, read top to bottom. A run resumes from `out_dir/last.pt` exactly where it
stopped (model, optimiser, data position and RNG state), so a resumed run equals an
uninterrupted one (bitwise on CPU).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd
import torch
from monai.losses import DiceLoss
from torch import nn
from tqdm.auto import tqdm

from mmlib.data.loaders import ChannelMap
from mmlib.engine.checkpoint import load_checkpoint, load_weights, save_checkpoint
from mmlib.engine.device import amp_dtype, pick_device, rng_state, seed_everything, set_rng_state


@dataclass
class TrainResult:
    """Where the final checkpoint lies, and the loss of every step (resumed steps included)."""

    path: Path
    losses: list[float]


def dice_loss(logits: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, batch: bool = True) -> torch.Tensor:
    """Soft Dice loss of sigmoid(logits) vs y, all (B, 1, X, Y, Z); voxels with valid == 0 left out.

    batch=True: one Dice over the whole batch. The paper's MONAI default (batch=False, a Dice per
    sample, averaged) is unstable on crops without lesion, which are common in small crops.
    """
    probs = torch.sigmoid(logits.float()) * valid
    return DiceLoss(batch=batch)(probs, y.float() * valid)


def lr_at(step: int, lr: float, lr_drop_step: int | None) -> float:
    """Learning rate of step `step` (0-based): `lr`, x0.1 from `lr_drop_step` on (None/0: never)."""
    return lr * 0.1 if lr_drop_step and step >= lr_drop_step else lr


def _data_state(batches) -> dict | None:
    """A copy of the batch iterator's position, if it can report one."""
    return copy.deepcopy(batches.state_dict()) if hasattr(batches, "state_dict") else None


def train(
    model: nn.Module,
    batches: Iterable[dict],
    steps: int,
    lr: float,
    lr_drop_step: int | None,
    out_dir: str | Path,
    config: dict,
    channel_map: ChannelMap | dict,
    device: str | torch.device = "auto",
    amp: bool = True,
    checkpoint_every: int = 200,
    resume: bool = True,
    progress: bool = True,
    seed: int = 0,
) -> TrainResult:
    """Train `model` for `steps` steps on `batches` (dicts x, y, valid, present; see JointBatches).

    Writes out_dir/last.pt every `checkpoint_every` steps and on Ctrl-C, out_dir/final.pt and
    out_dir/losses.csv at the end. With `resume`, continues from out_dir/last.pt if it exists.
    `config` must name 'arch' and 'width' (for `load_model`); 'dice_batch' (default True) is read.
    """
    device = pick_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last, final = out_dir / "last.pt", out_dir / "final.pt"
    cmap = channel_map if isinstance(channel_map, ChannelMap) else ChannelMap.from_dict(channel_map)
    config = {"in_channels": len(cmap), **config,
              "steps": steps, "lr": lr, "lr_drop_step": lr_drop_step, "seed": seed}

    # Channels-last 3D memory is about a quarter faster for these convs on CPU (benchmarks/).
    memory_format = torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    # Mixed precision only on CUDA: bf16 where the GPU has it (no loss scaling needed), else fp16.
    use_amp = amp and device.type == "cuda"
    dtype = amp_dtype()
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and dtype == torch.float16)

    # Start fresh, or pick up exactly where out_dir/last.pt left off.
    seed_everything(seed)
    start, losses = 0, []
    if resume and last.exists():
        state = load_checkpoint(last, map_location="cpu")
        load_weights(model, state, last)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["extra"]["scaler"])
        if state["extra"]["batches"] is not None and hasattr(batches, "load_state_dict"):
            batches.load_state_dict(state["extra"]["batches"])
        set_rng_state(state["rng"])
        start, losses = state["step"], list(state["extra"]["losses"])

    def checkpoint(path: Path, done: int, rng: dict, data: dict | None) -> None:
        save_checkpoint(path, model, optimizer, {"lr": lr, "lr_drop_step": lr_drop_step}, done,
                        config, cmap.to_dict(), rng,
                        extra={"batches": data, "losses": losses[:done], "scaler": scaler.state_dict()})

    model.train()
    batch_iter = iter(batches)
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not progress, desc="train")
    step, done = start, start
    before = (rng_state(), _data_state(batches))  # where the current step began, for Ctrl-C
    try:
        for step in bar:
            before = (rng_state(), _data_state(batches))
            batch = next(batch_iter)
            x = torch.as_tensor(batch["x"]).to(device, non_blocking=True).contiguous(memory_format=memory_format)
            y = torch.as_tensor(batch["y"]).to(device, non_blocking=True)
            valid = torch.as_tensor(batch["valid"]).to(device, non_blocking=True)
            present = torch.as_tensor(batch["present"]).to(device, non_blocking=True)

            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, lr, lr_drop_step)
            with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
                logits = model(x, present=present)
            loss = dice_loss(logits, y, valid, batch=config.get("dice_batch", True))
            losses.append(loss.item())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            done = step + 1

            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.0e}")
            if done % checkpoint_every == 0 and done < steps:
                checkpoint(last, done, rng_state(), _data_state(batches))
    except KeyboardInterrupt:
        # A step cut short is dropped: the checkpoint holds the state it started from.
        rng, data = (rng_state(), _data_state(batches)) if done == step + 1 else before
        del losses[done:]  # one loss per finished step
        checkpoint(last, done, rng, data)
        bar.close()
        raise
    bar.close()

    checkpoint(last, done, rng_state(), _data_state(batches))
    checkpoint(final, done, rng_state(), _data_state(batches))
    pd.DataFrame({"step": range(len(losses)), "loss": losses,
                  "lr": [lr_at(s, lr, lr_drop_step) for s in range(len(losses))]}
                 ).to_csv(out_dir / "losses.csv", index=False)
    return TrainResult(final, losses)
