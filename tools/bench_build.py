"""Benchmark of `mixdata build` (issue 5): packing efficiency, mixture window deviation,
build throughput, re-mix time and peak RSS, in one run.

    PYTHONPATH=. .venv/bin/python tools/bench_build.py

Packing and mixing use a synthetic VLM document mix (the demo corpus is sized for seq_len 512,
so its documents say little about packing at 2048 / 4096); the build figures use
`recipes/demo.yaml` stage `pretrain` on the generated demo corpus.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from mixdata.building import build_stage
from mixdata.mix import random_schedule, schedule, window_deviation
from mixdata.pack import PackItem, efficiency, pack, pack_first_fit, pack_one_per_sequence
from mixdata.recipe import parse_recipe

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "demo.yaml"
SHARES = {"interleaved": 45.0, "caption": 45.0, "text": 10.0}


def synthetic_docs(n: int, seq_len: int, seed: int) -> dict[str, np.ndarray]:
    """Token lengths per source of a VLM pre-training mix: interleaved web documents
    (log-normal, median ~900 tokens, up to a few images), captions (one image of 64-256 tokens
    plus a short caption) and text chunked at seq_len (log-normal, median ~700 tokens)."""
    rng = np.random.default_rng(seed)
    interleaved = np.clip(rng.lognormal(np.log(900), 0.8, n), 64, seq_len).astype(np.int64)
    caption = (rng.choice([64, 144, 256], n) + rng.integers(8, 60, n)).astype(np.int64)
    text = np.clip(rng.lognormal(np.log(700), 1.0, n), 16, seq_len).astype(np.int64)
    return {"interleaved": interleaved, "caption": caption, "text": text}


def plan_items(plan, costs: dict[str, np.ndarray]) -> tuple[list[PackItem], list[str]]:
    names = list(costs)
    items = [PackItem(length=int(costs[p.source][p.index]), group=names.index(p.source))
             for p in plan.picks]
    return items, [p.source for p in plan.picks]


def per_sequence_tokens(bins, items, sources) -> list[dict[str, int]]:
    out = []
    for members in bins:
        seq: dict[str, int] = {}
        for m in members:
            seq[sources[m]] = seq.get(sources[m], 0) + items[m].length
        out.append(seq)
    return out


def bench_packing(seq_len: int, sequences: int) -> dict:
    costs = synthetic_docs(20000, seq_len, seed=7)
    plan = schedule(SHARES, costs, budget=sequences * seq_len, max_epochs=10, seed=1)
    items, _ = plan_items(plan, costs)
    row = {"docs": len(items)}
    for name, fn in (("pack", pack), ("first_fit", pack_first_fit),
                     ("one_per_seq", pack_one_per_sequence)):
        row[name] = efficiency(items, fn(items, seq_len), seq_len)
    return row


def bench_window(seq_len: int, sequences: int) -> dict:
    costs = synthetic_docs(20000, seq_len, seed=7)
    row = {}
    for name, fn in (("exact", schedule), ("random", random_schedule)):
        plan = fn(SHARES, costs, budget=sequences * seq_len, max_epochs=10, seed=1)
        items, sources = plan_items(plan, costs)
        bins = pack(items, seq_len)
        row[name] = window_deviation(per_sequence_tokens(bins, items, sources), SHARES)
        row[f"{name}_sequences"] = len(bins)
    return row


def load_data() -> dict:
    return yaml.safe_load(RECIPE.read_text())


def records_written(out: Path) -> int:
    manifest = json.loads((out / "manifest.json").read_text())
    return sum(s["written"] for s in manifest["sources"].values())


def timed_build(recipe, out: Path, workers: int) -> tuple[float, int]:
    start = time.perf_counter()
    build_stage(recipe, "pretrain", out=out, workers=workers, progress=False)
    return time.perf_counter() - start, records_written(out)


def bench_builds(tmp: Path) -> dict:
    data = load_data()
    recipe = parse_recipe(data, file=str(RECIPE))
    build_stage(recipe, "pretrain", out=tmp / "warm", workers=1, progress=False)  # corpus, imports
    row = {}
    for workers in (1, 2):
        seconds, records = timed_build(recipe, tmp / f"w{workers}", workers)
        row[f"w{workers}_s"], row["records"] = seconds, records
    remixed = copy.deepcopy(data)
    remixed["stages"]["pretrain"]["mixture"] = {"obelics": 30, "laion": 60, "fineweb": 7,
                                                "dolma": 3}
    start = time.perf_counter()
    build_stage(parse_recipe(remixed, file=str(RECIPE)), "pretrain", out=tmp / "w1",
                workers=1, progress=False)
    row["remix_s"] = time.perf_counter() - start
    return row


RSS_CHILD = ("import resource, subprocess, sys; "
             "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_rss_mib(scale: int, cache: Path | None, out: Path) -> tuple[float, float]:
    """Peak RSS (largest single process) of a fresh `mixdata build` subprocess, workers 1;
    the corpus is generated beforehand in its own process so it is not counted. `cache`
    None keeps the usual cache (the scale-1 corpus the builds above already generated)."""
    env = {**os.environ, "MIXDATA_DEMO_SCALE": str(scale)}
    if cache is not None:
        env["MIXDATA_CACHE"] = str(cache)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from mixdata.demo.corpus import ensure_corpus; "
                    "ensure_corpus()"], check=True, env=env)
    generate_s = time.perf_counter() - start
    cmd = [sys.executable, "-m", "mixdata.cli", "build", str(RECIPE), "--stage", "pretrain",
           "--quiet", "--workers", "1", "--out", str(out)]
    result = subprocess.run([sys.executable, "-c", RSS_CHILD, *cmd], check=True, env=env,
                            capture_output=True, text=True)
    return int(result.stdout.split()[-1]) / 1024, generate_s


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=3000, help="packed sequences per test")
    args = ap.parse_args(argv)
    rows = []
    for seq_len in (2048, 4096):
        p = bench_packing(seq_len, args.sequences)
        rows += [(f"packing eff. seq_len {seq_len} ({p['docs']} docs)", name, f"{p[name]:.4f}")
                 for name in ("pack", "first_fit", "one_per_seq")]
        rows += [(f"packing seq_len {seq_len}", "pack / first-fit",
                  f"{p['pack'] / p['first_fit']:.3f}x"),
                 (f"packing seq_len {seq_len}", "pack / one-per-seq",
                  f"{p['pack'] / p['one_per_seq']:.2f}x")]
    w = bench_window(2048, args.sequences)
    rows += [("max 1000-seq window share dev. (pp)", f"exact ({w['exact_sequences']} seqs)",
              f"{100 * w['exact']:.3f}"),
             ("max 1000-seq window share dev. (pp)", f"random ({w['random_sequences']} seqs)",
              f"{100 * w['random']:.3f}"),
             ("window deviation", "random / exact", f"{w['random'] / max(w['exact'], 1e-12):.1f}x")]
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        tmp = Path(tmp)
        b = bench_builds(tmp)
        rows += [(f"build pretrain ({b['records']} records)", f"workers {k}",
                  f"{b['records'] / b[f'w{k}_s']:.1f} rec/s ({b[f'w{k}_s']:.1f} s)")
                 for k in (1, 2)]
        rows += [("build", "workers 2 / workers 1 speed", f"{b['w1_s'] / b['w2_s']:.2f}x"),
                 ("re-mix (45/45 -> 30/60), same out dir", "time", f"{b['remix_s']:.2f} s"),
                 ("re-mix", "re-mix time / full build (w1)", f"{b['remix_s'] / b['w1_s']:.2f}")]
        rss = {}
        for scale in (1, 10):
            rss[scale], gen_s = peak_rss_mib(scale, tmp / "cache" if scale > 1 else None,
                                           tmp / f"rss{scale}")
            rows.append((f"peak RSS build, demo scale {scale}",
                         f"corpus generated in {gen_s:.0f} s",
                         f"{rss[scale]:.0f} MiB"))
        rows.append(("peak RSS", "scale 10 / scale 1", f"{rss[10] / rss[1]:.2f}x"))
    print("| measurement | case | result |\n| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
