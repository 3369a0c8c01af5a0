"""Causal attention that never crosses a packed document boundary.

A packed row holds several documents; `doc_ids[b, t]` names the document of token t (-1 on
padding). Token q may attend to token k when both are in the same document and k <= q.
Padding attends only to padding, so no row of the mask is empty (an empty row gives NaN).

Backends, chosen once per batch by `document_mask`:
- `flex`: `torch.nn.attention.flex_attention` with a block mask built from `doc_ids`. On CUDA
  it is compiled, so masked-out blocks are skipped instead of computed: the fast path.
- `sdpa`: `scaled_dot_product_attention` with a dense boolean mask [B, 1, L, L]; the CPU
  fallback, and what `auto` picks where flex is unavailable. The queries go in chunks of
  `QUERY_CHUNK`, each against the keys from the start of its first token's document only
  (the earliest over the batch's rows) up to its last token: the keys before that start and
  after that end are masked for every query of the chunk, so skipping them changes nothing
  but the time. On the demo's packed rows this halves attention's time on CPU.
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
    # sdpa: (first query, end query, first key) of each query chunk; its keys end at its end
    chunks: tuple[tuple[int, int, int], ...] = ()


QUERY_CHUNK = 64


def dense_document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """bool [B, 1, L, L]: same document and not in the future."""
    length = doc_ids.shape[1]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=doc_ids.device).tril()
    return (same_doc & causal)[:, None]


def document_starts(doc_ids: torch.Tensor) -> torch.Tensor:
    """long [B, L]: the position where token t's document (or run of padding) begins."""
    positions = torch.arange(doc_ids.shape[1], device=doc_ids.device).expand_as(doc_ids)
    begins = torch.ones_like(doc_ids, dtype=torch.bool)
    begins[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return torch.where(begins, positions, 0).cummax(dim=1).values


Chunks = tuple[tuple[int, int, int], ...]


def query_chunks(doc_ids: torch.Tensor, size: int = QUERY_CHUNK) -> Chunks:
    """(q0, q1, k0) per chunk of `size` queries: no query in q0..q1 may attend to a key before
    k0, where the document of token q0 begins (documents are contiguous and in order)."""
    length = doc_ids.shape[1]
    firsts = document_starts(doc_ids)[:, ::size].amin(dim=0).tolist()  # one host sync a batch
    return tuple((q0, min(q0 + size, length), k0) for q0, k0 in zip(range(0, length, size), firsts))


def document_mask(doc_ids: torch.Tensor, backend: str) -> DocumentMask:
    if backend == "sdpa":
        return DocumentMask("sdpa", dense=dense_document_mask(doc_ids),
                            chunks=query_chunks(doc_ids, QUERY_CHUNK))
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
        return _chunked_sdpa(q, k, v, mask)
    if not q.is_cuda and torch.is_grad_enabled() and q.requires_grad:
        raise RuntimeError("attention 'flex' has no backward pass on CPU in torch; train with "
                           "attention 'auto' or 'sdpa' there (flex on CPU is for inference)")
    kernel = _compiled_flex() if q.is_cuda else flex_attention
    return kernel(q, k, v, block_mask=mask.block)


def _chunked_sdpa(q, k, v, mask: DocumentMask) -> torch.Tensor:
    if len(mask.chunks) <= 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense)
    parts = [F.scaled_dot_product_attention(q[:, :, q0:q1], k[:, :, k0:q1], v[:, :, k0:q1],
                                            attn_mask=mask.dense[:, :, q0:q1, k0:q1])
             for q0, q1, k0 in mask.chunks]
    return torch.cat(parts, dim=2)
