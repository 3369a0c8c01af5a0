"""Seconds per training step of the demo's model against the previous demo's, side by side.

The anchor is what the demo trained until 2026-12-04: the tiny preset's 256-wide, 4-layer LM
with document masking by one dense-masked SDPA call per layer. Against it, on the same
batches of each built demo stage (`mixdata build recipes/demo.yaml --stage all` first), in
one process, the variants take turns within each pass and the best pass counts:
- `anchor`: tiny preset, one SDPA call (`attention.QUERY_CHUNK` set past the row length);
- `chunked`: tiny preset, queries in chunks (`mixdata.train.attention.query_chunks`);
- `demo`: the recipe's model (`train.model` of recipes/demo.yaml), chunked.

    PYTHONPATH=. .venv/bin/python tools/bench_demo_steps.py --steps 6 --repeat 3
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mixdata import load
from mixdata.recipe import load_recipe
from mixdata.tokens import load_tokenizer
from mixdata.train import attention
from mixdata.train.config import ModelSpec, parse_train
from mixdata.train.loop import contract_inputs, to_device
from mixdata.train.model import VLM, model_config, token_losses

STAGES = ("pretrain", "read", "sft")
ONE_CHUNK = 1 << 30


def stage_batches(shards: Path, stage: str, count: int) -> list[dict]:
    stream = iter(load(str(shards / stage), batch_size=4, seed=0))
    return [to_device(next(stream), torch.device("cpu"), (0.5,) * 3, (0.5,) * 3)
            for _ in range(count)]


def seconds_per_step(spec: ModelSpec, vocab: int, batches: list[dict], chunk: int) -> float:
    attention.QUERY_CHUNK = chunk
    torch.manual_seed(0)
    model = VLM(model_config(spec, vocab))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch: dict) -> None:
        loss, _ = token_losses(model(**contract_inputs(batch)), batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up: allocations, kernel choice
    began = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    return (time.perf_counter() - began) / (len(batches) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="recipes/demo.yaml")
    parser.add_argument("--shards", default="shards/demo", type=Path)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per stage and pass")
    parser.add_argument("--repeat", type=int, default=3, help="passes; the best counts")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    vocab = load_tokenizer(recipe.tokenizer).vocab_size
    demo = parse_train(recipe).model_spec
    preset = ModelSpec(preset=demo.preset, vision_position=demo.vision_position)
    variants = {"anchor": (preset, ONE_CHUNK), "chunked": (preset, attention.QUERY_CHUNK),
                "demo": (demo, attention.QUERY_CHUNK)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; demo model "
          f"{demo.label}")
    print(f"{'stage':10} {'anchor s':>9} {'chunked s':>10} {'demo s':>8} "
          f"{'anchor/chunked':>15} {'anchor/demo':>12}")
    for stage in STAGES:
        batches = stage_batches(args.shards, stage, args.steps + 1)
        best = {name: float("inf") for name in variants}
        for _ in range(args.repeat):
            for name, (spec, chunk) in variants.items():
                best[name] = min(best[name], seconds_per_step(spec, vocab, batches, chunk))
        print(f"{stage:10} {best['anchor']:9.3f} {best['chunked']:10.3f} {best['demo']:8.3f} "
              f"{best['anchor'] / best['chunked']:14.2f}x {best['anchor'] / best['demo']:11.2f}x")


if __name__ == "__main__":
    main()
