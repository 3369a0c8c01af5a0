"""`mixdata build`: prepare (parallel, cached) -> plan (from lengths) -> write (parallel, atomic).

`build_stage(recipe, stage)` builds one stage into `shards/<recipe>/<stage>/` by default and
returns the output folder, which then holds the shards, `manifest.json` (byte-identical for
the same recipe, inputs and seed, whatever the worker count), `rejects.jsonl` and
`timings.json`.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from ..errors import MixdataError
from .manifest import build_manifest, write_json_atomic
from .plan import (
    PREPARE_MARGIN,
    SourceInput,
    plan_stage,
    prefix_length,
    shard_hash,
    stage_budget,
    unit_cost,
)
from .prepare import prepare_unit, task_for
from .write import ShardTask, write_shard_task

__all__ = ["build_stage", "default_out"]


def default_out(recipe, stage: str) -> Path:
    return Path("shards") / recipe.name / stage


class Executor:
    """Runs tasks inline (workers <= 1) or in a spawn-based process pool, preserving order."""

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self.pool = None
        if self.workers > 1:
            self.pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))

    def map(self, fn, tasks, bar=None, phase: str = ""):
        results = map(fn, tasks) if self.pool is None else self.pool.map(fn, tasks)
        out = []
        for result in results:
            out.append(result)
            if bar is not None:
                bar.update(1)
            _fault_point(phase)
        return out

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()


_FAULT_COUNTS: dict[str, int] = {}


def _fault_point(phase: str) -> None:
    """Crash-test hook: MIXDATA_FAULT_AFTER=prepare:3 SIGKILLs the build after 3 prepared
    units (or write:N after N shards), so tests can prove a re-run recovers exactly."""
    spec = os.environ.get("MIXDATA_FAULT_AFTER", "")
    if not spec or not phase or spec.split(":")[0] != phase:
        return
    _FAULT_COUNTS[phase] = _FAULT_COUNTS.get(phase, 0) + 1
    if _FAULT_COUNTS[phase] >= int(spec.split(":")[1]):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _bar(desc: str, total: int | None, progress: bool, unit: str):
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, leave=False,
                dynamic_ncols=True)


def build_stage(recipe, stage_name: str, out: str | Path | None = None, workers: int = 1,
                progress: bool = True) -> Path:
    if stage_name not in recipe.stages:
        raise MixdataError(f"stage {stage_name!r} is not in recipe {recipe.name!r}; "
                           f"stages: {', '.join(recipe.stages)}")
    out = Path(out) if out is not None else default_out(recipe, stage_name)
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob("*.tmp-*"):  # partial files of a crashed run; never final names
        leftover.unlink()
    stage = recipe.stages[stage_name]
    timings, started = {}, time.perf_counter()
    executor = Executor(workers)
    try:
        units, stats = _prepare(recipe, stage_name, out / ".prepare", executor, progress)
        timings["prepare_s"] = time.perf_counter() - started
        t = time.perf_counter()
        sources = {s: SourceInput(units=tuple(units[s]), paths=tuple(st["path"] for st in stats[s]),
                                  dedup=recipe.sources[s].filters.dedup) for s in units}
        bar = _bar("plan", None, progress, "doc")
        plan = plan_stage(stage, sources, seq_len=recipe.stage_seq_len(stage_name),
                          seed=recipe.seed, folder=out / ".plan", on_chunk=bar.update)
        bar.close()
        dedup_rejects = plan.duplicate_rejects(units)
        timings["plan_s"] = time.perf_counter() - t
        t = time.perf_counter()
        shard_infos = _write(recipe, stage_name, out, plan, stats, executor, progress)
        timings["write_s"] = time.perf_counter() - t
    finally:
        executor.close()
    manifest = build_manifest(recipe, stage_name, plan, stats, dedup_rejects, shard_infos)
    _write_rejects(out, stats, dedup_rejects)
    timings.update(total_s=time.perf_counter() - started, workers=executor.workers)
    write_json_atomic(out / "timings.json", timings)
    write_json_atomic(out / "manifest.json", manifest)
    return out


def _prepare(recipe, stage_name: str, cache: Path, executor: Executor, progress: bool):
    """Prepare each source's minimal unit prefix for the budget; returns units and stats."""
    from ..sources import open_source

    stage = recipe.stages[stage_name]
    shares = {s: v for s, v in stage.shares().items() if v > 0}
    units = {}
    for name in shares:
        units[name] = open_source(recipe.sources[name]).units()
        if not units[name]:
            raise MixdataError(f"source {name!r} has no input files for uri "
                               f"{recipe.sources[name].uri!r}; check the path or glob")
    stats = {s: [None] * len(u) for s, u in units.items()}
    costs = {s: [None] * len(u) for s, u in units.items()}
    bar = _bar("prepare", sum(len(u) for u in units.values()), progress, "unit")

    def run(wanted):
        tasks = [task_for(recipe, stage_name, s, units[s][i], cache) for s, i in wanted]
        results = executor.map(prepare_unit, tasks, bar, "prepare")
        for (s, i), task, result in zip(wanted, tasks, results):
            stats[s][i] = {**result, "path": task.path}
            costs[s][i] = unit_cost(result, task.path, stage.weight_by)

    need = None
    if stage.budget is not None:
        run([(s, 0) for s in units])
        need = _needs(recipe, stage_name, stats, shares)
    while wanted := _wanted_units(units, costs, need, executor.workers):
        run(wanted)
    bar.close()
    prefix = {s: prefix_length(costs[s], None if need is None else need[s]) for s in units}
    return ({s: units[s][:prefix[s]] for s in units},
            {s: stats[s][:prefix[s]] for s in units})


