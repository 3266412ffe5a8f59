"""The training loop of the paper (the paper, Training): Adam, lr x0.1 after a step, Dice loss.

Plain PyTorch, read top to bottom. JointBatches are drawn by step number, so a run resumes from
out_dir/last.pt with the step, weights, optimiser and torch RNG, equal to an uninterrupted run
(bitwise on CPU). Losses stay on the device, read back every `log_every` steps.

Under torchrun the same call trains with DistributedDataParallel: each rank draws its share of
the step's global batch, the loss is weighted so that the averaged gradient is the one of the
whole batch, and rank 0 alone writes; a checkpoint resumes with any number of ranks.
"""

from __future__ import annotations

import copy
import gc
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from mmlib.atomic_files import atomic_path, atomic_write_json
from mmlib.data.loaders import ChannelMap, JointBatches
from mmlib.engine import distributed
from mmlib.engine.checkpoint import CheckpointSchedule, load_checkpoint, load_weights, save_checkpoint
from mmlib.engine.convergence import RULE, Validation, judge_learning
from mmlib.engine.device import amp_dtype, pick_device, rng_state, seed_everything, set_rng_state
from mmlib.engine.losses import LOSSES, training_loss
from mmlib.engine.precision import NonFiniteError, PrecisionCheck, checked_dtype, model_finite
from mmlib.errors import MMLibError
from mmlib.models import MAFUNet
from mmlib.presets import SCHEDULES


@dataclass
class TrainResult:
    """Where the final checkpoint lies, the loss of every step (resumed steps included), and the
    run's record (precision, validation curve, whether it learnt: training.json)."""

    path: Path
    losses: list[float]
    record: dict = field(default_factory=dict)


#: Where the cosine schedule ends, as a share of the base rate.
COSINE_FLOOR = 0.01


@dataclass(frozen=True)
class LRSchedule:
    """How the learning rate moves over `steps` steps. 'step' (the paper's): `lr`, x0.1 from
    `drop_step` on (None/0: never). 'cosine': a linear warm-up over `warmup` steps, then a half
    cosine from `lr` down to COSINE_FLOOR x `lr` at the last step."""

    lr: float
    steps: int
    kind: str = "step"
    drop_step: int | None = None
    warmup: int = 0

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise MMLibError(f"unknown learning-rate schedule {self.kind!r}; known: {', '.join(SCHEDULES)}")

    def at(self, step: int) -> float:
        """The learning rate of step `step` (0-based)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.kind == "cosine":
            t = min(1.0, (step - self.warmup) / max(1, self.steps - 1 - self.warmup))
            return self.lr * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * t)))
        return self.lr * 0.1 if self.drop_step and step >= self.drop_step else self.lr


#: Steps between loss read-backs by default (each one waits for the device).
LOG_EVERY = 25


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The torch seed of rank `rank` (dropout), resumed at `step`: rank 0 from the start keeps `seed`
    itself, so one process trains exactly as before; every other (rank, step) its own stream."""
    if rank == 0 and step == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def _skips_branches(model: nn.Module) -> bool:
    """Whether a model leaves parameters out of some forwards: MAFUnet's encoder of a modality no
    sample of a rank's share holds (DDP must then look for unused parameters)."""
    return any(isinstance(m, MAFUNet) for m in model.modules())


def _iterator_state(batches) -> dict | None:
    """The position of a plain batch iterator, if it reports one (its own snapshot, not copied)."""
    return batches.state_dict() if hasattr(batches, "state_dict") else None


