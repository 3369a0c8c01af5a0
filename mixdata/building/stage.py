"""Building one stage: prepare (parallel, cached) -> plan (from lengths) -> write (parallel,
atomic) -> rejects, accounting check and manifest (last).

Every phase runs its tasks on one engine (`pool.Engine`: the local process pool, or Ray),
through the same ordered map, so nothing here depends on where a task ran. The manifest is
byte-identical for the same recipe, inputs and seed whatever the engine and worker count
(its `run` section aside, which holds network retries). A unit whose readers hit damage, a
record that fails a step: both are counted rejects, never a crashed build; a source that
rejects more than its `max_reject_ratio` stops it with an error saying what to check.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import MixdataError
from ..manifest import write_manifest
from ..sources import open_source
from ..storage import remove_temp_files, write_json_atomic
from .engines import open_engine
from .manifest import build_manifest
from .plan import (
    CHUNK_DOCS,
    PREPARE_MARGIN,
    SourceInput,
    pack_task,
    plan_stage,
    prefix_length,
    shard_hash,
    stage_budget,
)
from .pool import Engine, TaskHook
from .prepare import UnitStats, cached_stats, prepare_unit, task_for
from .rejects import RejectGuard, write_rejects
from .schedule import PrepareWork, task_order, unit_sizes
from .write import ShardTask, final_info, write_shard_task

# A plan of one chunk is packed here (nothing to overlap); an engine packs any plan of two
# chunks or more, and packing alone starts the local pool when its work, at PACK_S_PER_DOC
# one-core seconds per document, reaches pool.START_WORK_S (about 1.7M documents).
PACK_S_PER_DOC = 1.5e-6
# Prepare tasks (a few KB) and results (a few hundred bytes) are small, so its map looks far
# ahead: the largest unit goes first, and the other workers run past it while it lasts.
PREPARE_AHEAD = 256


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """How a build runs (none of it changes what it writes).

    `workers`: processes for the prepare, plan and write phases (for `engine="ray"` without
    an address, the CPUs of its private Ray instance); `progress`: bars on stderr; `strict`:
    stop at the first reject; `on_result(phase, done)`: called after each finished unit
    ("prepare"), plan chunk ("plan") and shard ("write"), e.g. by tests that crash a build at
    a given point; `engine`: "local" (a process pool) or "ray", or an engine already open
    (`engines.open_engine`), which the build then uses and leaves open, e.g. for several stages
    on one Ray instance; `address`: an existing Ray cluster's (`ray start --head` prints it;
    "auto" finds it), else Ray starts privately.
    """

    workers: int = 1
    progress: bool = True
    strict: bool = False
    on_result: TaskHook | None = None
    engine: str | Engine = "local"
    address: str | None = None


def default_out(recipe, stage: str) -> Path:
    return Path("shards") / recipe.name / stage


def build_stage(recipe, stage_name: str, out: str | Path | None = None, *, workers: int = 1,
                progress: bool = True, strict: bool = False,
                on_result: TaskHook | None = None, engine: str | Engine = "local",
                address: str | None = None) -> Path:
    """Build `stage_name` of `recipe` into `out` (default `shards/<recipe>/<stage>`); returns
    the folder, which then holds the shards, `manifest.json`, `rejects.jsonl` and
    `timings.json`. See `BuildOptions` for the keyword arguments."""
    options = BuildOptions(workers=workers, progress=progress, strict=strict,
                           on_result=on_result, engine=engine, address=address)
    if stage_name not in recipe.stages:
        raise MixdataError(f"stage {stage_name!r} is not in recipe {recipe.name!r}; "
                           f"stages: {', '.join(recipe.stages)}")
    if recipe.demo is not None:
        recipe.demo.ensure()  # generated once, before any worker reads it
    out = Path(out) if out is not None else default_out(recipe, stage_name)
    out.mkdir(parents=True, exist_ok=True)
    remove_temp_files(out)
    owned = isinstance(options.engine, str)
    executor = open_engine(options.engine, options.workers, options.on_result,
                           options.address) if owned else options.engine
    timings, started = {"engine": executor.name}, time.perf_counter()
    retried_before = dict(executor.retries)  # an engine shared by stages counts them all
    try:
        stats = _prepare(recipe, stage_name, out / ".prepare", executor, options)
        timings["prepare_s"] = time.perf_counter() - started
        t = time.perf_counter()
        plan = _plan(recipe, stage_name, stats, out, executor, options)
        timings["plan_s"] = time.perf_counter() - t
        t = time.perf_counter()
        shard_infos = _write(recipe, stage_name, out, plan, stats, executor, options)
        timings["write_s"] = time.perf_counter() - t
        timings["workers"] = executor.workers  # before close: Ray's is asked of the cluster
    finally:
        timings["pool_started"] = executor.started
        if owned:
            executor.close()
    task_retries = {phase: n - retried_before.get(phase, 0)
                    for phase, n in executor.retries.items() if n > retried_before.get(phase, 0)}
    manifest = build_manifest(recipe, stage_name, plan, stats, shard_infos, task_retries)
    write_rejects(out, [u for s in stats for u in stats[s]])
    timings.update(total_s=time.perf_counter() - started, task_retries=task_retries)
    write_json_atomic(out / "timings.json", timings)
    write_manifest(out, manifest)
    return out


def _bar(desc: str, total: int | None, progress: bool, unit: str):
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, leave=False,
                dynamic_ncols=True)


def _prepare(recipe, stage_name: str, cache: Path, executor: Engine,
             options: BuildOptions) -> dict[str, list[UnitStats]]:
    """Prepare each source's minimal unit prefix for the budget; its UnitStats per source."""
    stage = recipe.stages[stage_name]
    shares = {s: v for s, v in stage.shares().items() if v > 0}
    units = {}
    for name in shares:
        units[name] = open_source(recipe.sources[name]).units()
        if not units[name]:
            raise MixdataError(f"source {name!r} has no input files for uri "
                               f"{recipe.sources[name].uri!r}; check the path or glob")
    stats: dict[str, list[UnitStats | None]] = {s: [None] * len(u) for s, u in units.items()}
    sizes = {s: unit_sizes(u) for s, u in units.items()}
    guard = RejectGuard(recipe, strict=options.strict)
    work = PrepareWork()
    bar = _bar("prepare", sum(len(u) for u in units.values()), options.progress, "unit")

    def expect(wanted: list[tuple[str, int]]) -> None:
        work.expect(((s, i), s, sizes[s][i]) for s, i in wanted)

    def run(wanted: list[tuple[str, int]]) -> None:
        order = task_order([s for s, _ in wanted], [sizes[s][i] for s, i in wanted],
                           sample=not executor.started)
        expect([wanted[k] for k in order])
        tasks = (task_for(recipe, stage_name, s, units[s][i], cache)
                 for s, i in (wanted[k] for k in order))
        with closing(executor.map(prepare_unit, tasks, "prepare", bar, cached=cached_stats,
                                  work=work, ahead=PREPARE_AHEAD)) as results:
            timed = _timed(results, [wanted[k] for k in order], work, executor)
            for k, result in _in_order(order, timed):
                s, i = wanted[k]
                stats[s][i] = result
                guard.check(s, result)  # in unit order, whatever finished first

    need = None
    if stage.budget is not None:
        run([(s, 0) for s in units])
        need = _needs(recipe, stage_name, stats, shares)
        expect(_projected(stats, need, stage.weight_by))  # what the rounds will likely take
    while wanted := _wanted_units(stats, stage.weight_by, need, executor.workers):
        run(wanted)
    bar.close()
    prefix = {s: prefix_length(_costs(stats[s], stage.weight_by),
                               None if need is None else need[s]) for s in units}
    return {s: stats[s][:prefix[s]] for s in units}


