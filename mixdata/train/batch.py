"""Turn rendered documents into a batch with the loader's contract (docs/internals.md).

The trainer's eval renders prompts itself and needs the same tensors the loader yields:
labels pre-shifted within each document, positions restarting per document, `doc_ids` -1 on
padding, and one `tile_spans` entry per image view in token order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE = -100


@dataclass(frozen=True)
class Doc:
    ids: np.ndarray                    # int token ids
    loss: np.ndarray                   # uint8, 1 where the token is a supervised target
    views: np.ndarray | None = None    # uint8 [V, T, T, 3], in token order


def shifted_labels(ids: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """labels[t] = ids[t + 1] where token t + 1 is supervised, else -100 (one document)."""
    labels = np.full(len(ids), IGNORE, dtype=np.int64)
    supervised = loss[1:].astype(bool)
    labels[:-1][supervised] = ids[1:][supervised]
    return labels


def image_spans(ids: np.ndarray, image_id: int, tokens_per_tile: int) -> list[tuple[int, int]]:
    """(start, end) of each view's placeholders: runs of image_id cut into tile-sized pieces."""
    spans = []
    is_image = np.concatenate([[False], ids == image_id, [False]])
    edges = np.flatnonzero(is_image[1:] != is_image[:-1])
    for start, end in zip(edges[::2], edges[1::2]):
        if (end - start) % tokens_per_tile:
            raise ValueError(f"a run of {end - start} image placeholders is not a multiple of "
                             f"{tokens_per_tile} tokens per tile")
        spans.extend((s, s + tokens_per_tile) for s in range(start, end, tokens_per_tile))
    return spans


def collate(rows: list[list[Doc]], *, pad_id: int, image_id: int, tokens_per_tile: int,
            length: int | None = None) -> dict:
    """Pack each row's documents back to back; pad all rows to `length` (default: longest)."""
    length = length or max(sum(len(d.ids) for d in row) for row in rows)
    shape = (len(rows), length)
    input_ids = np.full(shape, pad_id, np.int64)
    labels = np.full(shape, IGNORE, np.int64)
    position_ids = np.zeros(shape, np.int64)
    doc_ids = np.full(shape, -1, np.int32)
    spans, views, lengths = [], [], []
    for r, row in enumerate(rows):
        offset = 0
        for d, doc in enumerate(row):
            n = len(doc.ids)
            if offset + n > length:
                raise ValueError(f"row {r} holds {offset + n} tokens, more than {length}")
            input_ids[r, offset:offset + n] = doc.ids
            labels[r, offset:offset + n] = shifted_labels(np.asarray(doc.ids), np.asarray(doc.loss))
            position_ids[r, offset:offset + n] = np.arange(n)
            doc_ids[r, offset:offset + n] = d
            doc_spans = image_spans(np.asarray(doc.ids), image_id, tokens_per_tile)
            found = 0 if doc.views is None else len(doc.views)
            if found != len(doc_spans):
                raise ValueError(f"row {r} document {d}: {found} views for {len(doc_spans)} tiles")
            spans.extend((r, offset + s, offset + e) for s, e in doc_spans)
            if found:
                views.append(doc.views)
            lengths.append(n)
            offset += n
    return _to_tensors(input_ids, labels, position_ids, doc_ids, spans, views, lengths)


def _to_tensors(input_ids, labels, position_ids, doc_ids, spans, views, lengths) -> dict:
    pixels = (torch.from_numpy(np.concatenate(views)).permute(0, 3, 1, 2).contiguous()
              if views else torch.zeros(0, 3, 1, 1, dtype=torch.uint8))
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return {
        "input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels),
        "position_ids": torch.from_numpy(position_ids), "doc_ids": torch.from_numpy(doc_ids),
        "cu_seqlens": torch.from_numpy(cu), "max_seqlen": int(max(lengths)),
        "pixel_values": pixels,
        "tile_spans": torch.tensor(spans, dtype=torch.int64).reshape(-1, 3),
        "num_tokens": int(sum(lengths)), "num_images": len(views),
    }
