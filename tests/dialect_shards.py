"""A small recipe over the dialect fixtures, built into shards and read back document by
document, each compared with what the family's processor gives for its record."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from dialect_fixtures import CONVERSATIONS, Setup, image_bank, reference_chat, reference_plain

from mixdata.sample import Sample

CAPTIONS = ["A red square on the left.", "A small blue circle.", "Two dogs on a mat.",
            "The big city at the top.", "A page with one word."]
INTERLEAVED = [["The page shows a picture.", 0, "It is wide."],
               [3, "Square.", "Then a tall one:", 2, "and text after it.\n\nThe end."],
               ["No pictures here, only text."]]


def _add(tar, name: str, data: bytes) -> None:
    import tarfile

    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


def write_sources(root: Path, images: list[bytes]) -> dict:
    """Chat-messages jsonl (CONVERSATIONS), an img2dataset tar and an OBELICS parquet, in
    their real formats, over the image bank; returns the recipe's `sources:`."""
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "chat" / "images").mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(images):
        (root / "chat" / "images" / f"{i}.png").write_bytes(data)
        (root / "interleaved" / "images").mkdir(parents=True, exist_ok=True)
        (root / "interleaved" / "images" / f"{i}.png").write_bytes(data)
    lines = []
    for k, conversation in enumerate(CONVERSATIONS):
        messages = [{"role": m["role"], "content": [
            {"type": "image", "path": f"images/{c['index']}.png"} if c["type"] == "image"
            else c for c in m["content"]]} for m in conversation]
        lines.append(json.dumps({"id": k, "messages": messages}))
    (root / "chat" / "chat.jsonl").write_text("\n".join(lines) + "\n")
    (root / "captions").mkdir(exist_ok=True)
    with tarfile.open(root / "captions" / "00000.tar", "w") as tar:
        for i, caption in enumerate(CAPTIONS):
            _add(tar, f"{i:05d}.png", images[i % len(images)])
            _add(tar, f"{i:05d}.txt", caption.encode())
            _add(tar, f"{i:05d}.json", json.dumps({"key": f"{i:05d}", "caption": caption,
                                                   "status": "success"}).encode())
    rows = {"images": [], "texts": [], "metadata": [], "general_metadata": []}
    for doc in INTERLEAVED:
        rows["images"].append([f"images/{x}.png" if isinstance(x, int) else None for x in doc])
        rows["texts"].append([x if isinstance(x, str) else None for x in doc])
        rows["metadata"].append(json.dumps([{} if isinstance(x, int) else None for x in doc]))
        rows["general_metadata"].append(json.dumps({"url": "http://example.com/doc"}))
    pq.write_table(pa.table(rows), root / "interleaved" / "docs.parquet")
    return {"chat": {"format": "chat-messages", "uri": f"{root}/chat/chat.jsonl"},
            "captions": {"format": "img2dataset", "uri": f"{root}/captions/00000.tar"},
            "interleaved": {"format": "obelics", "uri": f"{root}/interleaved/docs.parquet"}}


def build_stage_for(setup: Setup, root: Path, *, seq_len: int = 512, tokenizer=None):
    """Build one stage mixing the three sources with the setup's folder as tokenizer (or the
    recipe's `tokenizer:` given); returns (output folder, recipe)."""
    from mixdata.building import build_stage
    from mixdata.recipe import parse_recipe

    images = image_bank()
    raw = {"name": f"dialect-{setup.family}", "seed": 3,
           "tokenizer": tokenizer or str(setup.folder),
           "seq_len": seq_len, "image_tokens_per_tile": setup.tokens_per_tile,
           "sources": write_sources(root / "data", images),
           "stages": {"sft": {"image": setup.image_settings(), "max_epochs": 1,
                              "mixture": {"chat": 1, "captions": 1, "interleaved": 1},
                              "pack": {"sequences_per_shard": 3}}}}
    recipe = parse_recipe(raw, file=str(root / "recipe.yaml"))
    return build_stage(recipe, "sft", out=root / "out", progress=False), recipe


def read_back(out: Path) -> list[tuple[dict, np.ndarray, np.ndarray, list[tuple[int, int]]]]:
    """(doc meta, ids, loss, image spans relative to the doc) of every packed document."""
    from mixdata.shards import iter_shard

    docs = []
    for shard in sorted(out.glob("shard-*.tar")):
        with open(shard, "rb") as fh:
            for seq in iter_shard(fh):
                for d, info in enumerate(seq.meta["docs"]):
                    start, end = int(seq.docs[d]), int(seq.docs[d + 1])
                    spans = [(a - start, b - start) for image in seq.meta["images"]
                             if image["doc"] == d for a, b in [image["span"]]]
                    docs.append((info, seq.tokens[start:end], seq.loss[start:end], spans))
    return docs


def samples_by_id(recipe) -> dict[tuple[str, str], Sample]:
    """The Samples the build read (through the same adapters and cleaning), by (source, id)."""
    from mixdata.sources import open_source
    from mixdata.sources.filtering import read_clean

    out = {}
    for name, spec in recipe.sources.items():
        source = open_source(spec)
        for unit in source.units():
            for item in read_clean(source, unit):
                if isinstance(item, Sample):
                    out[(name, item.id)] = item
    return out


def check_built(setup: Setup, root: Path) -> int:
    """Every document read back from the built shards equals the processor's output for its
    record: ids, loss mask (SFT: the generation-marked reference), and image spans exactly
    where the processor put the image tokens. Returns how many documents were checked."""
    out, recipe = build_stage_for(setup, root)
    samples, images = samples_by_id(recipe), image_bank()
    docs = read_back(out)
    assert docs, "the build wrote no document"
    for info, ids, loss, spans in docs:
        sample = samples[(info["source"], info["id"])]
        if sample.kind == "sft":
            conversation = CONVERSATIONS[int(sample.id)]  # the record's own id
            want_ids, want_mask = reference_chat(setup, conversation, images)
            assert loss.tolist() == want_mask, info
        else:
            want_ids = reference_plain(setup, sample)
            assert loss.any() and not loss[np.asarray([i for a, b in spans
                                                       for i in range(a, b)], int)].any()
        assert ids.tolist() == want_ids, info
        image_id = setup.tokenizer().image_id
        assert sum(int((ids[a:b] == image_id).sum()) for a, b in spans) == \
            int((np.asarray(want_ids) == image_id).sum()), info
    return len(docs)
