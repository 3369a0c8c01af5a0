"""Per-module training modes: frozen, full, or LoRA adapters on every linear layer.

LoRA (Hu et al. 2021): y = W x + (alpha / rank) · B A x with W frozen, A random and B zero, so
an adapted model starts out computing exactly what the base model computes. At the end of a
stage the adapters are merged into W, so the next stage starts from plain weights and may
choose its own mode.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        # A as nn.Linear's default init (uniform ±1/sqrt(in)), drawn from the passed generator
        bound = 1.0 / math.sqrt(base.in_features)
        init = torch.rand(rank, base.in_features, generator=generator) * 2 * bound - bound
        self.lora_a = nn.Parameter(init.to(base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (x @ self.lora_a.t().to(x.dtype)) @ self.lora_b.t().to(x.dtype)
        return self.base(x) + update * self.scale

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.lora_b @ self.lora_a) * self.scale
        return self.base


def add_lora(module: nn.Module, rank: int, alpha: float, *, seed: int,
             skip: tuple[nn.Module, ...] = ()) -> int:
    """Wrap every nn.Linear under `module` (except those in `skip`) in a LoRALinear.

    Returns how many were wrapped. Adapter init comes from a generator seeded with `seed`.
    """
    generator = torch.Generator().manual_seed(seed)
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and not any(child is s for s in skip):
                setattr(parent, name, LoRALinear(child, rank, alpha, generator))
                count += 1
    return count


def merge_lora(module: nn.Module) -> int:
    """Fold every LoRALinear under `module` back into a plain nn.Linear."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
                count += 1
    return count


def set_mode(module: nn.Module, mode: str, *, rank: int, alpha: float, seed: int,
             skip: tuple[nn.Module, ...] = ()) -> None:
    """frozen: nothing trains; full: everything trains; lora: only new adapters train.

    `skip` names linear layers that stay plain under LoRA (the LM head tied to the embeddings).
    """
    for param in module.parameters():
        param.requires_grad_(mode == "full")
    if mode == "lora":
        add_lora(module, rank, alpha, seed=seed, skip=skip)
