"""Packed sequences -> one training batch (pure), and the on-device pixel normalisation.

Batch contract (docs/internals.md "Shards and the loader"), B rows of L = seq_len tokens:
- `input_ids` int64 [B, L], padded with the tokenizer's pad id;
- `labels` int64 [B, L], **already shifted**: `labels[b, t]` is the target of the logits at
  position t, i.e. `input_ids[b, t + 1]` when that token is supervised (loss flag 1) and in
  the same document as t, else -100. The model must not shift again;
- `position_ids` int64 [B, L], 0 at the start of each document, and 0, 1, ... over padding;
- `doc_ids` int32 [B, L], the document index within its row, -1 on padding;
- `cu_seqlens` int32 [S + 1], segment boundaries over the flattened B * L tokens, where the
  segments are the documents and each row's padding run; `max_seqlen` their longest length;
- `pixel_values` uint8 [N, 3, T, T], every view of every image, in token order. Its memory
  is channels-last (a permuted view of [N, T, T, 3], as images decode), which saves a copy
  per batch; `normalize_pixels` or `.contiguous()` on the device give NCHW if needed;
- `tile_spans` int64 [N, 3], (row, start, end) of each view's placeholders:
  `input_ids[row, start:end]` are all the image id and `end - start` is the tokens per view;
- `num_tokens` (non-pad tokens) and `num_images` (ints).
"""
from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import RecordRejected
from ..image import ImagePlan
from ..image.placeholders import tokens_per_view
from ..image.tiles import check_size, cut_tiles, processed_size, view_shape
from ..shards import PackedSequence, ShardError


@dataclass(frozen=True)
class BatchSpec:
    """What turning sequences into a batch needs from the manifest."""

    seq_len: int
    pad_id: int
    image_id: int
    tokens_per_tile: int
    tile: int  # view side, for the [0, 3, T, T] pixel_values of a batch without images
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # InternVL's dialect writes an image's views as one run of image tokens, view after view:
    # such a run is split into runs of tokens_per_tile (exact: the model fills them in order)
    views_in_runs: bool = False


@dataclass(frozen=True)
class Row:
    """One sequence with its images checked: per image its encoded bytes and plan, and the
    placeholder (start, end) of each of its views [V, 2]. `collate` decodes each image just
    before cutting its views into the batch, so one decoded image is alive at a time."""

    seq: PackedSequence
    images: list[tuple[bytes, ImagePlan]]
    spans: list[np.ndarray]


class RowFailed(ShardError):
    """An image of row `row` of a batch passed `cut_row` but did not decode."""

    def __init__(self, row: int, message: str) -> None:
        super().__init__(message)
        self.row = row


def placeholder_runs(tokens: np.ndarray, start: int, end: int, image_id: int) -> np.ndarray:
    """[k, 2] (start, end) of the maximal runs of `image_id` within tokens[start:end]."""
    flags = np.zeros(end - start + 2, dtype=np.int8)
    flags[1:-1] = tokens[start:end] == image_id
    edges = np.flatnonzero(np.diff(flags))
    return edges.reshape(-1, 2) + start


def split_runs(runs: np.ndarray, size: int) -> np.ndarray:
    """[k, 2] runs cut into consecutive runs of `size`; a run that is not a multiple of it is
    kept whole (the caller's count check then rejects it)."""
    out = []
    for start, end in runs.tolist():
        if (end - start) % size:
            out.append((start, end))
        else:
            out += [(a, a + size) for a in range(start, end, size)]
    return np.asarray(out, np.int64).reshape(-1, 2)


def cut_row(seq: PackedSequence, spec: BatchSpec) -> Row:
    """Check every image of `seq` (plan, header size) and its views against its placeholders.

    Raises ShardError when an image or its token span disagrees with its plan.
    """
    if len(seq.tokens) > spec.seq_len:
        raise ShardError(f"sample {seq.key!r} holds {len(seq.tokens)} tokens, above seq_len "
                         f"{spec.seq_len}")
    images, spans = [], []
    for meta, (data, _) in zip(seq.meta.get("images", []), seq.images):
        try:
            plan = ImagePlan.from_json(meta["plan"])
            shape = view_shape(plan)
            data = bytes(data)
            check_size(*processed_size(data), plan)
            start, end = meta["span"]
        except (KeyError, TypeError, ValueError, OSError, RecordRejected) as err:
            raise ShardError(f"sample {seq.key!r}: image {len(images)} cannot be cut: {err}") \
                from None
        if shape[1:3] != (spec.tile, spec.tile):
            raise ShardError(f"sample {seq.key!r}: image {len(images)} has views of "
                             f"{shape[2]}x{shape[1]} px, the stage's tile is {spec.tile}")
        runs = placeholder_runs(seq.tokens, start, end, spec.image_id)
        per_view = tokens_per_view(plan, spec.tokens_per_tile)
        if spec.views_in_runs:
            runs = split_runs(runs, per_view)
        if len(runs) != shape[0] or np.any(runs[:, 1] - runs[:, 0] != per_view):
            raise ShardError(f"sample {seq.key!r}: an image of {shape[0]} views has "
                             f"placeholder runs {(runs[:, 1] - runs[:, 0]).tolist()}, "
                             f"expected {per_view} each")
        images.append((data, plan))
        spans.append(runs)
    return Row(seq, images, spans)


