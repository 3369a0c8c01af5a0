"""Setting up one stage: the model from the previous stage's weights, what trains, the
optimizer and schedule; and finishing it: LoRA merged, final weights saved."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import FINAL, load_weights, save_weights
from .config import StageTrain, StepPlan
from .ddp import Dist, wrap_model
from .lora import merge_lora
from .model import VLM, ModelConfig
from .optim import apply_modes, build_optimizer, build_scheduler


@dataclass
class StageState:
    model: VLM              # the bare module: checkpoints and eval use it
    wrapped: object         # what the loop calls: DDP(model) or model itself
    optimizer: object
    scheduler: object


def init_model(config: ModelConfig, seed: int) -> VLM:
    """Build the model with its init drawn from `seed`; the caller's RNG state is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)   # every rank draws the same init
        return VLM(config)


def start_stage(config: ModelConfig, spec: StageTrain, plan: StepPlan, *, seed: int, ctx: Dist,
                init_from: Path | None) -> StageState:
    """A model for this stage: same init on every rank (seeded), then the previous weights."""
    model = init_model(config, seed)
    if init_from is not None:
        load_weights(init_from, model)
    apply_modes(model, spec, seed=seed)
    model.to(ctx.device)
    optimizer = build_optimizer(model, spec, default_lr=config.lr)
    scheduler = build_scheduler(optimizer, spec, plan.steps)
    return StageState(model, wrap_model(ctx, model), optimizer, scheduler)


def finish_stage(state: StageState, folder: Path, ctx: Dist, extra: dict) -> Path:
    """Merge LoRA adapters into the weights and save them as the stage's final.pt."""
    merge_lora(state.model)
    path = folder / FINAL
    if ctx.is_main:
        save_weights(path, state.model, extra=extra)
    return path
