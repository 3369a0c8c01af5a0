"""The build's process pool: tasks in order, inline or in spawned workers that die with it.

`Executor(workers)` runs `map(fn, tasks)` inline when `workers <= 1`, else in a spawn-based
`ProcessPoolExecutor` whose workers call `lifeline.die_with_parent` first, so a build that is
SIGKILLed leaves no process behind. The pool starts on the first map that has more than one
task, so a build with nothing to do (every unit cached, every shard final) never pays the
start-up of spawned interpreters. Results come back in task order, which keeps everything that
depends on them deterministic.

`on_result(phase, done)` is called after each result with the phase's count so far (over
every map of that phase): tests pass one in to crash a build at an exact point.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from ..lifeline import die_with_parent

TaskHook = Callable[[str, int], None]


def _worker_start(parent: int) -> None:
    die_with_parent(parent)


class Executor:
    """Runs tasks inline (workers <= 1) or in a lazily started, spawn-based process pool."""

    def __init__(self, workers: int, on_result: TaskHook | None = None):
        self.workers = max(1, int(workers))
        self.on_result = on_result
        self._pool: ProcessPoolExecutor | None = None
        self._done: dict[str, int] = {}

    @property
    def started(self) -> bool:
        return self._pool is not None

    def map(self, fn, tasks: Iterable, phase: str, bar=None) -> list:
        tasks = list(tasks)
        if self.workers > 1 and len(tasks) > 1 and self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"),
                                             initializer=_worker_start,
                                             initargs=(os.getpid(),))
        results = self._pool.map(fn, tasks) if self._pool is not None else map(fn, tasks)
        out = []
        for result in results:
            out.append(result)
            if bar is not None:
                bar.update(1)
            self._done[phase] = self._done.get(phase, 0) + 1
            if self.on_result is not None:
                self.on_result(phase, self._done[phase])
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
