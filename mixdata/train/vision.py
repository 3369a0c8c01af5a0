"""The vision encoder: a plain pre-norm ViT whose position embeddings follow the tile size.

Position embeddings are learned for a base grid (`base_tile / patch` per side) and resized
bicubically to any other grid, so one encoder serves a 64 px pre-training tile and a larger
high-res tile alike. `fixed_position` adds a fixed 2-D sin-cos code of where each patch sits
in its tile (MAE's form, over fractions of the tile), times that scale: a model trained from
scratch gets position at a strength content cannot drown, where a learned table starts at
std 0.02 beside patch features of ~0.5.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, kw_only=True)
class VisionConfig:
    patch: int
    base_tile: int            # the tile size the position embeddings are learned at
    dim: int
    layers: int
    heads: int
    mlp_ratio: float = 4.0
    fixed_position: float = 0.0   # scale of the fixed sin-cos position code; 0: none

    @property
    def base_grid(self) -> int:
        return self.base_tile // self.patch

    def grid(self, tile: int) -> int:
        """Patches per side for a tile; the tile must be a multiple of the patch."""
        if tile % self.patch:
            raise ValueError(f"tile size {tile} is not a multiple of the vision patch size "
                             f"{self.patch}")
        return tile // self.patch


class VisionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v)  # every patch sees every patch
        x = x + self.proj(attended.transpose(1, 2).reshape(n, length, dim))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class VisionEncoder(nn.Module):
    """[N, 3, T, T] normalised float pixels -> [N, (T/patch)^2, dim] patch features."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.patch_embed = nn.Conv2d(3, config.dim, kernel_size=config.patch, stride=config.patch)
        self.pos_embed = nn.Parameter(torch.randn(1, config.base_grid ** 2, config.dim) * 0.02)
        self.blocks = nn.ModuleList(VisionBlock(config.dim, config.heads, config.mlp_ratio)
                                    for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)

    def position_embeddings(self, grid: int) -> torch.Tensor:
        learned = self.learned_positions(grid)
        if not self.config.fixed_position:
            return learned
        fixed = sincos_positions(grid, self.config.dim, self.config.base_grid, learned.device)
        return learned + self.config.fixed_position * fixed.to(learned.dtype)

    def learned_positions(self, grid: int) -> torch.Tensor:
        base = self.config.base_grid
        if grid == base:
            return self.pos_embed
        square = self.pos_embed.reshape(1, base, base, -1).permute(0, 3, 1, 2)
        resized = F.interpolate(square.float(), size=(grid, grid), mode="bicubic",
                                align_corners=False).to(self.pos_embed.dtype)
        return resized.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        height, width = pixels.shape[-2:]
        if height != width:
            raise ValueError(f"vision tiles must be square, got {width}x{height}")
        grid = self.config.grid(height)
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)
        x = x + self.position_embeddings(grid)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


@lru_cache(maxsize=16)
def sincos_positions(grid: int, dim: int, base_grid: int,
                     device: torch.device | None = None) -> torch.Tensor:
    """[1, grid*grid, dim]: half the channels code a patch's row, half its column, as sin and
    cos of its centre (in base-grid patches, so any grid means the same place in the tile) at
    periods from 4 patches to 4 tiles, geometrically spaced (smooth: near patches get near
    codes). Each channel has unit amplitude. Cached per device, so a step does not rebuild or
    copy it."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos position code needs a dim divisible by 4, got {dim}")
    centres = (torch.arange(grid, dtype=torch.float64) + 0.5) * base_grid / grid
    periods = 4.0 * float(base_grid) ** torch.linspace(0, 1, dim // 4, dtype=torch.float64)
    angles = 2 * torch.pi * centres[:, None] / periods[None, :]          # [grid, dim/4]
    axis = torch.cat([angles.sin(), angles.cos()], dim=1)              # [grid, dim/2]
    rows = axis[:, None, :].expand(grid, grid, -1)
    cols = axis[None, :, :].expand(grid, grid, -1)
    code = torch.cat([rows, cols], dim=-1).reshape(1, grid * grid, dim).float()
    return code.to(device) if device is not None else code
