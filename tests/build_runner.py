"""Run one build in its own process, as the crash tests need: `python build_runner.py RECIPE
STAGE OUT [WORKERS] [PHASE:N]`. With PHASE:N the build SIGKILLs itself right after its N-th
finished unit ("prepare") or shard ("write"), through the build's `on_result` hook. With
WORKERS > 1 the pool starts at once (`START_WORK_S` 0), though these builds are small: the
crash tests are about its worker processes."""
from __future__ import annotations

import os
import signal
import sys

from mixdata.building import build_stage, pool
from mixdata.recipe import load_recipe


def kill_after(spec: str):
    phase, count = spec.split(":")

    def on_result(name: str, done: int) -> None:
        if name == phase and done >= int(count):
            os.kill(os.getpid(), signal.SIGKILL)
    return on_result


def main() -> None:
    recipe, stage, out = sys.argv[1:4]
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    hook = kill_after(sys.argv[5]) if len(sys.argv) > 5 else None
    pool.START_WORK_S = 0
    build_stage(load_recipe(recipe), stage, out=out, workers=workers, progress=False,
                on_result=hook)


if __name__ == "__main__":
    main()
