"""How many steps the demo's tiny VLM needs to start reading its OCR codes, by label layout.

Trains a fresh `tiny` VLM (mixdata.train.model) on nothing but code labels, in the layout the
high-res stage gives them (the label through the recipe's high-res image policy, cut into
views), and reports held-out per-digit accuracy (teacher-forced arg-max) and whole-code exact
match every 25 steps, for each layout side by side in one run:
- `boundary`: digits centred on the tile (y 32), so each digit straddles two image tokens
  (the tiny model's token is a 16 x 16 px cell: patch 8, pixel shuffle 2), one copy of the
  code, in the first tile;
- `token`: digits centred in the tile's second token row (y 24), so one glyph is one image
  token, one copy in the first tile;
- `token-copies`: as `token`, with a copy of the code in every tile;
- `token-rows`: a copy in every token row of every tile (16 copies, each with its own
  jitter; `content.code_label`, the demo corpus's labels since corpus v5): four times as many
  image tokens carry each digit.
`--views first` keeps only the first tile (16 image tokens); `all` (default) keeps every view
the policy makes (4 tiles and the global view of a 256 x 64 label: 80 image tokens).
Documents are `<view marker> <16 image tokens> ... <start> d1 d2 d3 d4`, on a small synthetic
vocabulary: the probe measures the vision path and the LM's routing, not the tokenizer.

    PYTHONPATH=. .venv/bin/python tools/reading_probe.py --steps 400
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F

from mixdata.demo import content
from mixdata.demo.files import png_bytes
from mixdata.image import cut_tiles, process
from mixdata.recipe import load_recipe
from mixdata.train.model import IGNORE, PRESETS, VLM

VOCAB = 64
DIGIT0, MARKER0, START = 0, 16, 40   # token ids: digits, one marker per view, transcript start
# name: (the first token row's digit centre y, which of `content.code_label`'s renders to draw)
LAYOUTS = {"boundary": (content.CODE_TILE // 2, lambda r: r.tile == 0 and r.row == 0),
           "token": (content.CODE_ROW, lambda r: r.tile == 0 and r.row == 1),
           "token-copies": (content.CODE_ROW, lambda r: r.row == 1),
           "token-rows": (content.CODE_ROW, lambda r: True)}


def views_of(code: str, rng: np.random.Generator, policy, views: str, keep) -> np.ndarray:
    label = [render for render in content.code_label(code, rng) if keep(render)]
    processed = process(png_bytes(content.draw_code(*label)), policy)
    cut = cut_tiles(processed.data, processed.plan)
    return cut[:1] if views == "first" else cut


def batch(examples: list[tuple[np.ndarray, str]], tokens_per_tile: int, mean, std) -> tuple:
    """(model inputs, labels) for single-document rows."""
    rows, pixels, spans = [], [], []
    for row, (views, code) in enumerate(examples):
        ids: list[int] = []
        for index, view in enumerate(views):
            ids.append(MARKER0 + index)
            spans.append((row, len(ids), len(ids) + tokens_per_tile))
            ids += [0] * tokens_per_tile
            pixels.append(view)
        ids.append(START)
        labels = [IGNORE] * (len(ids) - 1)
        for digit in code:
            labels.append(DIGIT0 + int(digit))
            ids.append(DIGIT0 + int(digit))
        rows.append((ids[:-1], labels))
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    targets = torch.full((len(rows), length), IGNORE)
    for row, (ids, labels) in enumerate(rows):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        targets[row, :len(labels)] = torch.tensor(labels)
    pixel_values = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255
    pixel_values = (pixel_values - mean) / std
    positions = torch.arange(length).expand(len(rows), length)
    inputs = (input_ids, positions, torch.zeros_like(input_ids), pixel_values, torch.tensor(spans))
    return inputs, targets


def scores(model, inputs, targets) -> tuple[float, float]:
    """(per-digit accuracy, whole-code exact match), teacher-forced arg-max."""
    model.eval()
    with torch.no_grad():
        hits = model(*inputs).argmax(-1) == targets
    supervised = targets != IGNORE
    return float(hits[supervised].float().mean()), float((hits | ~supervised).all(1).float().mean())


def run_layout(layout: str, args, policy) -> list[tuple[int, float, float]]:
    content_row = content.CODE_ROW
    first_row, keep = LAYOUTS[layout]
    content.CODE_ROW = first_row   # digit_boxes reads it at draw time
    try:
        return train(args, policy, keep)
    finally:
        content.CODE_ROW = content_row


def train(args, policy, keep) -> list[tuple[int, float, float]]:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    preset = PRESETS["tiny"]
    model = VLM(dataclasses.replace(preset, lm=dataclasses.replace(preset.lm, vocab_size=VOCAB)))
    tokens = preset.tokens_per_tile(policy.tile)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (policy.mean, policy.std))
    held_out = [content.random_code(rng, for_eval=True) for _ in range(args.eval_codes)]
    eval_batch = batch([(views_of(c, rng, policy, args.views, keep), c)
                        for c in held_out],
                       tokens, mean, std)
    optimizer = torch.optim.AdamW(model.parameters(), lr=preset.lr, weight_decay=0.0)
    curve = []
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:   # linear warm-up, then constant
            group["lr"] = preset.lr * min(1.0, step / 20)
        codes = [content.random_code(rng) for _ in range(args.docs_per_step)]
        inputs, targets = batch([(views_of(c, rng, policy, args.views, keep), c)
                                 for c in codes], tokens, mean, std)
        model.train()
        loss = F.cross_entropy(model(*inputs).flatten(0, 1), targets.flatten(),
                               ignore_index=IGNORE)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 25 == 0:
            curve.append((step, *scores(model, *eval_batch)))
    return curve


def first_reading_step(curve, threshold: float = 0.5) -> int | None:
    return next((step for step, digit, _ in curve if digit >= threshold), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", choices=("first", "all"), default="all")
    parser.add_argument("--layouts", nargs="+", choices=tuple(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--docs-per-step", type=int, default=20,
                        help="code labels per step (the demo's high-res step holds ~17)")
    parser.add_argument("--eval-codes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", default="recipes/demo.yaml")
    parser.add_argument("--stage", default="highres", help="whose image policy cuts the views")
    args = parser.parse_args()
    policy = load_recipe(args.recipe).stages[args.stage].image
    curves = {}
    for layout in args.layouts:
        started = time.perf_counter()
        curves[layout] = run_layout(layout, args, policy)
        print(f"{layout}: {time.perf_counter() - started:.0f} s", flush=True)
    print(f"views: {args.views}, {args.docs_per_step} codes per step, seed {args.seed}")
    print("step  " + "  ".join(f"{name + ' digit / EM':>22}" for name in curves))
    for index, (step, *_) in enumerate(next(iter(curves.values()))):
        cells = [f"{c[index][1]:>14.3f} / {c[index][2]:.2f}" for c in curves.values()]
        print(f"{step:>4}  " + "  ".join(cells))
    for name, curve in curves.items():
        print(f"{name}: first step with per-digit accuracy >= 0.5: {first_reading_step(curve)}")


if __name__ == "__main__":
    main()
