"""Tiny built stages for shard and loader tests: synthetic packed sequences with real JPEGs.

Token ids: 0-255 are text, then the specials below. An image is laid out as the image step
does: per view a marker and `TOKENS_PER_TILE` placeholders, a newline after each grid row.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from mixdata.shards import PackedSequence, write_manifest, write_shard

SEQ_LEN = 96
TILE = 16
TOKENS_PER_TILE = 4
SPECIAL_IDS = {"<pad>": 256, "<image>": 257, "<s>": 258, "</s>": 259, "<view>": 260}
PAD, IMAGE, MARKER, NEWLINE = 256, 257, 260, 10
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def jpeg_bytes(rng: np.random.Generator, width: int, height: int) -> bytes:
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def image_plan(rows: int, cols: int) -> dict:
    """An ImagePlan.to_json() of an idefics3-style grid with the global view after."""
    tiled = rows * cols > 1
    return {"resized_size": [cols * TILE, rows * TILE], "rows": rows, "cols": cols,
            "tile": TILE, "global_view": "after" if tiled else "none",
            "num_tiles": rows * cols if tiled else 0, "num_views": rows * cols + tiled}


def image_tokens(plan: dict) -> list[int]:
    view = [MARKER] + [IMAGE] * TOKENS_PER_TILE
    if plan["num_tiles"] == 0:
        return view
    grid = []
    for _ in range(plan["rows"]):
        grid += view * plan["cols"] + [NEWLINE]
    return grid + view


def _document(rng, budget: int, with_image: bool):
    """(ids, loss, images [(bytes, ext, plan, start, end)]) of one document within budget."""
    ids, loss, images = [], [], []
    if with_image:
        rows, cols = (1, 2) if rng.random() < 0.5 else (1, 1)
        plan = image_plan(rows, cols)
        span = image_tokens(plan)
        if len(span) + 2 <= budget:
            width, height = plan["resized_size"]
            images.append((jpeg_bytes(rng, width, height), "jpg", plan, 0, len(span)))
            ids += span
            loss += [0] * len(span)
    text = int(rng.integers(1, max(2, budget - len(ids))))
    ids += rng.integers(32, 127, size=text).tolist()
    loss += (rng.random(text) < 0.7).astype(int).tolist()
    return ids, loss, images


def fixture_sequence(rng: np.random.Generator, key: str, image_rate: float = 0.6
                     ) -> PackedSequence:
    """One packed sequence of 1-3 documents, sometimes with images, at most SEQ_LEN tokens."""
    tokens, loss, offsets, images, doc_meta, image_meta = [], [], [0], [], [], []
    for doc in range(int(rng.integers(1, 4))):
        budget = SEQ_LEN - len(tokens)
        if budget < 4:
            break
        ids, mask, doc_images = _document(rng, budget, rng.random() < image_rate)
        base = len(tokens)
        for data, ext, plan, start, end in doc_images:
            images.append((data, ext))
            image_meta.append({"plan": plan, "span": [base + start, base + end], "doc": doc})
        tokens += ids
        loss += mask
        offsets.append(len(tokens))
        doc_meta.append({"source": "synthetic", "id": f"{key}-{doc}"})
    return PackedSequence(key=key, tokens=np.asarray(tokens, np.int32),
                          loss=np.asarray(loss, np.uint8), docs=np.asarray(offsets, np.int32),
                          images=images, meta={"docs": doc_meta, "images": image_meta})


def fixture_manifest(shard_infos: list, seed: int) -> dict:
    return {
        "format": "mixdata-shards-v1", "seed": seed, "seq_len": SEQ_LEN,
        "image_tokens_per_tile": TOKENS_PER_TILE,
        "tokenizer": {"identity": "fixture", "sha256": "0" * 64, "vocab_size": 261,
                      "special_ids": dict(SPECIAL_IDS)},
        "image_policy": {"preset": "idefics3", "tile": TILE, "mean": list(MEAN),
                         "std": list(STD)},
        "shards": [{"name": i.name, "samples": i.samples, "tokens": i.tokens,
                    "images": i.images, "bytes": i.bytes, "sha256": i.sha256}
                   for i in shard_infos],
    }


def write_stage(folder: Path, shard_sizes: list[int], seed: int = 0,
                image_rate: float = 0.6) -> dict:
    """Write shards of the given sample counts and the manifest into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    infos, index = [], 0
    for number, size in enumerate(shard_sizes):
        sequences = [fixture_sequence(rng, f"s{seed}-{index + i:06d}", image_rate)
                     for i in range(size)]
        index += size
        infos.append(write_shard(folder / f"shard-{number:06d}.tar", sequences))
    manifest = fixture_manifest(infos, seed)
    write_manifest(folder, manifest)
    return manifest
