"""A tiny multi-format corpus and recipe for build, loader and CLI tests (generated, real
formats)."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = [
    "red", "green", "blue", "circle", "square", "left", "right", "top", "small", "page", "word",
    "text", "scene", "shape", "the", "a", "on", "of", "in", "near", "big"
]


def _jpeg(rng, size=(32, 32)) -> bytes:
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _sentence(rng, n) -> str:
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n)) + "."


def _add(tar, name, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


def write_corpus(root: Path, n_captions=60, n_text=50, n_sft=30, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "captions").mkdir(parents=True, exist_ok=True)
    for shard in range(2):
        with tarfile.open(root / "captions" / f"{shard:05d}.tar", "w") as tar:
            for i in range(n_captions // 2):
                key = f"{shard:05d}{i:04d}"
                caption = _sentence(rng, int(rng.integers(4, 12)))
                meta = {"url": f"http://x/{key}.jpg", "caption": caption, "key": key,
                        "status": "success", "error_message": None, "width": 32, "height": 32,
                        "original_width": 32, "original_height": 32, "exif": "{}", "sha256": ""}
                data = _jpeg(rng) if i != 3 else b"\xff\xd8\xff\xe0 not really a jpeg"
                _add(tar, f"{key}.jpg", data)
                _add(tar, f"{key}.txt", caption.encode())
                _add(tar, f"{key}.json", json.dumps(meta).encode())
    (root / "text").mkdir(exist_ok=True)
    lines = []
    for i in range(n_text):
        lines.append(json.dumps({"id": f"doc{i}", "text": _sentence(rng, int(rng.integers(5, 120))),
                                 "source": "fixture", "added": "", "created": "", "metadata": {}}))
    lines[5] = lines[4].replace('"doc4"', '"doc5"')  # an exact duplicate text
    lines.insert(7, "{not json")
    (root / "text" / "docs.jsonl").write_text("\n".join(lines) + "\n")
    (root / "sft" / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n_sft):
        (root / "sft" / "images" / f"{i}.jpg").write_bytes(_jpeg(rng))
        tags = "<image>\n" if i != 2 else "<image>\n<image>\n"
        entries.append({"id": f"q{i}", "image": f"{i}.jpg", "conversations": [
            {"from": "human", "value": tags + "What is in the picture?"},
            {"from": "gpt", "value": _sentence(rng, int(rng.integers(2, 8)))}]})
    (root / "sft" / "llava.json").write_text(json.dumps(entries))
    return root


def recipe_dict(root: Path, budget_tokens=3000, pretrain_weights=(1, 1)) -> dict:
    return {
        "name": "fixture", "seed": 7, "tokenizer": "bytes", "seq_len": 256,
        "image_tokens_per_tile": 4,
        "sources": {
            "captions": {"format": "img2dataset", "uri": f"{root}/captions/{{00000..00001}}.tar"},
            "text": {"format": "jsonl-text", "uri": f"{root}/text/docs.jsonl",
                     "filters": {"dedup": True}},
            "chat": {"format": "llava", "uri": f"{root}/sft/llava.json",
                     "images_root": f"{root}/sft/images"},
        },
        "stages": {
            "pretrain": {"budget": {"tokens": budget_tokens},
                         "image": {"preset": "none", "max_side": 32},
                         "mixture": {"captions": pretrain_weights[0], "text": pretrain_weights[1]},
                         "pack": {"sequences_per_shard": 4}},
            "sft": {"image": {"preset": "none", "max_side": 32},
                    "mixture": {"chat": {"weight": 1.0},
                                "captions": {"alpha": 0.5, "relative_to": "chat"}},
                    "max_epochs": 3, "pack": {"sequences_per_shard": 4}},
        },
        "train": {"model": "tiny"},
    }


def write_recipe(root: Path, **kwargs) -> Path:
    import yaml

    path = root / "fixture.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(root, **kwargs), sort_keys=False))
    return path