class TrainStep:
    """One optimiser step of `train`, on its own (the benchmarks time exactly this): moves the model
    to `device` (channels-last: None = on CPU only), owns Adam and the loss scaler; called with a
    batch and a learning rate, it returns the step's float32 loss, still on the device.

    amp: autocast in the machine's reduced precision, where the network passes its self-check on
    this machine (mmlib.engine.precision) on the first batch; `precision` then says what is used.
    data_parallel: wrap the model in DistributedDataParallel (a process group must be up); each
    call then takes this rank's share of a batch holding `global_batch`, and returns its share of
    the loss (summed over the ranks: the loss of the global batch)."""

    def __init__(self, model: nn.Module, lr: float, device: str | torch.device = "auto", amp: bool = False,
                 channels_last: bool | None = None, compile: bool | str | dict = False, dice_batch: bool = True,
                 data_parallel: bool = False, loss: str = "dice"):
        if loss not in LOSSES:
            raise MMLibError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
        self.device = device = distributed.local_device(pick_device(device))
        self.model, self.dice_batch, self.loss = model, dice_batch, loss
        self.world = distributed.world_size() if data_parallel else 1
        if self.world > 1 and dice_batch:
            raise MMLibError("a Dice over the whole batch (dice_batch: true) is not split across ranks; "
                             "train it in one process, or use the per-sample Dice of the presets (dice_batch: false)")
        # Channels-last 3D: the default on CPU (oneDNN's native layout), an option on a GPU.
        if channels_last is None:
            channels_last = device.type == "cpu"
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        model.to(device, memory_format=self.memory_format)
        # Fused Adam: one kernel for all parameters on a GPU instead of a few per tensor.
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=device.type == "cuda")
        self.dtype = amp_dtype(device) if amp else None
        self.check: PrecisionCheck | None = None
        if amp and self.dtype is None:
            self.note = "float32 (amp asked for, but this CPU has no native bf16)"
            warnings.warn("amp asked for, but this CPU has no native bf16: training in float32", stacklevel=3)
        else:
            self.note = "float32" if self.dtype is None else None  # decided by the self-check
        # bf16 needs no loss scaling; fp16 (GPUs without bf16) does.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self._autocast_tried = False
        self.forward = model
        if self.world > 1:
            # Channels-last 1x1x1 kernels have strides that differ from their gradients' only along
            # axes of size one (the same memory): DDP's warning about it says nothing here.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            # Replicas start from rank 0's weights (DDP broadcasts them) and average gradients.
            self.forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                   find_unused_parameters=_skips_branches(model))
        if compile:
            kwargs = compile if isinstance(compile, dict) else {"mode": compile if isinstance(compile, str) else None}
            self.forward = torch.compile(self.forward, **kwargs)

    def release(self) -> None:
        """Drop the DistributedDataParallel wrapper now: it holds the process group, and one freed
        only at interpreter exit (after the group is destroyed) can abort the process."""
        if self.world > 1:
            self.forward = self.model
            gc.collect()

    @property
    def precision(self) -> str:
        """'bf16', 'float16' or 'float32': what the steps compute in (after the self-check)."""
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.").replace("bfloat16", "bf16")

    def use_float32(self, why: str) -> None:
        """Train in float32 from now on (a failed self-check, or a non-finite value under autocast)."""
        self._autocast_tried = True
        self.dtype, self.note = None, f"float32 ({why})"
        self.scaler = torch.amp.GradScaler("cuda", enabled=False)

    def __call__(self, batch: dict, lr: float) -> torch.Tensor:
        if self.dtype is None or self._autocast_tried:
            return self._step(batch, lr)
        self._autocast_tried, before = True, rng_state()
        # A fast path proves itself on this machine before it is used.
        dtype, self.check = checked_dtype(self.model, self.dtype, self.device, int(torch.as_tensor(batch["x"]).shape[-1]))
        if dtype is None:
            warnings.warn(f"{self.check.describe()}; training in float32", stacklevel=2)
            self.use_float32(self.check.describe())
            set_rng_state(before)
            return self._step(batch, lr)
        self.note = f"{self.precision} autocast ({self.check.describe()})"
        set_rng_state(before)
        # A model that mixes dtypes by hand (e.g. index_put of autocast output into a float32
        # tensor) fails on its first forward: say so and train in float32, from the same RNG state.
        try:
            return self._step(batch, lr)
        except RuntimeError as err:
            if "dtype" not in str(err):
                raise
            warnings.warn(f"amp asked for, but {type(self.model).__name__} fails under autocast ({err}); "
                          f"training in float32", stacklevel=2)
            set_rng_state(before)
            self.use_float32(f"{type(self.model).__name__} fails under autocast")
            return self._step(batch, lr)

    def _step(self, batch: dict, lr: float) -> torch.Tensor:
        device = self.device
        x = torch.as_tensor(batch["x"]).to(device, non_blocking=True).contiguous(memory_format=self.memory_format)
        y = torch.as_tensor(batch["y"]).to(device, non_blocking=True)
        valid = torch.as_tensor(batch["valid"]).to(device, non_blocking=True)
        present = torch.as_tensor(batch["present"]).to(device, non_blocking=True)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            logits = self.forward(x, present=present)
        loss = training_loss(self.loss, logits, y, valid, batch=self.dice_batch)  # float32
        if self.world > 1:
            # A per-sample Dice averages over this rank's n samples; DDP averages gradients over
            # the ranks. Weighting by n * world / global batch makes that average the gradient of
            # the mean over the global batch, even when the ranks' shares differ in size.
            loss = loss * (x.shape[0] * self.world / batch["global_batch"])
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach() / self.world if self.world > 1 else loss.detach()


