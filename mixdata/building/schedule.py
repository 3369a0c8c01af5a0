"""Where a stage's prepare tasks go: their order, and the estimate of the stage's work that
decides whether the local pool starts (`pool.START_WORK_S`). Neither changes what is built:
the engine delivers results in task order, and the stage puts them back in unit order.

- `unit_sizes`: each unit's input bytes (a parquet file's size shared by its row-group
  units), or 1 per unit when any unit is not a local file (a size lookup per remote file
  would cost a request), which makes the estimate count units instead. The stage sizes each
  source on its own, so a remote source's units (1 each) go after a local source's.
- `task_order`: largest first, so no big unit starts last while the other workers sit idle
  (a round lasts as long as its longest tail); with `sample`, each source's largest unit
  first of all, so the estimate has every source's rate after a few units. Rates differ by
  source far more than sizes do: a JSON of 3 MB of chat turns takes 50x longer than a
  parquet file of 3 MB of captioned images.
- `PrepareWork`: the estimate itself, `pool.Engine.map`'s `work`: the one-core seconds still
  to come, all a pool started now could share out.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable

from ..storage import is_local, local_path


def unit_sizes(units: list[str]) -> list[float]:
    """Input bytes of each unit (at least 1), or 1 each when any is not a local file."""
    files = [unit.split("#", 1)[0] for unit in units]
    if not all(is_local(f) for f in files):
        return [1.0] * len(units)
    try:
        sizes = {f: os.path.getsize(local_path(f)) for f in set(files)}
    except OSError:
        return [1.0] * len(units)
    counts = Counter(files)
    return [max(1.0, sizes[f] / counts[f]) for f in files]


def task_order(sources: list[str], sizes: list[float], sample: bool) -> list[int]:
    """Indices of the units (`sources[k]` their source, `sizes[k]` their size) in the order to
    hand them out: largest first (ties in the given order); with `sample`, each source's
    largest unit ahead of all the rest."""
    order = sorted(range(len(sizes)), key=lambda k: (-sizes[k], k))
    if not sample:
        return order
    first: dict[str, int] = {}
    for k in order:
        first.setdefault(sources[k], k)
    lead = set(first.values())
    return [k for k in order if k in lead] + [k for k in order if k not in lead]


def estimate_s(timed: dict[str, tuple[float, float]], todo: dict[str, float]) -> float:
    """One-core seconds of the work still to come: `todo[source]`, the size of its units to
    come, at its rate, the seconds per size of its units run so far (`timed[source]` =
    (seconds, size)); a source not timed yet takes the rate of all timed units. Nothing
    timed: 0 (there is no rate to extrapolate from)."""
    spent = sum(seconds for seconds, _ in timed.values())
    sized = sum(size for _, size in timed.values())
    if not sized:
        return 0.0
    overall = spent / sized
    rate = {s: seconds / size for s, (seconds, size) in timed.items() if size}
    return sum(size * rate.get(s, overall) for s, size in todo.items())


class PrepareWork:
    """A stage's prepare work still to come, in one-core seconds (`estimate_s`), fed by the
    stage: `expect` the units it will prepare (by key: a unit expected twice counts once, so
    a budgeted stage can expect the units its budget projects, then each round's), `done`
    each one as it is delivered, with the seconds it ran inline (0: it was cached, or ran on
    a worker)."""

    def __init__(self) -> None:
        self.expected: dict[object, tuple[str, float]] = {}
        self.todo: Counter[str] = Counter()
        self.timed: dict[str, tuple[float, float]] = {}

    def expect(self, units: Iterable[tuple[object, str, float]]) -> None:
        for key, source, size in units:
            if key not in self.expected:
                self.expected[key] = (source, size)
                self.todo[source] += size

    def done(self, key: object, seconds: float) -> None:
        source, size = self.expected.pop(key)
        self.todo[source] -= size
        if seconds > 0:
            spent, sized = self.timed.get(source, (0.0, 0.0))
            self.timed[source] = (spent + seconds, sized + size)

    def __call__(self) -> float:
        return estimate_s(self.timed, self.todo)
