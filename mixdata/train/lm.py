"""The decoder LM: pre-norm transformer with RMSNorm, rotary positions and SwiGLU.

Positions come from the batch (`position_ids`, restarting at 0 per packed document), and the
attention mask keeps each document to itself (see attention.py), so a packed row computes
exactly what its documents would compute alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import DocumentMask, attend


@dataclass(frozen=True, kw_only=True)
class LMConfig:
    dim: int
    layers: int
    heads: int
    ffn: int                  # SwiGLU hidden size
    vocab_size: int = 0       # set from the tokenizer at build time
    rope_theta: float = 10000.0
    tie_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


def rotary_tables(position_ids: torch.Tensor, head_dim: int, theta: float):
    """cos, sin: [B, 1, L, head_dim/2] for the given integer positions."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=position_ids.device,
                                            dtype=torch.float32) / head_dim)
    angles = position_ids.float()[..., None] * inv_freq
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (first half, second half) of x [B, heads, L, head_dim]."""
    first, second = x.float().chunk(2, dim=-1)
    rotated = torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)
    return rotated.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.heads = config.heads
        self.q = nn.Linear(config.dim, config.dim, bias=False)
        self.k = nn.Linear(config.dim, config.dim, bias=False)
        self.v = nn.Linear(config.dim, config.dim, bias=False)
        self.o = nn.Linear(config.dim, config.dim, bias=False)

    def forward(self, x, rotary, mask: DocumentMask) -> torch.Tensor:
        batch, length, dim = x.shape
        split = lambda t: t.view(batch, length, self.heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        out = attend(q, k, v, mask)
        return self.o(out.transpose(1, 2).reshape(batch, length, dim))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class DecoderBlock(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.dim)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.dim)
        self.mlp = SwiGLU(config.dim, config.ffn)

    def forward(self, x, rotary, mask: DocumentMask) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rotary, mask)
        return x + self.mlp(self.mlp_norm(x))


class DecoderLM(nn.Module):
    """Embeddings in, logits out; `embed` is separate so image features can be scattered in."""

    def __init__(self, config: LMConfig):
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("LMConfig.vocab_size must be set from the tokenizer")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(DecoderBlock(config) for _ in range(config.layers))
        self.norm = RMSNorm(config.dim)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight

    def forward(self, embeddings: torch.Tensor, position_ids: torch.Tensor,
                mask: DocumentMask) -> torch.Tensor:
        """embeddings [B, L, dim], position_ids [B, L] -> logits [B, L, vocab]."""
        rotary = rotary_tables(position_ids, self.config.head_dim, self.config.rope_theta)
        x = embeddings
        for block in self.blocks:
            x = block(x, rotary, mask)
        return self.head(self.norm(x))