def row_arrays(seq: PackedSequence, length: int) -> tuple[np.ndarray, ...]:
    """labels (shifted), position_ids and doc_ids of one row (see the module docstring)."""
    n = len(seq.tokens)
    doc_of = np.repeat(np.arange(len(seq.docs) - 1), np.diff(seq.docs))
    labels = np.full(length, -100, np.int64)
    target = (seq.loss[1:] == 1) & (doc_of[1:] == doc_of[:-1])
    labels[:n - 1][target] = seq.tokens[1:][target]
    positions = np.empty(length, np.int64)
    positions[:n] = np.arange(n) - seq.docs[doc_of]
    positions[n:] = np.arange(length - n)
    doc_ids = np.full(length, -1, np.int32)
    doc_ids[:n] = doc_of
    return labels, positions, doc_ids


def fresh_pixels(shape: tuple[int, ...]) -> torch.Tensor:
    # numpy's allocation, not torch.empty: the latter raised peak RSS by ~40 MiB in the bench
    return torch.from_numpy(np.empty(shape, np.uint8))


def shared_pixels(shape: tuple[int, ...]) -> torch.Tensor:
    """In a DataLoader worker: shared memory, as torch's default_collate does, so sending the
    batch to the main process copies nothing."""
    return torch.empty(shape, dtype=torch.uint8).share_memory_()


class PixelMemory:
    """Pixel buffers of the process that iterates without DataLoader workers, each reused
    once the caller has dropped every tensor of the batch it was lent to.

    Fresh memory costs the kernel a page fault and a zeroing per page: about 0.8 ms per
    12-tile image of 1456 px, a tenth of its decode (BENCHMARKS.md, Loader). A lent buffer
    is tracked by a weak reference to the array torch wraps; any tensor or array derived from
    the batch keeps that array alive, so a buffer is only reused when nothing can see it.
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self.slots: list[tuple[np.ndarray, weakref.ref | None]] = []

    def __call__(self, shape: tuple[int, ...]) -> torch.Tensor:
        size = math.prod(shape)
        if not size:
            return fresh_pixels(shape)
        free = [i for i, (_, lent) in enumerate(self.slots) if lent is None or lent() is None]
        for index in free:
            if self.slots[index][0].size >= size:
                return self._lend(index, shape)
        base = np.empty(size + size // 4, np.uint8)  # headroom: batches vary in views
        if len(self.slots) < self.keep:
            self.slots.append((base, None))
            return self._lend(len(self.slots) - 1, shape)
        if free:
            self.slots[free[0]] = (base, None)
            return self._lend(free[0], shape)
        return torch.from_numpy(base[:size].reshape(shape))  # all lent: not pooled

    def _lend(self, index: int, shape: tuple[int, ...]) -> torch.Tensor:
        base = self.slots[index][0]
        view = base[:math.prod(shape)].reshape(shape)
        self.slots[index] = (base, weakref.ref(view))
        return torch.from_numpy(view)


def collate(rows: list[Row], spec: BatchSpec,
            allocate: Callable[[tuple[int, ...]], torch.Tensor] = fresh_pixels) -> dict:
    """The batch dict of `rows` (see the module docstring); `allocate(shape)` gives the uint8
    pixel tensor (`fresh_pixels`, `shared_pixels` or a `PixelMemory`)."""
    length, count = spec.seq_len, len(rows)
    input_ids = np.full((count, length), spec.pad_id, np.int64)
    labels = np.empty((count, length), np.int64)
    positions = np.empty((count, length), np.int64)
    doc_ids = np.empty((count, length), np.int32)
    bounds, spans = [], []
    for b, row in enumerate(rows):
        n = len(row.seq.tokens)
        input_ids[b, :n] = row.seq.tokens
        labels[b], positions[b], doc_ids[b] = row_arrays(row.seq, length)
        bounds.append(b * length + row.seq.docs[:-1])
        bounds.append([b * length + n] if n < length else [])
        spans += [np.column_stack([np.full(len(runs), b), runs]) for runs in row.spans]
    cu_seqlens = np.concatenate([*bounds, [count * length]]).astype(np.int32)
    views = sum(plan.num_views for row in rows for _, plan in row.images)
    pixels = allocate((views, spec.tile, spec.tile, 3))
    out, first = pixels.numpy(), 0
    for b, row in enumerate(rows):
        for index, (data, plan) in enumerate(row.images):
            try:
                cut_tiles(data, plan, out[first:first + plan.num_views])
            except (ValueError, OSError) as err:
                raise RowFailed(b, f"sample {row.seq.key!r}: image {index} does not decode: "
                                   f"{err}") from None
            first += plan.num_views
    spans = np.concatenate(spans) if spans else np.zeros((0, 3), np.int64)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "labels": torch.from_numpy(labels),
        "position_ids": torch.from_numpy(positions),
        "doc_ids": torch.from_numpy(doc_ids),
        "cu_seqlens": torch.from_numpy(cu_seqlens),
        "max_seqlen": int(np.diff(cu_seqlens).max()),
        "pixel_values": pixels.permute(0, 3, 1, 2),
        "tile_spans": torch.from_numpy(spans.astype(np.int64)),
        "num_tokens": int(sum(len(row.seq.tokens) for row in rows)),
        "num_images": int(sum(len(row.seq.images) for row in rows)),
    }


def normalize_pixels(pixel_values: torch.Tensor, mean, std, device=None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [N, 3, T, T] -> `dtype` `(x / 255 - mean) / std` on `device`, converted there
    once (the copy to the device stays uint8, a quarter of the float bytes)."""
    pixels = pixel_values.to(device=device, non_blocking=True)
    scale = torch.tensor([1 / (255 * s) for s in std], device=pixels.device, dtype=torch.float32)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], device=pixels.device,
                         dtype=torch.float32)
    out = pixels.to(torch.float32).mul_(scale.view(1, 3, 1, 1)).sub_(shift.view(1, 3, 1, 1))
    return out.to(dtype)
