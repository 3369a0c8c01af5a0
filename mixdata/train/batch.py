"""Rendered documents -> a batch, through the loader's own row cutting and collate.

Eval renders its prompts itself; packing them into `PackedSequence`s and batching them with
`mixdata.loading.collate` gives exactly the tensors training saw (shifted labels, positions,
tile spans, views), with no second implementation of the contract.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..loading.collate import BatchSpec, collate, cut_row
from ..shards import PackedSequence


@dataclass(frozen=True)
class Doc:
    """One document: token ids, loss flags (1 = supervised target) and its images as
    (ProcessedImage, start, end) with [start, end) the image's layout span in `ids`."""

    ids: np.ndarray
    loss: np.ndarray
    images: tuple = ()

    def prefix(self, length: int) -> Doc:
        """The first `length` tokens; images must lie wholly inside them."""
        if any(end > length for _, _, end in self.images):
            raise ValueError(f"a prefix of {length} tokens would cut an image span")
        return Doc(ids=self.ids[:length], loss=self.loss[:length], images=self.images)

    def extended(self, token: int) -> Doc:
        return Doc(ids=np.append(self.ids, token), loss=np.append(self.loss, 0).astype(np.uint8),
                   images=self.images)


def pack_row(docs: list[Doc], key: str = "row") -> PackedSequence:
    """Documents back to back as one packed sequence, in the shard's in-memory form."""
    ids = np.concatenate([np.asarray(d.ids, np.int32) for d in docs])
    loss = np.concatenate([np.asarray(d.loss, np.uint8) for d in docs])
    offsets = np.concatenate([[0], np.cumsum([len(d.ids) for d in docs])]).astype(np.int32)
    images, meta = [], []
    for index, (doc, base) in enumerate(zip(docs, offsets)):
        for processed, start, end in doc.images:
            images.append((processed.data, processed.ext))
            meta.append({"plan": processed.plan.to_json(), "span": [int(base + start),
                                                                    int(base + end)], "doc": index})
    return PackedSequence(key=key, tokens=ids, loss=loss, docs=offsets, images=images,
                          meta={"docs": [{"source": "eval", "id": key}] * len(docs),
                                "images": meta})


def make_batch(rows: list[list[Doc]], spec: BatchSpec, *, length: int | None = None) -> dict:
    """The loader's batch of these rows, padded to `length` (default: the longest row, not
    seq_len, so short eval prompts do not pay for a full training row)."""
    sequences = [pack_row(row, f"row{i}") for i, row in enumerate(rows)]
    longest = max(len(s.tokens) for s in sequences)
    spec = dataclasses.replace(spec, seq_len=length or longest)
    return collate([cut_row(s, spec) for s in sequences], spec)