class _NonFinite(Exception):
    """Raised inside `train` when a read-back finds a NaN or infinity (handled there)."""

    def __init__(self, step: int, what: str):
        self.step, self.what = step, what
        super().__init__(f"non-finite {what} by step {step}")


@dataclass(frozen=True)
class TrainSettings:
    """How train() runs: `steps` at `lr` (x0.1 at `lr_drop_step`, or the schedule config names), on
    `device`; amp: bf16 autocast where it passes its self-check; seed: of dropout (each rank derives its own); resume
    from out_dir/last.pt; checkpoints every `checkpoint_seconds` (None: $MMLIB_CHECKPOINT_SECONDS or
    CheckpointSchedule's default) or `checkpoint_every` steps; losses read back every `log_every`;
    channels_last None: on CPU only; compile: True, a mode or torch.compile kwargs; data_on_device
    None: on a GPU; select_best: final.pt holds the weights of the best validation Dice."""

    steps: int
    lr: float
    lr_drop_step: int | None = None
    device: str | torch.device = "auto"
    amp: bool = False
    seed: int = 0
    progress: bool = True
    resume: bool = True
    checkpoint_every: int | None = None
    checkpoint_seconds: float | None = None
    log_every: int = LOG_EVERY
    channels_last: bool | None = None
    compile: bool | str | dict = False
    data_on_device: bool | None = None
    select_best: bool = False


