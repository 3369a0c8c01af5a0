"""Where a build's wall clock goes (issue 16): every task of an all-data demo build timed, then
what each process did and when it sat idle.

    PYTHONPATH=. MIXDATA_CACHE=/tmp/mdcache MIXDATA_DEMO_SCALE=20 \
        .venv/bin/python tools/build_timeline.py --workers 2 --out /tmp/timeline

The build is `tools/scale_builds.py`'s (recipes/demo.yaml without budgets, every stage on one
engine, as `mixdata build --stage all` runs it). Each prepare unit, plan chunk and shard is
wrapped so that the process that ran it appends one JSON line (`tasks-<pid>.jsonl` under
`--out`): its phase, stage, source, unit, input bytes, CPU seconds, start and end (seconds
since the build started). The report then gives, per process, its tasks, CPU, busy time and
idle gaps, and per stage and phase the span and each process's share, so the serial driver
work (before the pool, between stages) and a worker left waiting (a long unit at the head
of the window, the tail of a phase) show as gaps. CPU seconds per source compare a workers-2
run with a workers-1 run: a unit's CPU in a worker against the same unit inline.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

GAP_S = 0.1  # idle time between two tasks of a process worth listing


class Timed:
    """`fn` that logs each call (see the module docstring); picklable, so it runs in pool
    workers, which read where to log from the environment they inherit."""

    def __init__(self, fn, phase: str) -> None:
        self.fn, self.phase, self.__name__ = fn, phase, fn.__name__

    def __call__(self, task):
        cpu, start = time.process_time(), time.time()
        result = self.fn(task)
        cpu, end = time.process_time() - cpu, time.time()
        unit = str(getattr(task, "unit", "") or getattr(task, "name", ""))
        size = os.path.getsize(unit.split("#", 1)[0]) if self.phase == "prepare" else 0
        zero = float(os.environ["TIMELINE_T0"])
        line = {"pid": os.getpid(), "phase": self.phase, "stage": getattr(task, "stage", ""),
                "source": getattr(task, "source", ""), "unit": unit, "size": size,
                "cpu": cpu, "t0": start - zero, "t1": end - zero}
        with open(Path(os.environ["TIMELINE_DIR"]) / f"tasks-{os.getpid()}.jsonl", "a") as fh:
            fh.write(json.dumps(line) + "\n")
        return result


def build(workers: int, out: Path) -> list[dict]:
    """The timed all-data build into `out`; per stage its timings.json and its span."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scale_builds import all_data_recipe

    import mixdata.building.stage as stage_module
    from mixdata.building.engines import open_engine
    from mixdata.recipe import load_recipe

    os.environ.update(TIMELINE_T0=str(time.time()), TIMELINE_DIR=str(out))
    for name, phase in (("prepare_unit", "prepare"), ("pack_task", "plan"),
                        ("write_shard_task", "write")):
        setattr(stage_module, name, Timed(getattr(stage_module, name), phase))
    recipe = load_recipe(all_data_recipe(out))
    engine, stages = open_engine("local", workers), []
    try:
        for name in recipe.stages:
            start = time.time() - float(os.environ["TIMELINE_T0"])
            folder = stage_module.build_stage(recipe, name, out=out / name, workers=workers,
                                              progress=False, engine=engine)
            timings = json.loads((folder / "timings.json").read_text())
            stages.append({"stage": name, "t0": start, "t1": start + timings["total_s"],
                           **timings})
    finally:
        engine.close()
    return stages


def report(tasks: list[dict], stages: list[dict]) -> str:
    end = max(t["t1"] for t in tasks)
    lines = [f"last task ended {end:.2f} s after the build started"]
    for pid in sorted({t["pid"] for t in tasks}):
        mine = sorted((t for t in tasks if t["pid"] == pid), key=lambda t: t["t0"])
        busy = sum(t["t1"] - t["t0"] for t in mine)
        gaps = [f"{a['t1']:.2f}+{b['t0'] - a['t1']:.2f} ({b['stage'] or '-'} {b['phase']})"
                for a, b in itertools.pairwise(mine) if b["t0"] - a["t1"] > GAP_S]
        lines.append(f"pid {pid}: {len(mine)} tasks, CPU {sum(t['cpu'] for t in mine):.2f} s, "
                     f"busy {busy:.2f} s, first at {mine[0]['t0']:.2f}, idle gaps: "
                     f"{', '.join(gaps) or 'none'}")
    for stage in stages:
        lines.append(f"{stage['stage']}: {stage['t0']:.2f}-{stage['t1']:.2f} s (prepare "
                     f"{stage['prepare_s']:.2f}, plan {stage['plan_s']:.2f}, write "
                     f"{stage['write_s']:.2f}), pool {stage['pool_started']}")
        for phase in ("prepare", "plan", "write"):
            mine = [t for t in tasks if t["phase"] == phase and
                    stage["t0"] <= t["t0"] < stage["t1"]]
            if mine:
                share = defaultdict(float)
                for t in mine:
                    share[t["pid"]] += t["t1"] - t["t0"]
                lines.append(f"  {phase}: {len(mine)} tasks, span "
                             f"{max(t['t1'] for t in mine) - min(t['t0'] for t in mine):.2f}"
                             f" s, busy by pid " + ", ".join(f"{p} {s:.2f}" for p, s in
                                                             share.items()))
    by_source = defaultdict(lambda: [0, 0.0, 0.0])
    for t in tasks:
        row = by_source[(t["stage"] or "-", t["phase"], t["source"] or "-")]
        row[0] += 1
        row[1] += t["cpu"]
        row[2] = max(row[2], t["t1"] - t["t0"])
    lines.append("CPU by stage, phase, source (tasks, CPU s, longest task s):")
    lines += [f"  {' '.join(k)}: {n}, {cpu:.2f}, {longest:.2f}"
              for k, (n, cpu, longest) in sorted(by_source.items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="a new folder")
    args = parser.parse_args()
    args.out.mkdir(parents=True)
    stages = build(args.workers, args.out)
    tasks = [json.loads(line) for path in args.out.glob("tasks-*.jsonl")
             for line in path.read_text().splitlines()]
    (args.out / "stages.json").write_text(json.dumps(stages, indent=1))
    print(report(tasks, stages))


if __name__ == "__main__":
    main()
