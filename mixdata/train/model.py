"""The bundled VLM: vision encoder + connector + decoder LM, and its size presets.

Batch contract (docs/internals.md "Shards and the loader"): the loader has already shifted
`labels`, so `labels[b, t]` is the target of `logits[b, t]` and the model never shifts.
Image features replace the embeddings at `tile_spans` (row, start, end), one span per view,
in the order of `pixel_values`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MixdataError
from .attention import document_mask, select_backend
from .config import ModelSpec
from .connector import ConnectorConfig, build_connector
from .lm import DecoderLM, LMConfig
from .vision import VisionConfig, VisionEncoder

IGNORE = -100


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    vision: VisionConfig
    connector: ConnectorConfig
    lm: LMConfig
    attention: str = "auto"
    lr: float = 1e-3          # default learning rate of this size

    def tokens_per_tile(self, tile: int) -> int:
        return self.connector.tokens_per_tile(self.vision.grid(tile))


PRESETS: dict[str, ModelConfig] = {
    # ~4M parameters: 64 px tiles, patch 8 -> 8x8 patches, pixel shuffle 2 -> 16 tokens per tile.
    # Trained from scratch on CPU: a 2-layer ViT and lr 1e-3 learn to look at the image within
    # a few hundred steps; 4 layers or lr 2e-3 left the LM ignoring images (measured on the demo).
    "tiny": ModelConfig(
        vision=VisionConfig(patch=8, base_tile=64, dim=128, layers=2, heads=4),
        connector=ConnectorConfig(shuffle=2, latents=16, layers=1, heads=4),
        lm=LMConfig(dim=256, layers=4, heads=4, ffn=688), lr=1e-3),
    # ~100M with a byte vocabulary: 224 px tiles, patch 14 -> 16x16, shuffle 2 -> 64 tokens per tile
    "small": ModelConfig(
        vision=VisionConfig(patch=14, base_tile=224, dim=384, layers=12, heads=6),
        connector=ConnectorConfig(shuffle=2, latents=64, layers=2, heads=8),
        lm=LMConfig(dim=768, layers=12, heads=12, ffn=2048), lr=6e-4),
    # ~400M: 378 px tiles, patch 14 -> 27x27, shuffle 3 -> 81 tokens per tile (SmolVLM-2B-like)
    "base": ModelConfig(
        vision=VisionConfig(patch=14, base_tile=378, dim=768, layers=12, heads=12),
        connector=ConnectorConfig(shuffle=3, latents=81, layers=3, heads=16),
        lm=LMConfig(dim=1024, layers=24, heads=16, ffn=2816), lr=3e-4),
}


def model_config(spec: ModelSpec, vocab_size: int) -> ModelConfig:
    """The preset named by `spec`, with its overrides and the tokenizer's vocabulary size."""
    preset = PRESETS[spec.preset]
    connector = preset.connector
    if spec.connector is not None:
        connector = dataclasses.replace(connector, kind=spec.connector)
    if spec.perceiver_latents is not None:
        connector = dataclasses.replace(connector, latents=spec.perceiver_latents)
    vision = preset.vision
    if spec.vision_position is not None:
        vision = dataclasses.replace(vision, fixed_position=spec.vision_position)
    sizes = {"dim": spec.lm_dim, "layers": spec.lm_layers, "ffn": spec.lm_ffn}
    overrides = {field: value for field, value in sizes.items() if value is not None}
    lm = dataclasses.replace(preset.lm, vocab_size=vocab_size, **overrides)
    return dataclasses.replace(preset, vision=vision, connector=connector,
                               attention=spec.attention, lm=lm)


def check_tokens_per_tile(config: ModelConfig, tile: int, expected: int, where: str) -> None:
    """The recipe's `image_tokens_per_tile` must equal what the connector makes of a tile."""
    try:
        produced = config.tokens_per_tile(tile)
    except ValueError as err:
        raise MixdataError(f"{where}: {err}") from None
    if produced != expected:
        raise MixdataError(
            f"{where}: the recipe's image_tokens_per_tile is {expected}, but the model's "
            f"connector makes {produced} tokens from a {tile} px tile ({config.connector.kind}, "
            f"patch {config.vision.patch}); change image_tokens_per_tile or the model")


class VLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.vision = VisionEncoder(config.vision)
        self.connector = build_connector(config.connector, config.vision.dim, config.lm.dim)
        self.lm = DecoderLM(config.lm)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, T, T] float -> [N, tokens_per_tile, lm_dim]."""
        return self.connector(self.vision(pixels))

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, doc_ids: torch.Tensor,
                pixel_values: torch.Tensor | None = None,
                tile_spans: torch.Tensor | None = None, *,
                image_features: torch.Tensor | None = None) -> torch.Tensor:
        """-> logits [B, L, vocab]. pixel_values are normalised floats [N, 3, T, T];
        `image_features` [N, tokens_per_tile, dim], when given, replace running the vision
        path on them (eval reuses one image's features for every answer choice)."""
        embeddings = self.lm.embed(input_ids)
        if image_features is None and pixel_values is not None and pixel_values.shape[0] > 0:
            image_features = self.image_features(pixel_values.to(embeddings.dtype))
        if image_features is not None:
            embeddings = scatter_features(embeddings, image_features, tile_spans)
        elif self.training:
            embeddings = embeddings + self._dummy_image_term(embeddings)
        mask = document_mask(doc_ids, select_backend(self.config.attention, input_ids.device))
        return self.lm(embeddings, position_ids, mask)

    def _dummy_image_term(self, embeddings: torch.Tensor) -> torch.Tensor:
        # A batch with no image still runs the vision tower (on one blank tile, times zero) so
        # every trainable parameter gets a gradient and DDP's all-reduce does not wait forever,
        # and so every rank calls every FSDP unit, frozen ones too (each call all-gathers).
        tile = self.config.vision.base_tile
        blank = torch.zeros(1, 3, tile, tile, device=embeddings.device, dtype=embeddings.dtype)
        return self.image_features(blank).sum() * 0.0


def scatter_features(embeddings: torch.Tensor, features: torch.Tensor,
                     tile_spans: torch.Tensor) -> torch.Tensor:
    """Put view i's features at input positions tile_spans[i] = (row, start, end)."""
    batch, length, dim = embeddings.shape
    views, per_view, _ = features.shape
    if tile_spans is None or tile_spans.shape[0] != views:
        found = None if tile_spans is None else tile_spans.shape[0]
        raise MixdataError(f"{views} image views but {found} tile spans in the batch")
    widths = tile_spans[:, 2] - tile_spans[:, 1]
    if bool((widths != per_view).any()):
        raise MixdataError(
            f"the connector makes {per_view} tokens per tile but the batch has image spans of "
            f"{sorted(set(widths.tolist()))} placeholder tokens (image_tokens_per_tile mismatch)")
    offsets = torch.arange(per_view, device=embeddings.device)
    flat = (tile_spans[:, :1] * length + tile_spans[:, 1:2] + offsets).reshape(-1)
    rows = features.reshape(-1, dim).to(embeddings.dtype)
    merged = embeddings.reshape(-1, dim).index_copy(0, flat, rows)
    return merged.view(batch, length, dim)


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropy over supervised targets, their count); labels are pre-shifted."""
    summed = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                             ignore_index=IGNORE, reduction="sum")
    return summed, (labels != IGNORE).sum()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # shared (tied) weights count once
