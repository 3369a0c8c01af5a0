"""Connectors: vision patch features -> LM embeddings, a fixed number of tokens per tile.

- `PixelShuffleConnector` (default, Idefics3/SmolVLM): fold each f×f block of patches into one
  token with f² times the channels, then a 2-layer MLP. Tokens per tile = (grid / f)².
- `PerceiverConnector` (Idefics2): learned latent queries cross-attend to the patches. Tokens
  per tile = the number of latents, whatever the tile size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, kw_only=True)
class ConnectorConfig:
    # mlp: LLaVA-1.5 / Prismatic's 2-layer GELU MLP on every patch (pixel_shuffle without
    # the shuffle, so `shuffle` is ignored)
    kind: Literal["pixel_shuffle", "mlp", "perceiver"] = "pixel_shuffle"
    shuffle: int = 2          # pixel shuffle factor f
    latents: int = 64         # perceiver: tokens per tile
    layers: int = 2           # perceiver: cross-attention layers
    heads: int = 4            # perceiver

    def tokens_per_tile(self, grid: int) -> int:
        """Output tokens per tile for a vision grid of `grid` × `grid` patches."""
        if self.kind == "perceiver":
            return self.latents
        if grid % self.factor:
            raise ValueError(f"a {grid}x{grid} patch grid cannot be pixel-shuffled by "
                             f"{self.factor}")
        return (grid // self.factor) ** 2

    @property
    def factor(self) -> int:
        """The pixel shuffle factor the connector applies (1 for `mlp`)."""
        return 1 if self.kind == "mlp" else self.shuffle


def pixel_shuffle(x: torch.Tensor, factor: int) -> torch.Tensor:
    """[N, g*g, C] -> [N, (g/f)^2, f*f*C], folding each f×f patch block into channels."""
    n, length, channels = x.shape
    grid = round(length ** 0.5)
    out = grid // factor
    x = x.reshape(n, out, factor, out, factor, channels).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, out * out, factor * factor * channels)


class PixelShuffleConnector(nn.Module):
    def __init__(self, config: ConnectorConfig, vision_dim: int, lm_dim: int):
        super().__init__()
        self.factor = config.factor
        self.fc1 = nn.Linear(vision_dim * self.factor ** 2, lm_dim)
        self.fc2 = nn.Linear(lm_dim, lm_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(pixel_shuffle(features, self.factor))))


class CrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_latents = nn.LayerNorm(dim)
        self.norm_inputs = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, latents: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        n, count, dim = latents.shape
        query = self.norm_latents(latents)
        # Idefics2 lets latents attend to the inputs and to themselves
        context = torch.cat([self.norm_inputs(inputs), query], dim=1)
        q = self.q(query).view(n, count, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(n, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, count, dim)
        latents = latents + self.out(attended)
        return latents + self.fc2(F.gelu(self.fc1(self.norm_mlp(latents))))


class PerceiverConnector(nn.Module):
    def __init__(self, config: ConnectorConfig, vision_dim: int, lm_dim: int):
        super().__init__()
        self.proj = nn.Linear(vision_dim, lm_dim)
        self.latents = nn.Parameter(torch.randn(config.latents, lm_dim) * 0.02)
        self.blocks = nn.ModuleList(CrossAttentionBlock(lm_dim, config.heads)
                                    for _ in range(config.layers))
        self.norm = nn.LayerNorm(lm_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        inputs = self.proj(features)
        latents = self.latents.unsqueeze(0).expand(features.shape[0], -1, -1)
        for block in self.blocks:
            latents = block(latents, inputs)
        return self.norm(latents)


def build_connector(config: ConnectorConfig, vision_dim: int, lm_dim: int) -> nn.Module:
    cls = PerceiverConnector if config.kind == "perceiver" else PixelShuffleConnector
    return cls(config, vision_dim, lm_dim)
