"""Held-out evaluation: VQA accuracy, OCR exact match and caption loss.

Every example is rendered exactly as training data is (`mixdata.tokens.rendering` with the
stage's image policy), so eval measures what the stage taught, not a prompt mismatch.
- VQA: each choice is the assistant answer of an SFT prompt (image + question); the choice
  whose answer tokens (and the closing `<|end|>`) have the highest log-likelihood wins.
  Chance is the mean of 1 / len(choices).
- OCR: exact match under greedy decoding. Greedy decoding emits the answer and then
  `<|end|>` exactly when, with the answer fed in, the arg-max at every answer position is the
  next answer token; so one teacher-forced pass decides the match (`greedy_decode` shows the
  text, and a test checks that the two agree). `token_accuracy` is the share of answer
  tokens (the closing `<|end|>` left out) whose teacher-forced arg-max is right: a reading
  that gets 3 of 4 digits counts for something, as a character error rate would.
- Captions: mean cross-entropy per caption token given the image, and given another
  caption's image (`shuffled_loss`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MixdataError
from ..image.policy import ImagePolicy
from ..loading.collate import BatchSpec
from ..sample import ImagePart, Sample, TextPart
from .batch import Doc, make_batch
from .data import stage_tile
from .loop import model_inputs, to_device
from .model import IGNORE

SPLITS = {"vqa": "vqa.jsonl", "ocr": "ocr.jsonl", "caption": "captions.jsonl"}


@dataclass(frozen=True)
class EvalSetup:
    """What rendering and scoring need besides the model."""

    tokenizer: object
    policy: ImagePolicy
    tokens_per_tile: int
    seq_len: int
    device: torch.device
    batch_size: int = 16

    @property
    def spec(self) -> BatchSpec:
        return BatchSpec(seq_len=self.seq_len, pad_id=self.tokenizer.pad_id,
                         image_id=self.tokenizer.image_id, tokens_per_tile=self.tokens_per_tile,
                         tile=stage_tile(self.policy), mean=tuple(self.policy.mean),
                         std=tuple(self.policy.std))

    def batch(self, docs: list[Doc]) -> dict:
        """One row per doc, on the device, pixels normalised."""
        return to_device(make_batch([[d] for d in docs], self.spec), self.device,
                         self.policy.mean, self.policy.std)


def read_split(root: Path, task: str, limit: int | None) -> list[dict]:
    path = Path(root) / SPLITS[task]
    if not path.exists():
        raise MixdataError(f"eval split {path} is missing")
    with open(path) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return rows[:limit] if limit is not None else rows


def render_example(setup: EvalSetup, image: bytes, texts: list[tuple[str, str | None]],
                   kind: str) -> Doc:
    """One image followed by text parts ((text, role) pairs) -> a Doc with its image."""
    from ..image import process
    from ..tokens import render

    processed = process(image, setup.policy, images_in_sample=1)
    parts = [ImagePart(data=processed.data)] + [TextPart(text=t, role=r) for t, r in texts]
    sample = Sample(id="eval", source="eval", kind=kind, parts=parts, meta={})
    docs = render(sample, [processed.plan], setup.tokenizer, tokens_per_tile=setup.tokens_per_tile,
                  seq_len=setup.seq_len, loss="all", on_overflow="reject")
    slot = docs[0].images[0]
    return Doc(ids=docs[0].ids, loss=docs[0].loss,
               images=((processed, slot.start, slot.start + slot.length),))


def sft_doc(setup: EvalSetup, root: Path, row: dict, answer: str) -> Doc:
    image = (Path(root) / row["image"]).read_bytes()
    return render_example(setup, image, [(row["question"], "user"), (answer, "assistant")], "sft")


@torch.no_grad()
def score_docs(model, setup: EvalSetup, docs: list[Doc]) -> list[tuple[float, int, bool, int]]:
    """Per doc: (sum of log-probs of its supervised targets, their count, all arg-max hits,
    arg-max hits among its supervised targets but the last)."""
    model.eval()
    out = []
    for first in range(0, len(docs), setup.batch_size):
        chunk = docs[first:first + setup.batch_size]
        moved = setup.batch(chunk)
        logits = model(*model_inputs(moved), image_features=unique_features(model, moved)).float()
        labels = moved["labels"]
        supervised = labels != IGNORE
        logprobs = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        hits = (logits.argmax(-1) == labels) | ~supervised
        for row in range(len(chunk)):
            targets = supervised[row].nonzero()[:, 0]
            out.append((float(logprobs[row][supervised[row]].sum()), int(supervised[row].sum()),
                        bool(hits[row].all()), int(hits[row][targets[:-1]].sum())))
    return out


def unique_features(model, batch: dict) -> torch.Tensor | None:
    """Vision features of a batch's views, each distinct view encoded once (the choices of a
    VQA question repeat its image)."""
    pixels = batch["pixel_values"]
    if pixels.shape[0] == 0:
        return None
    distinct, inverse = torch.unique(pixels.flatten(1), dim=0, return_inverse=True)
    return model.image_features(distinct.view(-1, *pixels.shape[1:]))[inverse]


def eval_vqa(model, setup: EvalSetup, root: Path, rows: list[dict]) -> dict:
    docs = [sft_doc(setup, root, row, choice) for row in rows for choice in row["choices"]]
    scores = score_docs(model, setup, docs)
    right, cursor = [], 0
    for row in rows:
        candidates = scores[cursor:cursor + len(row["choices"])]
        cursor += len(row["choices"])
        best = max(range(len(candidates)), key=lambda i: candidates[i][0])
        right.append(row["choices"][best] == row["answer"])
    result = vqa_accuracy(rows, right)
    by_kind: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        if "kind" in row:
            by_kind.setdefault(row["kind"], []).append(index)
    if by_kind:
        result["by_kind"] = {kind: vqa_accuracy([rows[i] for i in picked],
                                                [right[i] for i in picked])
                             for kind, picked in sorted(by_kind.items())}
    return result


def vqa_accuracy(rows, right) -> dict:
    """Accuracy of `right` (one bool per row), beside the chance of guessing among choices."""
    chance = sum(1 / len(r["choices"]) for r in rows) / len(rows)
    return {"accuracy": sum(right) / len(rows), "chance": chance, "n": len(rows)}


def eval_ocr(model, setup: EvalSetup, root: Path, rows: list[dict]) -> dict:
    scores = score_docs(model, setup, [sft_doc(setup, root, r, r["answer"]) for r in rows])
    answer_tokens = sum(count - 1 for _, count, _, _ in scores)
    return {"exact_match": sum(hit for _, _, hit, _ in scores) / len(rows),
            "token_accuracy": sum(right for *_, right in scores) / answer_tokens,
            "n": len(rows)}


def eval_captions(model, setup: EvalSetup, root: Path, rows: list[dict]) -> dict:
    """Caption loss with each caption's own image, and with the images shuffled among the
    captions (each caption gets the next row's image): the gap is what the images tell the
    LM. Equal losses mean the model ignores its images."""
    images = [(Path(root) / r["image"]).read_bytes() for r in rows]
    shuffled = images[1:] + images[:1] if len(images) > 1 else images
    losses = []
    for pairing in (images, shuffled):
        docs = [render_example(setup, image, [(r["caption"], None)], "caption")
                for image, r in zip(pairing, rows)]
        scores = score_docs(model, setup, docs)
        losses.append(-sum(lp for lp, *_ in scores) / sum(n for _, n, *_ in scores))
    return {"loss": losses[0], "shuffled_loss": losses[1], "n": len(rows)}


def evaluate(model, setup: EvalSetup, root: Path, *, tasks=("vqa", "ocr", "caption"),
             limit: int | None = None) -> dict:
    """Run the asked tasks on the split under `root`; returns {task: metrics}."""
    runners = {"vqa": eval_vqa, "ocr": eval_ocr, "caption": eval_captions}
    return {task: runners[task](model, setup, root, read_split(root, task, limit))
            for task in tasks}


@torch.no_grad()
def greedy_decode(model, setup: EvalSetup, prompt: Doc, max_new_tokens: int) -> list[int]:
    """Arg-max continuation of `prompt` until `<|end|>`, `</s>` or the token limit."""
    from ..tokens.tokenizer import END

    stops = {setup.tokenizer.special_id(END), setup.tokenizer.eos_id}
    model.eval()
    doc, generated = prompt, []
    for _ in range(max_new_tokens):
        token = int(model(*model_inputs(setup.batch([doc])))[0, -1].argmax())
        generated.append(token)
        if token in stops:
            break
        doc = doc.extended(token)
    return generated


def prompt_of(doc: Doc) -> Doc:
    """The tokens before the first supervised one: what a model is given to answer."""
    return doc.prefix(int(doc.loss.argmax()))
