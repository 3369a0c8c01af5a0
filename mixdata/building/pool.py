"""Where a build's tasks run: the engine contract, and the local engine (a process pool).

An engine's `map(fn, tasks, phase, bar, cached=, work=, ahead=)` yields `fn(task)` for each
task, **in task order**, whoever computed it; that is what keeps everything downstream
deterministic. It pulls tasks lazily and keeps at most `window` of them submitted and
undelivered (`ahead`, when larger, for a map whose tasks and results are small), so a phase
of a million shards holds a few dozen task objects at a time, never the list. `cached(task)`,
when given, runs in the build's own process first: a result already on disk (a prepared unit,
a final shard) comes back from there and never reaches a worker. `on_result(phase, done)` is
called after each delivered result with the phase's count so far (over every map of that
phase): tests crash a build at an exact point with it. `retries[phase]` counts the task
attempts an engine re-ran because their worker died (Ray's retries; the local engine has
none), over every map of that phase. `inline_s[phase]`: seconds tasks of that phase ran in
the build's own process.

`Executor(workers)` is the local engine: inline when `workers <= 1`, else a spawn-based
`ProcessPoolExecutor` whose workers call `lifeline.die_with_parent` first, so a SIGKILLed
build leaves no process behind. The pool starts only when it has enough work to pay for
it: once `work()`, the caller's estimate of the one-core seconds still to come (the stage's
prepare extrapolates from the units it ran inline, one per source first), reaches
`START_WORK_S` (2.5 s), at the next two tasks that need a worker (`cached` said no); without
`work`, the phase's own inline seconds so far stand for what is to come. Starting costs
about a second on every core (each worker imports the package and opens its sources
afresh), which work of 2.5 s or more wins back on two workers, and later stages reuse the
pool for free. So a small build never pays for it (the demo at scale 1: at most 0.7 s to
come in any stage, once a unit of each source ran), and a large one starts it after a unit
of each source (scale 20: 6 s or more to come in each stage). The Ray engine
(`ray_engine.RayEngine`) implements the same contract, and starts at the first two tasks
(`start_work_s` 0), as the user asked for Ray.
"""
from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, Protocol

from ..lifeline import die_with_parent

TaskHook = Callable[[str, int], None]
WINDOW_PER_WORKER = 4   # tasks in flight per worker: enough that none waits on the parent
MIN_WINDOW = 16         # ... and room for small tasks to run past a long one at the head
START_WORK_S = 2.5      # one-core seconds still to come for the local pool to start (above)
WorkEstimate = Callable[[], float]


class Engine(Protocol):
    """What `stage.build_stage` runs its phases on (see the module docstring)."""

    name: str                           # "local" or "ray"

    @property
    def workers(self) -> int: ...       # tasks it runs at once (sizes the budget rounds)

    @property
    def started(self) -> bool: ...      # whether it started workers (a pool, a Ray client)

    @property
    def retries(self) -> dict[str, int]: ...  # re-run attempts by phase (module docstring)

    @property
    def inline_s(self) -> dict[str, float]: ...  # seconds run inline by phase (docstring)

    def map(self, fn: Callable, tasks: Iterable, phase: str, bar=None, *,
            cached: Callable | None = None, work: WorkEstimate | None = None,
            ahead: int = 0) -> Iterator: ...

    def close(self) -> None: ...


class _Slot:
    """One task's place in the output order: its result, or the handle that will give it."""

    __slots__ = ("done", "handle", "result", "task")

    def __init__(self, task) -> None:
        self.task, self.handle, self.result, self.done = task, None, None, False


