"""The training loop of one stage: a pure step function and a thin loop that streams,
times, logs and checkpoints.

Loss normalisation: one optimizer step sees `accumulation` micro-batches on each of
`world_size` ranks. Its loss is Σ token losses / (supervised tokens of the whole step, all
ranks), so every supervised token weighs the same whatever micro-batch or rank it lands on.
DDP and FSDP2 average gradients over ranks, so each rank scales its backward by
world_size / total.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from ..errors import MixdataError
from ..loading import normalize_pixels
from .checkpoint import CHECKPOINT, restore_checkpoint, save_checkpoint, training_state
from .config import ParallelSpec, StageTrain, StepPlan
from .ddp import Dist, all_sum, barrier, gather_objects
from .metrics import (
    MetricsLog,
    doc_lengths_squared,
    flop_model,
    format_summary,
    mfu,
    peak_flops,
    summarize,
)
from .model import IGNORE, token_losses
from .parallel import accumulating, autocast


class BatchSource(Protocol):
    """An endless stream of contract batches whose position can be saved and restored."""

    def __iter__(self) -> Iterator[dict]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass(frozen=True)
class StageRun:
    """Everything one stage's loop needs besides the model and the data."""

    name: str
    spec: StageTrain
    plan: StepPlan
    folder: Path
    checkpoint_every: int
    pixel_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    pixel_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    parallel: ParallelSpec = field(default_factory=ParallelSpec)
    # how batches reach the model (`to_device`, `inputs`, `meter`): None for the batch
    # contract and the built-in VLM (`ContractFeed`); `mixdata.train.hf.feed.HFFeed` for HF
    feed: object | None = None


def to_device(batch: dict, device: torch.device, mean, std) -> dict:
    """Move the tensors the model reads, normalising uint8 pixels on the device."""
    moved = {key: batch[key].to(device, non_blocking=True)
             for key in ("input_ids", "labels", "position_ids", "doc_ids", "tile_spans")}
    moved["pixel_values"] = normalize_pixels(batch["pixel_values"], mean, std, device)
    return moved


CONTRACT_INPUTS = ("input_ids", "position_ids", "doc_ids", "pixel_values", "tile_spans")


def model_inputs(batch: dict) -> tuple:
    return tuple(batch[key] for key in CONTRACT_INPUTS)


def contract_inputs(batch: dict) -> dict:
    """The built-in VLM's forward keyword arguments from a device batch."""
    return dict(zip(CONTRACT_INPUTS, model_inputs(batch)))


class ContractFeed:
    """The batch contract fed to the built-in VLM (pixels normalised on the device)."""

    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def to_device(self, batch: dict, device: torch.device) -> dict:
        return to_device(batch, device, self.mean, self.std)

    def inputs(self, batch: dict) -> dict:
        return contract_inputs(batch)

    def meter(self, model) -> _Meter:
        return _Meter(model)


