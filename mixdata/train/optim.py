"""What trains in a stage, and how: per-module modes, AdamW groups and warm-up + cosine."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import MODULES, StageTrain
from .lora import set_mode


def apply_modes(model: nn.Module, stage: StageTrain, seed: int) -> None:
    """Freeze, fully train or LoRA-adapt each of vision, connector and lm per the stage."""
    for index, name in enumerate(MODULES):
        mode = getattr(stage.trainable, name)
        skip = (model.lm.head,) if name == "lm" else ()  # tied to the embeddings: stays frozen
        set_mode(getattr(model, name), mode, rank=stage.lora.rank, alpha=stage.lora.alpha,
                 seed=seed + index, skip=skip)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("every module is frozen: nothing would train")


def parameter_groups(model: nn.Module, stage: StageTrain, default_lr: float) -> list[dict]:
    """One AdamW group per (module, decay or not). Matrices decay; norms, biases and 1-D
    parameters do not, as in GPT-2 / nanoGPT."""
    groups = []
    for name in MODULES:
        params = [p for p in getattr(model, name).parameters() if p.requires_grad]
        lr = stage.module_lr(name, default_lr)
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        for group_params, weight_decay, suffix in ((decay, stage.weight_decay, ""),
                                                   (no_decay, 0.0, ".no_decay")):
            if group_params:
                groups.append({"params": group_params, "lr": lr, "weight_decay": weight_decay,
                               "name": name + suffix})
    return groups


def build_optimizer(model: nn.Module, stage: StageTrain, default_lr: float) -> torch.optim.AdamW:
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(parameter_groups(model, stage, default_lr), betas=stage.betas,
                             fused=fused or None)


class WarmupCosine:
    """lr multiplier at step s: linear warm-up to 1, then cosine down to `min_ratio` at `total`.

    A plain object with plain fields, so LambdaLR's state_dict stays weights_only-loadable.
    """

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer, stage: StageTrain, total_steps: int):
    warmup = min(stage.warmup, max(0, total_steps - 1))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(warmup, total_steps, stage.min_lr_ratio))