def _timed(results, keys: list, work: PrepareWork, executor: Engine) -> Iterator:
    """`results` as they come, each unit (`keys`, in task order) told to `work` with the
    seconds it ran inline: the engine's inline time grows by exactly that while it runs."""
    before = executor.inline_s.get("prepare", 0.0)
    for key, result in zip(keys, results):
        now = executor.inline_s.get("prepare", 0.0)
        work.done(key, now - before)
        before = now
        yield result


def _projected(stats, need: dict[str, float], weight_by: str) -> list[tuple[str, int]]:
    """The units a budgeted stage will likely prepare, beyond those already prepared: as many
    of each source's first units as its need takes at its first unit's cost."""
    out = []
    for s, units in stats.items():
        first = units[0].cost(weight_by)
        count = len(units) if first <= 0 else min(len(units), math.ceil(need[s] / first))
        out.extend((s, i) for i in range(count) if units[i] is None)
    return out


def _in_order(order: list[int], results) -> Iterator[tuple[int, object]]:
    """`(k, result)` for k = 0, 1, ..., from results that arrive in `order`'s order, each as
    soon as every earlier k has arrived too."""
    held, k = {}, 0
    for index, result in zip(order, results):
        held[index] = result
        while k in held:
            yield k, held.pop(k)
            k += 1