def _needs(recipe, stage_name, stats, shares) -> dict[str, float]:
    """Cost each source must supply; unit conversions use each source's first unit only, so
    the answer does not depend on how many units a parallel run happened to prepare."""
    import pyarrow.ipc as ipc

    mean_len = {}
    for s in shares:
        with ipc.open_file(stats[s][0]["path"] + ".arrow") as reader:
            lengths = reader.read_all()["length"].to_numpy()
        mean_len[s] = float(lengths.mean()) if len(lengths) else 1.0
    stage = recipe.stages[stage_name]
    budget = stage_budget(stage, recipe.stage_seq_len(stage_name), mean_len, shares)
    return {s: shares[s] * budget * PREPARE_MARGIN for s in shares}


def _wanted_units(units, costs, need, workers) -> list[tuple[str, int]]:
    """Next units to prepare: all of them without a budget, else a few per short source."""
    wanted = []
    for s in units:
        if prefix_length(costs[s], None if need is None else need[s]) is not None:
            continue
        pending = [i for i, c in enumerate(costs[s]) if c is None]
        wanted.extend((s, i) for i in (pending if need is None else pending[:workers]))
    return wanted


def _write(recipe, stage_name, out: Path, plan, stats, executor, progress) -> list[dict]:
    stage = recipe.stages[stage_name]
    paths = {s: [st["path"] for st in stats[s]] for s in stats}
    keys = {s: [os.path.basename(p) for p in paths[s]] for s in stats}
    context = json.dumps({"recipe": recipe.sha256, "stage": stage_name, "v": 1})
    tasks = []
    for n, group in enumerate(plan.shard_ranges(stage.pack.sequences_per_shard)):
        refs = plan.refs(group.start, len(group))
        tasks.append(ShardTask(out_dir=str(out), name=f"shard-{n:06d}.tar",
                               plan_hash=shard_hash(refs, plan.sources, keys, context),
                               first_index=group.start,
                               sequences=refs.sequences(plan.sources, paths), key_prefix=""))
    names = {t.name for t in tasks}
    for stale in out.glob("shard-*.tar"):
        if stale.name not in names:
            stale.unlink()
    bar = _bar("write", len(tasks), progress, "shard")
    infos = executor.map(write_shard_task, tasks, bar, "write")
    bar.close()
    return infos


def _write_rejects(out: Path, stats, dedup_rejects) -> None:
    lines = []
    for s in stats:
        for unit_stats in stats[s]:
            lines.extend(json.dumps(r, sort_keys=True) for r in unit_stats["rejects"])
        lines.extend(json.dumps(r, sort_keys=True) for r in dedup_rejects.get(s, []))
    tmp = out / f"rejects.jsonl.tmp-{os.getpid()}"
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, out / "rejects.jsonl")
