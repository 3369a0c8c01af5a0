"""Exact matmul FLOPs of a ViT vision tower per image view, for throughput and MFU.

Covers the standard pre-norm ViT: a patch-embedding convolution, then `num_layers` blocks of
fused-or-not q/k/v + output projections (4·h² weights), an MLP of two linear layers
(2·h·intermediate weights) and full (bidirectional) attention over the view's tokens. That
is the bundled ViT, SigLIP / SigLIP2 (Idefics3, SmolVLM, nanoVLM, Prismatic), CLIP
(`extra_tokens=1` for its class token) and DINOv2 without registers. Qwen2-VL's tower (3-D
patches, a patch merger, windowed attention in 2.5) and SigLIP's attention-pooling head
(which VLMs drop) are not this shape.

Counted, per view of `image_size`² pixels with p = (image_size / patch_size)² patches and
n = p + extra_tokens tokens, h = hidden size, i = intermediate size, C = channels:
- patch embedding: 2·p·C·patch²·h forward; its weight gradient as much again when the tower
  trains. It has no input gradient (pixels need none);
- linear layers: 2·n·W forward with W = num_layers·(4h² + 2hi) weights; 2·n·W more for the
  activation gradients when gradients flow through the tower, and 2·n·W for the weight
  gradients when its weights train;
- attention: 4·n²·h per layer forward (scores QKᵀ and values AV); backward is twice that
  whenever gradients flow (no weights of its own).
Not counted, as in PaLM's MFU: biases, norms, activations, softmax, position embeddings.
These are the FLOPs `torch.utils.flop_counter.FlopCounterMode` counts for the same forward
and backward (tests/test_train_flops.py checks both, on the bundled ViT and a SigLIP).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class ViTShape:
    """What a ViT tower's FLOPs depend on (HF vision-config names)."""

    hidden_size: int
    num_layers: int
    patch_size: int
    intermediate_size: int
    num_channels: int = 3
    extra_tokens: int = 0     # class / register tokens beside the patches (CLIP: 1)

    @classmethod
    def from_hf(cls, config, *, extra_tokens: int = 0) -> ViTShape:
        """From a transformers vision config (SiglipVisionConfig, CLIPVisionConfig, the
        `vision_config` of Idefics3Config, ...)."""
        return cls(hidden_size=config.hidden_size, num_layers=config.num_hidden_layers,
                   patch_size=config.patch_size, intermediate_size=config.intermediate_size,
                   num_channels=getattr(config, "num_channels", 3), extra_tokens=extra_tokens)

    @property
    def patch_weights(self) -> int:
        return self.num_channels * self.patch_size ** 2 * self.hidden_size

    @property
    def block_weights(self) -> int:
        """Matmul weights of all blocks: q, k, v, output projections and the two MLP layers."""
        h = self.hidden_size
        return self.num_layers * (4 * h * h + 2 * h * self.intermediate_size)


def vit_view_flops(shape: ViTShape, image_size: int, *, trains_weights: bool,
                   grads_flow: bool) -> float:
    """FLOPs of one `image_size`² view through the tower (module docstring): forward only
    when it is frozen; `grads_flow` adds the activation gradients, `trains_weights` the
    weight gradients (both True for a fully trained tower)."""
    if image_size % shape.patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size "
                         f"{shape.patch_size}")
    patches = (image_size // shape.patch_size) ** 2
    tokens = patches + shape.extra_tokens
    linear_passes = 1 + grads_flow + trains_weights      # forward, input grads, weight grads
    attention_passes = 3 if grads_flow else 1            # backward: grads of both products
    patch_embed = 2 * patches * shape.patch_weights * (1 + trains_weights)
    blocks = 2 * tokens * shape.block_weights * linear_passes
    attention = 4 * tokens * tokens * shape.hidden_size * shape.num_layers * attention_passes
    return float(patch_embed + blocks + attention)


def vit_flops(*, hidden_size: int, num_layers: int, patch_size: int, intermediate_size: int,
              image_size: int, num_channels: int = 3, extra_tokens: int = 0,
              trains_weights: bool = False, grads_flow: bool = False) -> float:
    """`vit_view_flops` from plain numbers, for a model wrapper with its own vision config:
    FLOPs of one view; multiply by the views of a step."""
    shape = ViTShape(hidden_size=hidden_size, num_layers=num_layers, patch_size=patch_size,
                     intermediate_size=intermediate_size, num_channels=num_channels,
                     extra_tokens=extra_tokens)
    return vit_view_flops(shape, image_size, trains_weights=trains_weights, grads_flow=grads_flow)
