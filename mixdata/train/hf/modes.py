"""Stage policy on real modules: `trainable` and `lr` per vision tower, connector and LM.

Groups come from the architecture's parameter-name map (`arch.ARCHS`). `frozen` and `full`
set `requires_grad` on a group's parameters; `lora` freezes them and wraps every
`nn.Linear` of the group in mixdata's `LoRALinear` (adapters drawn from `seed + group
index`, as for the built-in model), except the LM head (tied to the embeddings in most
LMs; the head and embeddings stay frozen under LoRA). Parameters that cannot reach the
loss (a CLIP tower's post-layernorm, layers after LLaVA's `vision_feature_layer`) are found
by one probe backward and frozen, so DDP sees every trainable parameter receive a gradient.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import MODULES, StageTrain
from ..lora import LoRALinear, merge_lora
from .arch import LM, blank_image_loss
from .wrapper import HFTrainModel


def apply_modes(model: HFTrainModel, stage: StageTrain, seed: int) -> list[str]:
    """Set each group's mode; returns the names of parameters frozen because no gradient
    reaches them. ValueError when nothing would train."""
    head = model.hf.get_output_embeddings()
    for index, group in enumerate(MODULES):
        mode = getattr(stage.trainable, group)
        for _, param in model.group_parameters()[group]:
            param.requires_grad_(mode == "full")
        if mode == "lora":
            add_group_lora(model, group, stage.lora.rank, stage.lora.alpha, seed=seed + index,
                           skip=(head,) if group == LM else ())
    unreachable = freeze_unreachable(model)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("every module is frozen: nothing would train")
    return unreachable


def add_group_lora(model: HFTrainModel, group: str, rank: int, alpha: float, *, seed: int,
                   skip: tuple[nn.Module, ...] = ()) -> int:
    """Wrap every nn.Linear of `group` (but those in `skip`) in a LoRALinear; returns how many."""
    generator = torch.Generator().manual_seed(seed)
    count = 0
    for parent_name, parent in list(model.hf.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if type(child) is nn.Linear and not any(child is s for s in skip) and \
                    model.arch.group_of(full + ".weight") == group:
                setattr(parent, name, LoRALinear(child, rank, alpha, generator))
                count += 1
    return count


def freeze_unreachable(model: HFTrainModel) -> list[str]:
    """Freeze trainable parameters that get no gradient from a probe: the LM on two tokens
    plus the vision path on a blank image (`arch.blank_image_loss`, here not multiplied by
    zero). Gradients are cleared after."""
    trained = [(n, p) for n, p in model.hf.named_parameters() if p.requires_grad]
    if not trained:
        return []
    was_training = model.training
    model.train()
    ids = torch.zeros(1, 2, dtype=torch.long, device=model.hf.device)
    with torch.enable_grad():
        total = model.hf(input_ids=ids, use_cache=False).logits.float().sum()
        if any(model.arch.group_of(n) != LM for n, _ in trained):
            total = total + blank_image_loss(model.hf, model.arch, scale=1.0)
        total.backward()
    unreachable = [n for n, p in trained if p.grad is None]
    for name, param in trained:
        param.grad = None
        if name in unreachable:
            param.requires_grad_(False)
    model.train(was_training)
    return unreachable


def parameter_groups(model: HFTrainModel, stage: StageTrain, default_lr: float) -> list[dict]:
    """One AdamW group per (module, decay or not), named like the built-in trainer's:
    matrices decay; norms, biases and 1-D parameters do not."""
    out = []
    for group, named in model.group_parameters().items():
        params = [p for _, p in named if p.requires_grad]
        # LoRA adapters live under the wrapped linears' names, in the same group
        lr = stage.module_lr(group, default_lr)
        for chosen, decay, suffix in (([p for p in params if p.dim() >= 2], stage.weight_decay,
                                       ""), ([p for p in params if p.dim() < 2], 0.0,
                                             ".no_decay")):
            if chosen:
                out.append({"params": chosen, "lr": lr, "weight_decay": decay,
                            "name": group + suffix})
    return out


def build_optimizer(model: HFTrainModel, stage: StageTrain, default_lr: float):
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(parameter_groups(model, stage, default_lr), betas=stage.betas,
                             fused=fused or None)


def merged(model: HFTrainModel) -> HFTrainModel:
    """Fold every LoRA adapter back into its linear layer (in place)."""
    merge_lora(model.hf)
    return model
