"""Causal attention that never crosses a packed document boundary.

A packed row holds several documents; `doc_ids[b, t]` names the document of token t (-1 on
padding). Token q may attend to token k when both are in the same document and k <= q.
Padding attends only to padding, so no row of the mask is empty (an empty row gives NaN).

Backends, chosen once per batch by `document_mask`:
- `flex`: `torch.nn.attention.flex_attention` with a block mask built from `doc_ids`. On CUDA
  it is compiled, so masked-out blocks are skipped instead of computed: the fast path.
- `sdpa`: `scaled_dot_product_attention` with a dense boolean mask [B, 1, L, L]; the CPU
  fallback, and what `auto` picks where flex is unavailable.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:  # torch < 2.5
    BlockMask = create_block_mask = flex_attention = None


def flex_available() -> bool:
    return flex_attention is not None


def select_backend(requested: str, device: torch.device) -> str:
    """`auto` means flex on CUDA when this torch has it, masked SDPA otherwise."""
    if requested == "auto":
        return "flex" if device.type == "cuda" and flex_available() else "sdpa"
    if requested == "flex" and not flex_available():
        raise RuntimeError("attention 'flex' needs torch >= 2.5 "
                           "(torch.nn.attention.flex_attention)")
    return requested


@dataclass
class DocumentMask:
    """The per-batch mask in the form the chosen backend wants."""

    backend: str
    dense: torch.Tensor | None = None     # sdpa: bool [B, 1, L, L], True = may attend
    block: BlockMask | None = None      # flex


def dense_document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """bool [B, 1, L, L]: same document and not in the future."""
    length = doc_ids.shape[1]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=doc_ids.device).tril()
    return (same_doc & causal)[:, None]


def document_mask(doc_ids: torch.Tensor, backend: str) -> DocumentMask:
    if backend == "sdpa":
        return DocumentMask("sdpa", dense=dense_document_mask(doc_ids))
    batch, length = doc_ids.shape

    def same_doc_causal(b, h, q, k):
        return (doc_ids[b, q] == doc_ids[b, k]) & (k <= q)

    block = create_block_mask(same_doc_causal, batch, None, length, length,
                              device=doc_ids.device, BLOCK_SIZE=_block_size(length))
    return DocumentMask("flex", block=block)


def _block_size(length: int) -> int:
    # flex needs the sequence to be a multiple of its block; short CPU test rows use smaller blocks
    return 128 if length % 128 == 0 else max(b for b in (64, 32, 16, 8, 4, 2, 1) if length % b == 0)


@functools.cache
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: DocumentMask) -> torch.Tensor:
    """q, k, v: [B, heads, L, head_dim] -> [B, heads, L, head_dim]."""
    if mask.backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense)
    if not q.is_cuda and torch.is_grad_enabled() and q.requires_grad:
        raise RuntimeError("attention 'flex' has no backward pass on CPU in torch; train with "
                           "attention 'auto' or 'sdpa' there (flex on CPU is for inference)")
    kernel = _compiled_flex() if q.is_cuda else flex_attention
    return kernel(q, k, v, block_mask=mask.block)
