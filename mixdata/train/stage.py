"""Setting up one stage: the model from the previous stage's weights, what trains, its
parallel layout (`parallel.parallelize`), the optimizer and schedule; and finishing it:
LoRA merged, final weights saved."""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import FINAL, load_weights, save_weights
from .config import ParallelSpec, StageTrain, StepPlan
from .ddp import Dist
from .lora import merge_lora
from .model import VLM, ModelConfig
from .optim import apply_modes, build_optimizer, build_scheduler
from .parallel import is_sharded, parallelize, whole_model


@dataclass
class StageState:
    model: VLM              # the bare module: checkpoints and eval use it (sharded under FSDP)
    wrapped: object         # what the loop calls: DDP(model) or model itself
    optimizer: object
    scheduler: object
    rebuild: Callable[[], torch.nn.Module] | None = None  # FSDP: a whole twin, for finish_stage


def init_model(config: ModelConfig, seed: int) -> VLM:
    """Build the model with its init drawn from `seed`; the caller's RNG state is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)   # every rank draws the same init
        return VLM(config)


def stage_model(config: ModelConfig, spec: StageTrain, seed: int, init_from: Path | None) -> VLM:
    """The stage's model on CPU: seeded init, the previous weights, the stage's modes."""
    model = init_model(config, seed)
    if init_from is not None:
        load_weights(init_from, model)
    apply_modes(model, spec, seed=seed)
    return model


def start_stage(config: ModelConfig, spec: StageTrain, plan: StepPlan, *, seed: int, ctx: Dist,
                init_from: Path | None, parallel: ParallelSpec | None = None) -> StageState:
    """A model for this stage: same init on every rank (seeded), then the previous weights,
    laid out over the ranks per `parallel` (default: DDP, no checkpointing, auto precision)."""
    model = stage_model(config, spec, seed, init_from).to(ctx.device)
    wrapped = parallelize(model, ctx, parallel or ParallelSpec())
    # after parallelize: FSDP2 has replaced the parameters by their shards
    optimizer = build_optimizer(model, spec, default_lr=config.lr)
    scheduler = build_scheduler(optimizer, spec, plan.steps)
    rebuild = None  # FSDP: how finish_stage makes a whole twin to gather the shards into
    if is_sharded(model):
        rebuild = functools.partial(stage_model, config, spec, seed, None)
    return StageState(model, wrapped, optimizer, scheduler, rebuild)


def finish_stage(state: StageState, folder: Path, ctx: Dist, extra: dict) -> Path:
    """Merge LoRA adapters into the weights and save them as the stage's final.pt. Under FSDP
    every rank must call it: the shards are gathered into a whole model on the main rank,
    which becomes `state.model` there (eval uses it)."""
    if state.rebuild is not None:
        whole = whole_model(state.model, state.rebuild, ctx)
        if whole is None:
            return folder / FINAL
        state.model = whole
    merge_lora(state.model)
    path = folder / FINAL
    if ctx.is_main:
        save_weights(path, state.model, extra=extra)
    return path
