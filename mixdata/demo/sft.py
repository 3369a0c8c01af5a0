"""SFT kinds of the demo corpus: the_cauldron parquet (three categories), LLaVA JSON and
chat-messages jsonl. Questions about scenes have one-word answers; OCR questions ask for the
digit code drawn in a 256x64 image (`content.draw_code`). There are few of them on purpose:
SFT teaches the question, the high-res stage teaches the reading.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import content
from .files import (
    KindReport,
    broken_image,
    broken_slots,
    json_bytes,
    jsonl_bytes,
    png_bytes,
    write_bytes,
    write_parquet,
)

OCR_QUESTION = "What number is written?"
CHAT_OCR_SHARE = 0.05 # of chat rows: OCR questions
DESCRIBE = "Describe the image."

CAULDRON_SCHEMA = pa.schema([
    ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
    ("texts", pa.list_(pa.struct([("user", pa.string()), ("assistant", pa.string()),
                                  ("source", pa.string())]))),
])


def scene_turns(rng: np.random.Generator, scene: content.Scene, turns: int) -> list[tuple]:
    """Up to `turns` distinct (question, answer) pairs about a scene, in random order."""
    options = content.questions(scene)
    chosen = rng.choice(len(options), size=min(turns, len(options)), replace=False)
    return [(options[i].question, options[i].answer) for i in chosen]


def _scene_image(rng: np.random.Generator, shapes: int) -> tuple[content.Scene, bytes]:
    scene = content.random_scene(rng, shapes)
    return scene, png_bytes(content.draw_scene(scene, rng))


def _code_image(rng: np.random.Generator) -> tuple[str, bytes]:
    label = content.random_code_label(rng)
    return label[0].code, png_bytes(content.draw_code(*label))


def _cauldron_scenes(rng: np.random.Generator) -> tuple[bytes, list[tuple]]:
    scene, image = _scene_image(rng, int(rng.integers(1, 3)))
    return image, scene_turns(rng, scene, int(rng.integers(1, 4)))


def _cauldron_ocr(rng: np.random.Generator) -> tuple[bytes, list[tuple]]:
    code, image = _code_image(rng)
    return image, [(OCR_QUESTION, code)]


def _cauldron_counting(rng: np.random.Generator) -> tuple[bytes, list[tuple]]:
    scene, image = _scene_image(rng, int(rng.integers(1, 4)))
    return image, [("How many shapes are there?", content.NUMBERS[len(scene) - 1])]


CAULDRON_CATEGORIES = {
    "scenes": (_cauldron_scenes, "image_broken"),
    "ocr": (_cauldron_ocr, "missing_field"),
    "counting": (_cauldron_counting, "no_turns"),
}


def write_cauldron(root: Path, count: int, rng: np.random.Generator, *,
                   category: str) -> KindReport:
    """`sft/cauldron/<category>-00000.parquet` in the_cauldron schema; one malformed row."""
    make, defect_name = CAULDRON_CATEGORIES[category]
    report = KindReport()
    defects = broken_slots(rng, count, [defect_name])
    rows: dict[str, list] = {"images": [], "texts": []}
    for index in range(count):
        image, turns = make(rng)
        texts = [{"user": q, "assistant": a, "source": f"demo_{category}"} for q, a in turns]
        defect = defects.get(index)
        if defect == "image_broken":
            image = broken_image(rng)
        elif defect == "missing_field":
            texts[0]["assistant"] = None
        elif defect == "no_turns":
            texts = []
        rows["images"].append([{"bytes": image, "path": None}])
        rows["texts"].append(texts)
        report.add(defect)
    write_parquet(root / "sft" / "cauldron" / f"{category}-00000.parquet", rows, CAULDRON_SCHEMA,
                  row_group_size=128)
    return report


def write_llava(root: Path, count: int, rng: np.random.Generator) -> KindReport:
    """`sft/llava.json`, a JSON array; images in `sft/llava-images/` referenced relatively."""
    report = KindReport()
    defects = broken_slots(rng, count, ["image_tag_count", "missing_field", "image_broken"])
    entries = []
    for index in range(count):
        defect = defects.get(index)
        entries.append(_llava_entry(root / "sft", index, rng, defect))
        report.add(defect)
    write_bytes(root / "sft" / "llava.json", json.dumps(entries, indent=1).encode())
    return report


def _llava_entry(folder: Path, index: int, rng: np.random.Generator, defect: str | None) -> dict:
    entry: dict = {"id": f"demo-llava-{index:06d}"}
    draw = rng.random()
    if draw < 0.1 and defect is None:
        noun = content.pick(rng, content.NOUNS)
        turns = [(f"Write a sentence about a {noun}.",
                  f"the {content.pick(rng, content.ADJECTIVES)} {noun} is here.")]
        images = []
    elif draw < 0.15 and defect is None:  # InternVL-style multi-image entry
        (first, a), (second, b) = _scene_image(rng, 1), _scene_image(rng, 1)
        same = "yes" if first[0].colour == second[0].colour else "no"
        turns = [("<image>\n<image>\nAre the two shapes the same colour?", same)]
        images = [a, b]
    else:
        scene, image = _scene_image(rng, int(rng.integers(1, 3)))
        turns = scene_turns(rng, scene, int(rng.integers(1, 3)))
        if rng.random() < 0.3:
            turns.insert(0, (DESCRIBE, content.describe(scene)))
        turns[0] = ("<image>\n" + turns[0][0], turns[0][1])
        images = [image]
    if defect == "image_tag_count":
        turns[0] = ("<image>\n" + turns[0][0], turns[0][1])
    if defect == "image_broken":
        images[0] = broken_image(rng)
    names = [f"llava-images/{index:06d}-{i}.png" for i in range(len(images))]
    for name, data in zip(names, images):
        write_bytes(folder / name, data)
    if names:
        entry["image"] = names[0] if len(names) == 1 else names
    if defect != "missing_field":
        entry["conversations"] = [{"from": role, "value": value} for q, a in turns
                                  for role, value in (("human", q), ("gpt", a))]
    return entry


def write_chat(root: Path, count: int, rng: np.random.Generator) -> KindReport:
    """`sft/chat.jsonl` in HF/OpenAI messages format: image parts either by path (files in
    `sft/chat-images/`) or as OpenAI `image_url` data URIs."""
    report = KindReport()
    defects = broken_slots(rng, count, ["bad_json", "missing_field", "image_broken"])
    lines: list = []
    for index in range(count):
        defect = defects.get(index)
        row = _chat_row(root / "sft", index, rng, defect)
        lines.append(json_bytes(row)[:-9] if defect == "bad_json" else row)
        report.add(defect)
    write_bytes(root / "sft" / "chat.jsonl", jsonl_bytes(lines))
    return report


def _chat_row(folder: Path, index: int, rng: np.random.Generator, defect: str | None) -> dict:
    if rng.random() < CHAT_OCR_SHARE:
        question, (answer, image) = OCR_QUESTION, _code_image(rng)
    else:
        scene, image = _scene_image(rng, int(rng.integers(1, 3)))
        (question, answer), = scene_turns(rng, scene, 1)
    if defect == "image_broken":
        image = broken_image(rng)
    if rng.random() < 0.5:
        name = f"chat-images/{index:06d}.png"
        write_bytes(folder / name, image)
        image_part = {"type": "image", "path": name}
    else:
        uri = "data:image/png;base64," + base64.b64encode(image).decode()
        image_part = {"type": "image_url", "image_url": {"url": uri}}
    messages = [{"role": "user", "content": [image_part, {"type": "text", "text": question}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    if rng.random() < 0.2:
        messages.insert(0, {"role": "system", "content": "Answer with one word."})
    return {"id": f"demo-chat-{index:06d}"} if defect == "missing_field" else \
        {"id": f"demo-chat-{index:06d}", "messages": messages}