def train(model: nn.Module, batches: Iterable[dict], settings: TrainSettings, out_dir: str | Path, config: dict,
          channel_map: ChannelMap | dict, validation: Validation | None = None) -> TrainResult:
    """Train `model` (built and seeded by the caller) as `settings` says on `batches`: a JointBatches
    (drawn by step) or any iterable of dicts x, y, valid, present. Writes out_dir/last.pt at the
    settings' checkpoints, at the end and on Ctrl-C, then losses.csv, training.json (precision,
    validation curve, whether it learnt) and final.pt.
    `config` names 'arch', 'width'; 'dice_batch', 'name', 'loss' (LOSSES), 'lr_schedule' (SCHEDULES)
    and 'warmup_steps' are read. validation: measured at its steps. Losses and weights
    are checked for NaN/inf where losses are read back: under autocast the run goes back to its
    last finite state in float32; in float32 it stops with NonFiniteError, writing no final.pt.
    Under torchrun: DistributedDataParallel (batches drawn by step), rank 0 writes."""
    steps, lr, lr_drop_step, device, seed = (settings.steps, settings.lr, settings.lr_drop_step, settings.device,
                                             settings.seed)
    select_best, log_every, data_on_device = settings.select_best, settings.log_every, settings.data_on_device
    ddp = distributed.setup(device) and distributed.collective()
    rank, world = (distributed.rank(), distributed.world_size()) if ddp else (0, 1)
    seed_everything(rank_seed(seed, rank))  # before anything random (dropout) happens
    device = distributed.local_device(pick_device(device))
    out_dir = Path(out_dir)
    last, final = out_dir / "last.pt", out_dir / "final.pt"
    cmap = channel_map if isinstance(channel_map, ChannelMap) else ChannelMap.from_dict(channel_map)
    config = {"in_channels": len(cmap), **config,
              "steps": steps, "lr": lr, "lr_drop_step": lr_drop_step, "seed": seed}
    name = f"{config.get('name') or config.get('arch')} (seed {seed})"

    # Batches drawn by step number need no state; on a GPU a JointBatches draws them there.
    by_step = callable(getattr(batches, "batch", None))
    if ddp:
        if not by_step:
            raise MMLibError("training on several ranks needs batches drawn by step (a JointBatches): "
                             "each rank draws its share of the step's global batch")
        if world > batches.global_batch:
            raise MMLibError(f"{world} ranks, but a global batch of {batches.global_batch} samples: "
                             f"start at most {batches.global_batch} ranks for this model")
    distributed.on_main(out_dir.mkdir, parents=True, exist_ok=True)
    one_step = TrainStep(model, lr, device, settings.amp, settings.channels_last, settings.compile,
                         config.get("dice_batch", True),
                         data_parallel=ddp, loss=config.get("loss", "dice"))
    lr_plan = LRSchedule(lr, steps, config.get("lr_schedule", "step"), lr_drop_step, int(config.get("warmup_steps", 0)))
    optimizer = one_step.optimizer
    if data_on_device is None:
        data_on_device = device.type == "cuda"
    source = batches
    if data_on_device and isinstance(batches, JointBatches):
        batches = batches.to(device)

    # What this run remembers beside the weights (saved in every checkpoint, for resume).
    losses: list[float] = []
    log = {"curve": [], "fallback": None, "best": None}
    val_steps = set(validation.steps(steps)) if validation else set()

    def restore(state: dict, path: Path | None) -> int:
        for key in log:
            log[key] = state["extra"].get(key, log[key])
        if log["fallback"] is not None:  # a run that fell back to float32 resumes in float32
            one_step.use_float32(log["fallback"]["why"])
        load_weights(model, state, path or out_dir)
        optimizer.load_state_dict(state["optimizer"])
        one_step.scaler.load_state_dict(state["extra"]["scaler"])
        if not by_step and state["extra"]["batches"] is not None and hasattr(batches, "load_state_dict"):
            batches.load_state_dict(state["extra"]["batches"])
        losses[:] = list(state["extra"]["losses"])
        # Rank 0 carries on with the saved torch RNG (one process: bitwise the uninterrupted
        # run); the other ranks' dropout streams are drawn afresh for the step resumed at.
        set_rng_state(state["rng"]) if rank == 0 else seed_everything(rank_seed(seed, rank, state["step"]))
        return state["step"]

    def snapshot(done: int, rng: dict, data: dict | None) -> dict:
        return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "optimizer": copy.deepcopy(optimizer.state_dict()), "step": done, "rng": rng,
                "extra": {"batches": data, "losses": losses[:done], "scaler": one_step.scaler.state_dict(),
                          **copy.deepcopy(log)}}

    def checkpoint(path: Path, done: int, rng: dict, data: dict | None) -> None:
        save_checkpoint(path, model, optimizer, {"lr": lr, "lr_drop_step": lr_drop_step}, done,
                        config, cmap.to_dict(), rng,
                        extra={"batches": data, "losses": losses[:done], "scaler": one_step.scaler.state_dict(),
                               "world_size": world, "precision": one_step.precision, **log})

    # Start fresh, or pick up exactly where out_dir/last.pt left off (every rank from the same
    # file, written by rank 0 of a run with any number of ranks: batches are drawn by step).
    start = 0
    if settings.resume and distributed.on_main(last.exists):
        start = restore(load_checkpoint(last, map_location="cpu"), last)
    # The state a non-finite value under autocast returns to: this one, until this run writes a
    # checkpoint (written only after the finiteness check), then that checkpoint.
    initial = snapshot(start, rng_state(), {"step": start} if by_step else _iterator_state(batches))
    saved_here = False

    pending: list[torch.Tensor] = []  # losses of finished steps, not yet read back

    def read_losses(done: int) -> None:
        # Under DDP a collective: every rank reads back at the same steps. The weights' check
        # rides on the same read-back (no extra wait per step).
        if pending:
            stacked = distributed.all_reduce_sum(torch.stack(pending).float()) if ddp else torch.stack(pending).float()
            weights_ok = bool(model_finite(model))
            values = stacked.cpu().tolist()
            first = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
            if first is not None:
                raise _NonFinite(done - len(values) + first + 1, "loss")
            if not weights_ok:
                raise _NonFinite(done, "weights")
            losses.extend(values)
            bar.set_postfix(loss=f"{sum(values) / len(values):.4f}", lr=f"{optimizer.param_groups[0]['lr']:.0e}")
            pending.clear()

    def validate(done: int) -> None:
        model.eval()
        dice = validation.measure(model)
        model.train()
        log["curve"].append({"step": done, "dice": dice})
        mean = float(np.nanmean(list(dice.values()))) if dice else float("nan")
        if select_best and (log["best"] is None or mean > log["best"]["dice"]):
            log["best"] = {"step": done, "dice": mean,
                           "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}

    bar = tqdm(total=steps, initial=start, disable=not settings.progress or rank != 0, desc="train")
    schedule = CheckpointSchedule(seconds=settings.checkpoint_seconds, steps=settings.checkpoint_every)
    step = done = start
    rng_before, data_before = rng_state(), None  # where the current step began, for Ctrl-C
    try:
        while done < steps:
            batch_iter = None if by_step else iter(batches)
            try:
                for step in range(done, steps):
                    rng_before = rng_state()
                    if by_step:
                        batch = batches.batch(step, rank, world)
                    else:
                        data_before = _iterator_state(batches)
                        batch = next(batch_iter)
                    pending.append(one_step(batch, lr_plan.at(step)))
                    done = step + 1
                    bar.update(1)
                    synced = len(pending) >= log_every or done in val_steps
                    if synced:
                        read_losses(done)
                    if done in val_steps:
                        validate(done)
                    if done < steps:
                        if ddp:  # rank 0's clock decides, at steps where the ranks meet anyway
                            synced = synced or bool(settings.checkpoint_every and done % settings.checkpoint_every == 0)
                            due = synced and distributed.on_main(schedule.due, done)
                        else:
                            due = schedule.due(done)
                        if due:
                            read_losses(done)  # checks the weights: a checkpoint is finite
                            data = {"step": done} if by_step else _iterator_state(batches)
                            distributed.on_main(checkpoint, last, done, rng_state(), data)
                            saved_here = True
                            schedule.saved()
                read_losses(done)
            except _NonFinite as bad:
                pending.clear()
                if one_step.dtype is None:
                    raise NonFiniteError(f"model {name}: non-finite {bad.what} at step {bad.step} of {steps} "
                                         f"({one_step.precision}); no final.pt written", out_dir) from None
                why = f"non-finite {bad.what} under {one_step.precision} autocast by step {bad.step}"
                finite = load_checkpoint(last, map_location="cpu") if saved_here else initial
                warnings.warn(f"model {name}: {why}; going back to step {finite['step']} and training in "
                              f"float32", stacklevel=2)
                done = restore(finite, last if saved_here else None)
                log["fallback"] = {"why": why, "step": bad.step, "resumed_at": done, "from": one_step.precision}
                one_step.use_float32(why)
                bar.reset(total=steps)
                bar.update(done)
    except KeyboardInterrupt:
        if ddp:
            raise  # the other ranks may be gone: no collective; the last checkpoint stands
        # A step cut short is dropped: the checkpoint holds the state it started from.
        finished = done == step + 1
        try:
            read_losses(done)
        except _NonFinite:
            raise KeyboardInterrupt from None  # the last finite checkpoint stands
        del losses[done:]  # one loss per finished step
        data = {"step": done} if by_step else (_iterator_state(batches) if finished else data_before)
        checkpoint(last, done, rng_state() if finished else rng_before, data)
        raise
    finally:
        bar.close()
        one_step.release()
        if batches is not source:
            batches.close()  # the prefetch thread of batches drawn on the device

    if select_best and log["best"] is not None:
        model.load_state_dict(log["best"]["model"])
    learning = judge_learning(log["curve"], validation.floor if validation else {}, losses,
                              finite=bool(model_finite(model)))
    record = {"name": name, "steps": steps, "precision": one_step.precision, "precision_note": one_step.note,
              "self_check": None if one_step.check is None else asdict(one_step.check),
              "fallback": log["fallback"], "validation": log["curve"],
              "floor": validation.floor if validation else {}, "rule": RULE,
              "selected": {"rule": "best validation Dice", "step": log["best"]["step"]} if select_best and log["best"]
              else {"rule": "final weights", "step": done},
              "learning": learning.to_json()}

    def finish(data: dict | None) -> None:
        # final.pt last: its presence means the whole folder is written.
        checkpoint(last, done, rng_state(), data)
        with atomic_path(out_dir / "losses.csv") as tmp:
            pd.DataFrame({"step": range(len(losses)), "loss": losses,
                          "lr": [lr_plan.at(s) for s in range(len(losses))]}).to_csv(tmp, index=False)
        atomic_write_json(out_dir / "training.json", record)
        checkpoint(final, done, rng_state(), data)

    distributed.on_main(finish, {"step": done} if by_step else _iterator_state(batches))
    return TrainResult(final, losses, record)