class OrderedEngine:
    """The ordered, windowed `map` shared by the engines; subclasses say how a task is
    submitted (`_submit`, returning a handle), waited for (`_wait`) and abandoned
    (`_abandon`), and whether workers exist (`_ready`) or can be started (`_can_start`,
    `_start`). A task no worker takes runs inline, when it is delivered; workers start only
    once the work to come (`work()`, else the phase's inline seconds) reaches
    `start_work_s`."""

    start_work_s = 0.0

    def __init__(self, on_result: TaskHook | None = None) -> None:
        self.on_result = on_result
        self.inline_s: dict[str, float] = {}  # time spent running tasks here, by phase
        self._counts: dict[str, int] = {}
        self.retries: dict[str, int] = {}

    @property
    def window(self) -> int:
        return max(MIN_WINDOW, WINDOW_PER_WORKER * self.workers)

    def map(self, fn: Callable, tasks: Iterable, phase: str, bar=None, *,
            cached: Callable | None = None, work: WorkEstimate | None = None,
            ahead: int = 0) -> Iterator:
        queue: deque[_Slot] = deque()
        waiting: list[_Slot] = []   # needing a worker, before one exists
        limit = max(self.window, ahead)
        try:
            for task in tasks:
                slot = _Slot(task)
                queue.append(slot)
                hit = cached(task) if cached is not None else None
                if hit is not None:
                    slot.result, slot.done = hit, True
                elif self._ready():
                    slot.handle = self._submit(fn, task)
                elif self._can_start() and self._worth_starting(phase, work):
                    waiting.append(slot)
                    if len(waiting) > 1:
                        self._start()
                        self._submit_all(fn, waiting)
                inline = slot.handle is None and not slot.done and not waiting
                while queue and (queue[0].done or inline or len(queue) >= limit):
                    yield self._deliver(fn, self._pop(queue, waiting), phase, bar)
            while queue:
                yield self._deliver(fn, self._pop(queue, waiting), phase, bar)
        finally:
            self._abandon([s.handle for s in queue if s.handle is not None])

    def _worth_starting(self, phase: str, work: WorkEstimate | None) -> bool:
        if self.start_work_s <= 0:
            return True
        to_come = work() if work is not None else self.inline_s.get(phase, 0.0)
        return to_come >= self.start_work_s

    @staticmethod
    def _pop(queue: deque[_Slot], waiting: list[_Slot]) -> _Slot:
        slot = queue.popleft()
        if waiting and waiting[0] is slot:  # the one task waiting for a worker runs inline
            waiting.clear()
        return slot

    def _submit_all(self, fn: Callable, slots: list[_Slot]) -> None:
        for slot in slots:
            slot.handle = self._submit(fn, slot.task)
        slots.clear()

    def _deliver(self, fn: Callable, slot: _Slot, phase: str, bar) -> Any:
        if not slot.done and slot.handle is None:
            started = time.perf_counter()
            slot.result = fn(slot.task)
            self.inline_s[phase] = self.inline_s.get(phase, 0.0) + time.perf_counter() - started
        elif not slot.done:
            slot.result, retried = self._wait(slot.handle)
            if retried:
                self.retries[phase] = self.retries.get(phase, 0) + retried
        if bar is not None:
            bar.update(1)
        self._counts[phase] = self._counts.get(phase, 0) + 1
        if self.on_result is not None:
            self.on_result(phase, self._counts[phase])
        return slot.result

    # What a subclass provides.
    workers: int

    def _ready(self) -> bool:
        raise NotImplementedError

    def _can_start(self) -> bool:
        """Whether this engine has workers to start (False: it runs everything inline)."""
        raise NotImplementedError

    def _start(self) -> None:
        raise NotImplementedError

    def _submit(self, fn: Callable, task) -> Any:
        raise NotImplementedError

    def _wait(self, handle) -> tuple[Any, int]:
        """The task's result, and how many times it was re-run after its worker died."""
        raise NotImplementedError

    def _abandon(self, handles: list) -> None:
        raise NotImplementedError


def _worker_start(parent: int) -> None:
    die_with_parent(parent)


class Executor(OrderedEngine):
    """The local engine: inline (workers <= 1) or a lazily started spawn process pool;
    `start_work_s` (default `START_WORK_S`, read when made): the work to come, in one-core
    seconds, for it to start (0: at once)."""

    name = "local"

    def __init__(self, workers: int, on_result: TaskHook | None = None,
                 start_work_s: float | None = None) -> None:
        super().__init__(on_result)
        self.workers = max(1, int(workers))
        self.start_work_s = START_WORK_S if start_work_s is None else start_work_s
        self._pool: ProcessPoolExecutor | None = None

    @property
    def started(self) -> bool:
        return self._pool is not None

    def _ready(self) -> bool:
        return self._pool is not None

    def _can_start(self) -> bool:
        return self.workers > 1

    def _start(self) -> None:
        self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"),
                                         initializer=_worker_start, initargs=(os.getpid(),))

    def _submit(self, fn: Callable, task) -> Future:
        return self._pool.submit(fn, task)

    def _wait(self, handle: Future) -> tuple[Any, int]:
        return handle.result(), 0  # a dead pool worker breaks the pool: no retries here

    def _abandon(self, handles: list[Future]) -> None:
        for future in handles:
            future.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
