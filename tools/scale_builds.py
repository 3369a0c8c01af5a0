"""The build part of `tools/bench_scale.py` (issue 16): `mixdata build` end to end on the demo
corpus at a large scale, `--workers 1` against `--workers 2`, and `--engine ray` against the
local engine, side by side in one run.

The recipe is `recipes/demo.yaml` with every stage's budget removed (all data, no repeats), so
that the work grows with the corpus; all three stages are built (`--stage all`) into a fresh
folder, by a fresh `python -m mixdata.cli build` process each time (imports, pool or Ray
start-up and the manifest included: what a user waits for). Runs are interleaved
(w1, w2, ray, w1, ...), after one untimed pass that reads the corpus into the page cache.

Measured per run: wall clock (and each stage's, from its timings.json), the load average
around it, and for the local engine the CPU time of the build and every process it waited
for (`RUSAGE_CHILDREN`: its pool workers and their PDF render workers), and how many cores
other processes kept busy meanwhile (the machine's busy time from /proc/stat, less the
build's, over the wall clock). Ray's workers are not the build's children, so a Ray run has
no CPU figure. Every run's shards, manifests and rejects are hashed: the table says whether
they are identical across runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"w1": ("local", 1), "w2": ("local", 2), "ray": ("ray", 2)}


def all_data_recipe(folder: Path) -> Path:
    recipe = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    for stage in recipe["stages"].values():
        stage.pop("budget", None)
    path = folder / "demo-all-data.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _env(scale: float) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MIXDATA_DEMO_SCALE": f"{scale:g}"}


def prepare_corpus(scale: float) -> Path:
    """Generate the corpus (untimed) and read it once, so no run pays for a cold cache."""
    from mixdata.demo.corpus import cache_root

    subprocess.run([sys.executable, "-m", "mixdata.cli", "demo", "--scale", f"{scale:g}"],
                   env=_env(scale), check=True, capture_output=True)
    root = cache_root(scale)
    for path in root.rglob("*"):
        if path.is_file():
            path.read_bytes()
    return root


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and (path.name.startswith("shard-") or path.name in
                               ("manifest.json", "rejects.jsonl")):
            data = path.read_bytes()
            if path.name == "manifest.json":  # its `run` section (network retries) aside
                data = data.split(b'"run"')[0]
            h.update(path.relative_to(folder).as_posix().encode() + data)
    return h.hexdigest()


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (every core, every process)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_build(recipe: Path, out: Path, engine: str, workers: int, scale: float) -> dict:
    cmd = [sys.executable, "-m", "mixdata.cli", "build", str(recipe), "--stage", "all",
           "--out", str(out), "--workers", str(workers), "--engine", engine, "--quiet"]
    load = os.getloadavg()[0]
    before, busy = resource.getrusage(resource.RUSAGE_CHILDREN), busy_seconds()
    start = time.perf_counter()
    subprocess.run(cmd, env=_env(scale), check=True, capture_output=True)
    wall = time.perf_counter() - start
    after, busy = resource.getrusage(resource.RUSAGE_CHILDREN), busy_seconds() - busy
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    timings = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/timings.json")}
    stages = {name: t["total_s"] for name, t in timings.items()}
    return {"wall": wall, "cpu": cpu if engine == "local" else None, "stages": stages,
            "prepare": sum(t["prepare_s"] for t in timings.values()),
            "pool": any(t["pool_started"] for t in timings.values()),
            "others": (busy - cpu) / wall if engine == "local" else None,
            "load": (load, os.getloadavg()[0]), "digest": digest(out)}


def measure(scale: float, repeats: int, tmp: Path, configs: list[str]) -> list[dict]:
    recipe = all_data_recipe(tmp)
    corpus = prepare_corpus(scale)
    print(f"[build] demo corpus scale {scale:g} at {corpus}", file=sys.stderr, flush=True)
    runs = []
    print(f"[build] load average (1, 5, 15 min) at start: {os.getloadavg()}", file=sys.stderr)
    for r in range(repeats):
        for name in configs:
            engine, workers = CONFIGS[name]
            out = tmp / f"{name}-{r}"
            row = {"config": name, "repeat": r, **run_build(recipe, out, engine, workers, scale)}
            shutil.rmtree(out)
            print(f"[build] {row}", file=sys.stderr, flush=True)
            runs.append(row)
    print(f"[build] load average (1, 5, 15 min) at end: {os.getloadavg()}", file=sys.stderr)
    return runs


def report(runs: list[dict], scale: float) -> str:
    configs = {r["config"] for r in runs}
    best = {c: min(r["wall"] for r in runs if r["config"] == c) for c in configs}
    identical = len({r["digest"] for r in runs}) == 1
    lines = [f"Demo corpus at scale {scale:g}, recipes/demo.yaml without budgets, --stage all. "
             f"Outputs identical across all {len(runs)} runs: {'yes' if identical else 'NO'}.",
             "", "| run | engine | workers | wall | prepare (3 stages) | pretrain / highres / sft "
             "| pool started | CPU | other processes' cores | load avg before -> after |",
             "| --- | --- | ---: | ---: | ---: | --- | --- | ---: | ---: | --- |"]
    for r in runs:
        engine, workers = CONFIGS[r["config"]]
        cpu = f"{r['cpu']:.1f} s" if r["cpu"] is not None else "-"
        others = f"{r['others']:.2f}" if r["others"] is not None else "-"
        stages = " / ".join(f"{r['stages'].get(s, 0):.1f}" for s in ("pretrain", "highres", "sft"))
        lines.append(f"| {r['config']} #{r['repeat'] + 1} | {engine} | {workers} | "
                     f"{r['wall']:.1f} s | {r['prepare']:.1f} s | {stages} s | "
                     f"{'yes' if r['pool'] else 'no'} | {cpu} | {others} | "
                     f"{r['load'][0]:.2f} -> {r['load'][1]:.2f} |")
    lines.append("")
    if "w1" in best and "w2" in best:
        lines.append(f"- workers 2 vs 1, best wall clock: **{best['w1'] / best['w2']:.2f}x** "
                     "faster")
        cpu = {c: min(r["cpu"] for r in runs if r["config"] == c) for c in ("w1", "w2")}
        lines.append(f"- workers 2 vs 1, CPU time: {cpu['w2'] / cpu['w1']:.2f}x (the pool's "
                     "overhead: 1.00 would be none)")
    if "ray" in best and "w2" in best:
        lines.append(f"- --engine ray (2 CPUs) vs local --workers 2, best wall clock: "
                     f"{best['ray'] / best['w2']:.2f}x the time")
    return "\n".join(lines)
