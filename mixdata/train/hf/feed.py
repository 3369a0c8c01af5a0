"""How the training loop reads family batches for an HF model, and counts their FLOPs.

`HFFeed` is the loop's feed (`loop.StageRun.feed`) for `HFTrainModel`:
- `to_device`: the `ModelBatch` on the device, plus `labels` **shifted** for the loop's
  loss (`labels[:, t]` = the family batch's `labels[:, t + 1]`, -100 at the end). The family
  batch keeps transformers' convention (unshifted, the model would shift); the loop computes
  its loss itself so that it normalises over every supervised token of a whole step
  (accumulation and ranks), as for the built-in model;
- `inputs`: the model's keyword arguments (the batch without labels);
- `meter(model)`: real tokens, images and FLOPs of a step from each batch's `stats`.

FLOPs (`HFFlops`) follow `mixdata.train.metrics`: 2 per weight per token forward, 2 more
for activation gradients where anything upstream trains, 2 more for weight gradients where
the module's weights train. The vision tower is counted per patch (view pixels / patch²,
with self-attention over each view's patches), the connector per image token it emits, the
LM per real token plus causal attention within each document.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..lora import LoRALinear
from ..metrics import pass_factor
from .arch import CONNECTOR, LM, VISION, image_token_id

IGNORE = -100
MATMUL = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Unshifted [B, L] labels -> the targets of each position's logits (mixdata's contract)."""
    shifted = torch.full_like(labels, IGNORE)
    shifted[:, :-1] = labels[:, 1:]
    return shifted


@dataclass(frozen=True)
class HFFlops:
    vision_params: int
    vision_hidden: int
    vision_layers: int
    patch: int
    connector_params: int
    lm_params: int
    lm_hidden: int
    lm_layers: int
    factors: dict

    def step_flops(self, stats, image_tokens: int) -> float:
        patches = stats.view_pixels / self.patch ** 2
        per_view = patches / max(1, stats.num_views)
        attention = 2 * 2 * self.vision_layers * self.vision_hidden * per_view * patches
        vision = self.factors[VISION] * self.vision_params * patches + \
            (3 if self.factors[VISION] > 2 else 1) * attention
        connector = self.factors[CONNECTOR] * self.connector_params * image_tokens
        lm = self.factors[LM] * self.lm_params * stats.num_tokens
        lm += (3 if self.factors[LM] > 2 else 1) * 2 * self.lm_layers * self.lm_hidden * \
            stats.doc_lengths_sq
        return float(vision + connector + lm)


def hf_flops(model) -> HFFlops:
    """The counts of `model` (an HFTrainModel) as configured for this stage."""
    groups = model.group_parameters()
    trains = {g: any(p.requires_grad for _, p in named) for g, named in groups.items()}
    full = {g: trains[g] and all(p.requires_grad for _, p in groups[g] if p.dim() >= 2)
            for g in groups}
    flows = {VISION: trains[VISION], CONNECTOR: trains[VISION] or trains[CONNECTOR],
             LM: any(trains.values())}
    counts = matmul_params(model)
    text = model.hf.config.get_text_config()
    facts = model.vision_facts
    return HFFlops(vision_params=counts[VISION], vision_hidden=facts.hidden,
                   vision_layers=facts.layers, patch=facts.patch,
                   connector_params=counts[CONNECTOR], lm_params=counts[LM],
                   lm_hidden=text.hidden_size, lm_layers=text.num_hidden_layers,
                   factors={g: pass_factor(full[g], flows[g]) for g in groups})


def matmul_params(model) -> dict[str, int]:
    """Weights in matrix multiplies per group: linear and convolution layers (a tied head
    counts, the embedding lookup does not) and LoRA adapters."""
    out = {VISION: 0, CONNECTOR: 0, LM: 0}
    for name, module in model.hf.named_modules():
        if isinstance(module, LoRALinear):
            out[model.arch.group_of(name + ".lora_a")] += module.lora_a.numel() + \
                module.lora_b.numel()
        elif isinstance(module, MATMUL):
            out[model.arch.group_of(name + ".weight")] += module.weight.numel()
    return out


class HFMeter:
    def __init__(self, model):
        self.flops = hf_flops(model)
        self.image_id = image_token_id(model.hf.config)

    def measure(self, batches) -> torch.Tensor:
        """float64 [tokens, images, FLOPs] summed over the step's host batches."""
        tokens = images = flops = 0.0
        for batch in batches:
            stats = batch.stats
            image_tokens = int((batch["input_ids"] == self.image_id).sum())
            tokens += stats.num_tokens
            images += stats.num_images
            flops += self.flops.step_flops(stats, image_tokens)
        return torch.tensor([tokens, images, flops], dtype=torch.float64)


class HFFeed:
    def to_device(self, batch, device: torch.device) -> dict:
        moved = dict(batch.to(device, non_blocking=True))
        moved["labels"] = shift_labels(moved["labels"])
        return moved

    def inputs(self, batch: dict) -> dict:
        return {key: value for key, value in batch.items() if key != "labels"}

    def meter(self, model) -> HFMeter:
        return HFMeter(model)
