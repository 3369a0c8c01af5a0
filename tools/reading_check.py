"""Where a trained stage of the demo reads its held-out codes: per digit, in three layouts.

For each held-out OCR code the digits are scored teacher-forced (arg-max per digit) after
- `label`: the image and then the transcript, as a RenderedText record without a prompt
  renders (`<image> 4071\\n4071...`);
- `label+gap`: the same with a few filler tokens between the image and the transcript;
- `answer`: the OCR eval's question and answer turn (`<|user|><image>What number is
  written?<|end|><|assistant|>4071<|end|>`), which a prompted RenderedText source trains.

A small model trained on one layout learns to find digit i at a fixed distance from where it
writes it. Reading that holds in `label` and falls to chance in `label+gap` is bound to that
distance, so it cannot carry over into answers. `whole` is the share of codes with all four
digits right.

    PYTHONPATH=. .venv/bin/python tools/reading_check.py runs/demo --stage highres
"""
from __future__ import annotations

import numpy as np
import torch

from mixdata.demo import content
from mixdata.demo.sft import OCR_QUESTION
from mixdata.train.evaluate import (
    EvalSetup,
    model_inputs,
    read_split,
    render_example,
    unique_features,
)
from mixdata.train.model import IGNORE
from mixdata.train.report import open_probe, stage_setup

COPIES = content.CODE_SIZE[0] // content.CODE_TILE  # the corpus transcribes each tile's copy
GAP = "the code"


def layout_doc(setup: EvalSetup, image: bytes, code: str, layout: str):
    """The document of `layout` whose first len(code) supervised tokens are the code."""
    transcript = "\n".join([code] * COPIES)
    texts = {"label": [(transcript, None)], "label+gap": [(GAP, None), (transcript, None)],
             "answer": [(OCR_QUESTION, "user"), (code, "assistant")]}[layout]
    doc = render_example(setup, image, texts, "sft" if layout == "answer" else "caption")
    if layout == "label+gap":  # the filler is context, not a target
        loss = doc.loss.copy()
        loss[:np.nonzero(doc.loss)[0][len(setup.tokenizer.encode(GAP + "\n"))]] = 0
        doc = type(doc)(ids=doc.ids, loss=loss, images=doc.images)
    return doc


@torch.no_grad()
def digit_hits(model, setup: EvalSetup, docs, digits: int) -> np.ndarray:
    """[len(docs), digits] bools: whether the arg-max at each of the first `digits`
    supervised targets of each doc is right."""
    model.eval()
    rows = []
    for first in range(0, len(docs), setup.batch_size):
        batch = setup.batch(docs[first:first + setup.batch_size])
        logits = model(*model_inputs(batch), image_features=unique_features(model, batch))
        labels = batch["labels"]
        for row in range(labels.shape[0]):
            targets = (labels[row] != IGNORE).nonzero()[:digits, 0]
            rows.append((logits[row, targets].argmax(-1) == labels[row, targets]).numpy())
    return np.stack(rows)


def main() -> None:
    args, recipe, tokenizer, model, root = open_probe(
        __doc__.splitlines()[0], "highres", 100, "held-out codes at most")
    rows = read_split(root, "ocr", args.limit)
    setup = stage_setup(recipe, tokenizer, "highres")
    print(f"{args.run}/{args.stage}: {len(rows)} held-out codes (chance 0.1 per digit)")
    for layout in ("label", "label+gap", "answer"):
        docs = [layout_doc(setup, (root / r["image"]).read_bytes(), r["answer"], layout)
                for r in rows]
        hits = digit_hits(model, setup, docs, len(rows[0]["answer"]))
        per_digit = " / ".join(f"{x:.2f}" for x in hits.mean(0))
        print(f"  {layout:9}  per digit {hits.mean():.3f} ({per_digit})  "
              f"whole {hits.all(1).mean():.2f}")


if __name__ == "__main__":
    main()
