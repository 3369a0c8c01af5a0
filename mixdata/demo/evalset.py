"""The held-out eval split: `eval/{vqa,ocr,captions}.jsonl` with images in `eval/images/`.

Scenes and codes come only from the held-out side of `content.held_out`, so no eval scene
(as a whole) and no eval code appears in any training file. VQA
questions are asked about the caption images, so a test can check the whole split through
the captions; each names its kind (colour, shape, position or count), which eval reports
accuracy by. Image paths are relative to `eval/`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import content
from .files import KindReport, jsonl_bytes, png_bytes, write_bytes
from .sft import OCR_QUESTION

QUESTIONS_PER_SCENE = 2


def write_eval(root: Path, scenes: int, words: int, rng: np.random.Generator) -> KindReport:
    folder = root / "eval"
    captions, vqa = [], []
    for index in range(scenes):
        scene = content.random_scene(rng, int(rng.integers(1, 3)), for_eval=True)
        name = f"images/scene-{index:04d}.png"
        write_bytes(folder / name, png_bytes(content.draw_scene(scene, rng)))
        captions.append({"image": name, "caption": content.describe(scene)})
        options = content.questions(scene)
        for i in rng.choice(len(options), size=QUESTIONS_PER_SCENE, replace=False):
            question = options[int(i)]
            vqa.append({"image": name, "question": question.question, "answer": question.answer,
                        "choices": list(question.choices), "kind": question.category})
    ocr = []
    for index in range(words):
        label = content.random_code_label(rng, for_eval=True)
        name = f"images/code-{index:04d}.png"
        write_bytes(folder / name, png_bytes(content.draw_code(*label)))
        ocr.append({"image": name, "question": OCR_QUESTION, "answer": label[0].code})
    for split, rows in (("vqa", vqa), ("ocr", ocr), ("captions", captions)):
        write_bytes(folder / f"{split}.jsonl", jsonl_bytes(rows))
    report = KindReport(records=len(vqa) + len(ocr) + len(captions))
    report.extra.update(vqa=len(vqa), ocr=len(ocr), captions=len(captions))
    return report