def train_step(model, optimizer, scheduler, micro_batches: list[dict], *, ctx: Dist,
               grad_clip: float | None, mixed_precision: str = "auto",
               inputs=contract_inputs) -> tuple[float, int]:
    """One optimizer step over device batches; returns (mean loss, supervised tokens), global.
    `mixed_precision` as in `train.parallel` (parallel.autocast decides the context);
    `inputs(batch)` gives the model's keyword arguments; `batch["labels"]` are pre-shifted."""
    local = sum(int((b["labels"] != IGNORE).sum()) for b in micro_batches)
    total = int(all_sum(ctx, torch.tensor(local, dtype=torch.int64, device=ctx.device)))
    if total == 0:
        raise MixdataError("a training step has no supervised token (every label is -100): "
                           "check the stage's loss setting and the shards' loss masks")
    scale = ctx.world_size / total
    summed = torch.zeros((), device=ctx.device)
    for index, batch in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        with accumulating(model, last):
            with autocast(model, ctx.device, mixed_precision):
                logits = model(**inputs(batch))
            loss_sum, _ = token_losses(logits, batch["labels"])
            (loss_sum * scale).backward()
        summed += loss_sum.detach()
    if grad_clip:
        trained = [p for p in model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(trained, grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(all_sum(ctx, summed)) / total, total


class _Meter:
    """Real tokens, image views and FLOPs of the batches of one step, from the host copies."""

    def __init__(self, model):
        self.flops = flop_model(model)

    def measure(self, batches: list[dict]) -> torch.Tensor:
        tokens = sum(int(b["num_tokens"]) for b in batches)
        images = sum(int(b["num_images"]) for b in batches)
        flops = sum(self.flops.step_flops(views=b["pixel_values"].shape[0],
                                          tile=b["pixel_values"].shape[-1],
                                          doc_lengths_sq=doc_lengths_squared(b["doc_ids"]),
                                          tokens=int(b["num_tokens"])) for b in batches)
        return torch.tensor([tokens, images, flops], dtype=torch.float64)


def train_stage(model, wrapped, optimizer, scheduler, data: BatchSource, run: StageRun, *,
                ctx: Dist, log: MetricsLog, resume: bool, stop_after: int | None = None,
                progress: bool = True) -> list[float]:
    """Train `run.plan.steps` optimizer steps, resuming from the stage's checkpoint if asked.

    `model` is the bare module (checkpoints), `wrapped` the one to call (DDP, or the same
    module when it is alone or FSDP-sharded in place).
    `stop_after` ends early after that global step, as a crash would (used by tests).
    Returns the losses of the steps run in this call.
    """
    start = _maybe_resume(model, optimizer, scheduler, data, run, ctx, resume)
    feed = run.feed or ContractFeed(run.pixel_mean, run.pixel_std)
    meter, peak = feed.meter(model), peak_flops(ctx.device)
    stream = iter(data)
    bar = tqdm(total=run.plan.steps, initial=start, desc=f"train {run.name}", unit="step",
               disable=not (progress and ctx.is_main), dynamic_ncols=True)
    losses, records = [], []
    for step in range(start, run.plan.steps):
        began = time.perf_counter()
        host = [next(stream) for _ in range(run.plan.accumulation)]
        device_batches = [feed.to_device(b, ctx.device) for b in host]
        waited = time.perf_counter() - began
        loss, supervised = train_step(wrapped, optimizer, scheduler, device_batches, ctx=ctx,
                                      grad_clip=run.spec.grad_clip,
                                      mixed_precision=run.parallel.mixed_precision,
                                      inputs=feed.inputs)
        elapsed = time.perf_counter() - began
        counts = all_sum(ctx, meter.measure(host)).tolist()
        losses.append(loss)
        records.append({"stage": run.name, "step": step + 1, "loss": round(loss, 6),
                        "lr": {g["name"]: g["lr"] for g in optimizer.param_groups},
                        "supervised_tokens": supervised, "tokens_per_s": counts[0] / elapsed,
                        "images_per_s": counts[1] / elapsed, "data_wait": waited / elapsed,
                        "step_time": elapsed,
                        "mfu": mfu(counts[2], elapsed, peak, ctx.world_size)})
        log.write(records[-1])
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        done = step + 1
        if done % run.checkpoint_every == 0 or done == run.plan.steps:
            _checkpoint(model, optimizer, scheduler, data, run, ctx, done)
        if stop_after is not None and done >= stop_after:
            break
    bar.close()
    if records and ctx.is_main:
        print(format_summary(run.name, summarize(records)))
    return losses


def _maybe_resume(model, optimizer, scheduler, data, run: StageRun, ctx: Dist, resume: bool) -> int:
    path = run.folder / CHECKPOINT
    if not (resume and path.exists()):
        return 0
    payload = restore_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler)
    loaders = payload["loader"]
    if len(loaders) != ctx.world_size:
        raise MixdataError(f"{path} was written by {len(loaders)} ranks; resuming it needs the "
                           f"same number of ranks, not {ctx.world_size}")
    data.load_state_dict(loaders[ctx.rank])
    return int(payload["step"])


def _checkpoint(model, optimizer, scheduler, data, run: StageRun, ctx: Dist, step: int) -> None:
    loaders = gather_objects(ctx, data.state_dict())
    training = training_state(model, optimizer)  # every rank: a collective under FSDP
    if ctx.is_main:
        save_checkpoint(run.folder / CHECKPOINT, training=training,
                        scheduler=scheduler, step=step, loader_state=loaders,
                        extra={"stage": run.name, "steps": run.plan.steps})
    barrier(ctx)  # no rank runs on (or resumes) before the checkpoint is on disk
