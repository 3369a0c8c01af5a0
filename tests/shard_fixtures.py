"""Tiny built stages for shard and loader tests: synthetic packed sequences with real JPEGs.

Token ids: 0-255 are text bytes, then the specials (`<pad>`, `<s>`, `</s>`, then every name
of `mixdata.image.special_tokens()`). Each image goes through the real image step
(`mixdata.image.processing`) and is laid out with `mixdata.image.placeholders`, as the build does.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from mixdata.image import ImagePolicy, layout, process, special_tokens, view_limits
from mixdata.manifest import (
    Geometry,
    Manifest,
    MixtureInfo,
    PackingInfo,
    RecipeInfo,
    ShardEntry,
    write_manifest,
)
from mixdata.shards import PackedSequence, write_shard
from mixdata.tokens.dialect import Dialect, stage_geometry

SEQ_LEN = 128
TOKENS_PER_TILE = 4
POLICY = ImagePolicy(preset="idefics3", longest_edge=32, tile=16, mean=(0.5, 0.5, 0.5),
                     std=(0.25, 0.25, 0.25))
TILE = POLICY.tile
SPECIAL_IDS = {name: 256 + i for i, name in
               enumerate(["<pad>", "<s>", "</s>", *special_tokens()])}
PAD, IMAGE = SPECIAL_IDS["<pad>"], SPECIAL_IDS["<image>"]


def jpeg_bytes(rng: np.random.Generator, width: int, height: int) -> bytes:
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def image_tokens(plan) -> list[int]:
    return [10 if symbol == "\n" else SPECIAL_IDS[symbol]
            for symbol in layout(plan, TOKENS_PER_TILE)]


def _document(rng, budget: int, with_image: bool):
    """(ids, loss, images [(ProcessedImage, start, end)]) of one document within budget."""
    ids, loss, images = [], [], []
    if with_image:
        width, height = (int(v) for v in rng.integers(8, 48, size=2))
        processed = process(jpeg_bytes(rng, width, height), POLICY)
        span = image_tokens(processed.plan)
        if len(span) + 2 <= budget:
            images.append((processed, 0, len(span)))
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
        for processed, start, end in doc_images:
            images.append((processed.data, processed.ext))
            image_meta.append({"plan": processed.plan.to_json(),
                               "span": [base + start, base + end], "doc": doc})
        tokens += ids
        loss += mask
        offsets.append(len(tokens))
        doc_meta.append({"source": "synthetic", "id": f"{key}-{doc}"})
    return PackedSequence(key=key, tokens=np.asarray(tokens, np.int32),
                          loss=np.asarray(loss, np.uint8), docs=np.asarray(offsets, np.int32),
                          images=images, meta={"docs": doc_meta, "images": image_meta})


def fixture_manifest(shard_infos: list, seed: int, *, seq_len: int = SEQ_LEN,
                     tokens_per_tile: int = TOKENS_PER_TILE, policy: ImagePolicy = POLICY,
                     dialect: Dialect | None = None) -> Manifest:
    """A real Manifest for fixture shards, as a build of this geometry would write it
    (by default the fixture tokens; pass a tokenizer's `mixdata_dialect` for a real one)."""
    limits = view_limits(policy)
    tokens = sum(i.tokens for i in shard_infos)
    sequences = sum(i.samples for i in shard_infos)
    if dialect is None:
        dialect = Dialect(family="mixdata", tokenizer="fixture", tokenizer_sha256="0" * 64,
                          chat_template_sha256=None, vocab_size=256 + len(SPECIAL_IDS),
                          special_ids={"pad": PAD, "image": IMAGE},
                          special_tokens={"pad": "<pad>", "image": "<image>"},
                          tokens_per_tile=tokens_per_tile, placeholders="views",
                          geometry=stage_geometry(policy))
    return Manifest(
        recipe=RecipeInfo(name="fixture", sha256="0" * 64, snapshot={}), stage="fixture",
        seed=seed, seq_len=seq_len, image_tokens_per_tile=tokens_per_tile, dialect=dialect,
        image_policy=policy.to_json(),
        geometry=Geometry(preset=policy.preset, tile=limits.tile,
                          tokens_per_view=tokens_per_tile, max_rows=limits.max_rows,
                          max_cols=limits.max_cols, max_views=limits.max_views,
                          global_view=limits.global_view, mean=policy.mean, std=policy.std),
        mixture=MixtureInfo(weight_by="tokens", target_shares={"synthetic": 1.0}, budget=None,
                            max_window_deviation=0.0),
        shards=[ShardEntry(name=i.name, samples=i.samples, tokens=i.tokens, images=i.images,
                           bytes=i.bytes, sha256=i.sha256) for i in shard_infos],
        sources={}, packing=PackingInfo(seq_len=seq_len, sequences=sequences, tokens=tokens,
                                        efficiency=tokens / max(1, sequences * seq_len)))


def write_stage(folder: Path, shard_sizes: list[int], seed: int = 0,
                image_rate: float = 0.6) -> Manifest:
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