def _costs(stats: list[UnitStats | None], weight_by: str) -> list[float | None]:
    return [None if u is None else u.cost(weight_by) for u in stats]


def _needs(recipe, stage_name: str, stats, shares) -> dict[str, float]:
    """Cost each source must supply; unit conversions use each source's first unit only, so
    the answer does not depend on how many units a parallel run happened to prepare."""
    mean_len = {s: stats[s][0].mean_length() for s in shares}
    stage = recipe.stages[stage_name]
    budget = stage_budget(stage, recipe.stage_seq_len(stage_name), mean_len, shares)
    return {s: shares[s] * budget * PREPARE_MARGIN for s in shares}


def _wanted_units(stats, weight_by: str, need, workers: int) -> list[tuple[str, int]]:
    """Next units to prepare: all of them without a budget, else a few per short source."""
    wanted = []
    for s, units in stats.items():
        costs = _costs(units, weight_by)
        if prefix_length(costs, None if need is None else need[s]) is not None:
            continue
        pending = [i for i, c in enumerate(costs) if c is None]
        wanted.extend((s, i) for i in (pending if need is None else pending[:workers]))
    return wanted


def _plan(recipe, stage_name: str, stats, out: Path, executor: Engine, options: BuildOptions):
    sources = {s: SourceInput(units=tuple(u.unit for u in units),
                              paths=tuple(u.path for u in units),
                              dedup=recipe.sources[s].filters.dedup)
               for s, units in stats.items()}
    docs = sum(u.docs for units in stats.values() for u in units)

    def pack_map(tasks):
        return executor.map(pack_task, tasks, "plan", work=lambda: docs * PACK_S_PER_DOC)

    bar = _bar("plan", None, options.progress, "doc")
    try:
        return plan_stage(recipe.stages[stage_name], sources,
                          seq_len=recipe.stage_seq_len(stage_name), seed=recipe.seed,
                          folder=out / ".plan", chunk_docs=CHUNK_DOCS, on_chunk=bar.update,
                          pack_map=pack_map if docs >= 2 * CHUNK_DOCS else None)
    finally:
        bar.close()


def _write(recipe, stage_name: str, out: Path, plan, stats, executor: Engine,
           options: BuildOptions) -> list[dict]:
    """Write every shard; the tasks are made as the engine takes them (a window at a time),
    so memory does not grow with the number of shards beyond one info dict each."""
    per_shard = recipe.stages[stage_name].pack.sequences_per_shard
    _remove_stale_shards(out, plan.shard_count(per_shard))
    paths = {s: [u.path for u in stats[s]] for s in stats}
    keys = {s: [os.path.basename(p) for p in paths[s]] for s in stats}
    context = json.dumps({"recipe": recipe.sha256, "stage": stage_name, "v": 1})

    def tasks():
        for n, group in enumerate(plan.shard_ranges(per_shard)):
            refs = plan.refs(group.start, len(group))
            yield ShardTask.of(str(out), f"shard-{n:06d}.tar",
                               shard_hash(refs, plan.sources, keys, context), refs,
                               plan.sources, paths)

    bar = _bar("write", plan.shard_count(per_shard), options.progress, "shard")
    with closing(executor.map(write_shard_task, tasks(), "write", bar,
                              cached=final_info)) as results:
        infos = list(results)
    bar.close()
    return infos


_SHARD_NAME = re.compile(r"shard-(\d{6,})\.tar")


def _remove_stale_shards(out: Path, count: int) -> None:
    """Remove shards of an earlier plan that this one does not have (by name)."""
    for path in out.glob("shard-*.tar"):
        match = _SHARD_NAME.fullmatch(path.name)
        index = int(match.group(1)) if match else count
        if index >= count or path.name != f"shard-{index:06d}.tar":
            path.unlink()
