"""Exact, deterministic mixing of documents across sources, streamed in bounded memory.

The schedule is a smooth deficit round-robin in its virtual-time form (weighted fair
queueing): each document of source s gets the tag `(cost emitted by s before it + half its
cost) / share_s`, and the stream emits documents in tag order (ties: source order, then
position). At every step this emits the next document of the source whose emitted cost,
counted up to the middle of its next document, lags its target share the most; so every
prefix of the stream holds each source within about one document of its exact share.

Epoch order. Epoch e of a source visits its documents in a blocked permutation: the source
is cut into blocks of `BLOCK` consecutive documents, the blocks are visited in the order
`default_rng([seed, crc32(source), e]).permutation(blocks)`, and each window of
`WINDOW_BLOCKS` consecutive blocks of that order is visited in the permutation drawn by
`default_rng([seed, crc32(source), e, window])`. A source of at most `BLOCK *
WINDOW_BLOCKS` documents is one window, so its epochs are uniform permutations; a larger
one needs one window in memory at a time, never the whole source. No global random state.

Streaming. `StreamSchedule` reads each source through a `DocTable` (contiguous ranges of
document columns) and yields the schedule as chunks: chunk j holds the documents whose tags
fall in [j * span, (j + 1) * span). Virtual time advances by about one unit of cost per unit
emitted, so a chunk holds about `span` cost, and its boundaries depend only on the shares,
the costs, the seed and `span`, never on who consumes the chunks.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from .errors import MixdataError

BLOCK = 8192          # documents per block of the epoch permutation
WINDOW_BLOCKS = 16    # blocks permuted together (131,072 documents)


class MixError(MixdataError):
    """A mixture that cannot be scheduled (a source too small for its share, or empty)."""


class Pick(NamedTuple):
    source: str
    index: int   # document index within costs[source]
    epoch: int   # 0 for the first pass over the source


@dataclass
class MixPlan:
    picks: list[Pick]
    epochs: dict[str, float]   # documents emitted / documents available, per source
    cost: dict[str, int]       # total cost emitted, per source


class DocTable(Protocol):
    """A source's documents as columns, read by contiguous ranges of document indices.

    `size`: documents in the index space; `kept`: those taking part (the rest are dropped,
    e.g. duplicates); `kept_cost`: their total cost. `read(start, stop)` returns equal-length
    arrays: "cost" (required), "keep" (optional bool) and any columns to carry along.
    """

    size: int
    kept: int
    kept_cost: float

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]: ...


class ArrayTable:
    """A DocTable over in-memory arrays (every document kept)."""

    def __init__(self, cost, **columns) -> None:
        self.columns = {"cost": np.asarray(cost, np.int64), **columns}
        self.size = self.kept = len(self.columns["cost"])
        self.kept_cost = float(self.columns["cost"].sum())

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: v[start:stop] for k, v in self.columns.items()}


def epoch_windows(source: str, epoch: int, n: int, seed: int
                  ) -> Iterator[tuple[list[tuple[int, int]], np.ndarray]]:
    """Epoch `epoch` of `source`, window by window: (document ranges, permutation of the
    window's documents in range order); see the module docstring."""
    blocks = -(-n // BLOCK)
    key = zlib.crc32(source.encode())
    order = np.random.default_rng([seed, key, epoch]).permutation(blocks).tolist()
    for w, first in enumerate(range(0, blocks, WINDOW_BLOCKS)):
        ranges = [(b * BLOCK, min((b + 1) * BLOCK, n)) for b in order[first:first + WINDOW_BLOCKS]]
        count = sum(b - a for a, b in ranges)
        yield ranges, np.random.default_rng([seed, key, epoch, w]).permutation(count)


def permutation(source: str, epoch: int, n: int, seed: int) -> np.ndarray:
    """The order in which epoch `epoch` of `source` visits its `n` documents."""
    parts = [np.concatenate([np.arange(a, b) for a, b in ranges])[perm]
             for ranges, perm in epoch_windows(source, epoch, n, seed)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class SourceStream:
    """One source's documents in schedule order over endless epochs, with their tags,
    generated a window at a time and handed out by tag."""

    def __init__(self, name: str, table: DocTable, share: float, seed: int) -> None:
        self.name, self.table, self.share, self.seed = name, table, share, seed
        self.buffer: dict[str, np.ndarray] = {}
        self.emitted_cost = 0.0     # cost of every document generated so far
        self.repeat_tag: float | None = None   # tag of the first document of epoch 1
        self.used = 0
        self.used_cost = 0.0
        self._windows = self._generate()

    def _generate(self) -> Iterator[dict[str, np.ndarray]]:
        epoch = 0
        while True:
            for ranges, perm in epoch_windows(self.name, epoch, self.table.size, self.seed):
                parts = [self.table.read(a, b) for a, b in ranges]
                cols = {k: np.concatenate([p[k] for p in parts])[perm] for k in parts[0]}
                cols["index"] = np.concatenate([np.arange(a, b) for a, b in ranges])[perm]
                if "keep" in cols:
                    cols = {k: v[cols["keep"]] for k, v in cols.items() if k != "keep"}
                cols["epoch"] = np.full(len(cols["index"]), epoch, np.int32)
                yield cols
            epoch += 1

    def _extend(self) -> None:
        cols = next(self._windows)
        cost = cols["cost"].astype(np.float64)
        ends = self.emitted_cost + np.cumsum(cost)
        cols["tag"] = (ends - cost / 2) / self.share
        if self.repeat_tag is None and len(cost) and cols["epoch"][0] >= 1:
            self.repeat_tag = float(cols["tag"][0])
        if len(cost):
            self.emitted_cost = float(ends[-1])
        self.buffer = ({k: np.concatenate([self.buffer[k], v]) for k, v in cols.items()}
                       if self.buffer else cols)

    def take_before(self, horizon: float) -> dict[str, np.ndarray]:
        """Remove and return the buffered documents with tag < horizon (generating more)."""
        while not self.buffer or self.buffer["tag"][-1] < horizon:
            self._extend()
        cut = int(np.searchsorted(self.buffer["tag"], horizon, side="left"))
        out = {k: v[:cut] for k, v in self.buffer.items()}
        self.buffer = {k: v[cut:] for k, v in self.buffer.items()}
        return out


class ScheduledChunk(NamedTuple):
    """Documents of one chunk in schedule order: `source[i]` indexes the schedule's source
    names, `columns` holds "index" (within the source), "epoch", "cost" and what the tables
    carried."""

    source: np.ndarray
    columns: dict[str, np.ndarray]


def normalise(shares: dict[str, float], tables: dict[str, DocTable]) -> dict[str, float]:
    """Shares of the sources with a positive share, summing to 1; MixError for an active
    source with no documents or zero total cost."""
    if any(v < 0 or not math.isfinite(v) for v in shares.values()):
        raise ValueError(f"shares must be finite and >= 0, got {shares}")
    active = {s: float(v) for s, v in shares.items() if v > 0}
    if not active:
        raise MixError(f"no source has a positive share: {shares}")
    for s in active:
        if s not in tables or tables[s].kept == 0:
            raise MixError(f"source {s!r} has share {shares[s]} but no documents")
        if tables[s].kept_cost <= 0:
            raise MixError(f"source {s!r} has share {shares[s]} but its documents cost 0")
    total = sum(active.values())
    return {s: v / total for s, v in active.items()}


def default_span(shares: dict[str, float], tables: dict[str, DocTable], docs: int) -> float:
    """Virtual time holding about `docs` documents of the mixture."""
    per_cost = sum(share * tables[s].kept / tables[s].kept_cost for s, share in shares.items())
    return docs / per_cost


class StreamSchedule:
    """The exact schedule of `tables` at `shares`, as a stream of chunks (module docstring).

    Stops at the first document that brings the total cost to `budget`; with `budget=None`,
    just before the first document of any source's second epoch. Sources with share 0 are
    skipped. MixError when a source would need more than `max_epochs` epochs. After the
    stream is consumed, `used` and `used_cost` give what each source emitted.
    """

    def __init__(self, shares: dict[str, float], tables: dict[str, DocTable], *,
                 budget: float | None, max_epochs: float, seed: int, span: float) -> None:
        self.shares = normalise(shares, tables)
        if budget is not None and budget <= 0:
            raise ValueError(f"budget must be positive or None, got {budget}")
        if not span > 0:
            raise ValueError(f"span must be positive, got {span}")
        self.budget, self.max_epochs, self.span = budget, max_epochs, span
        self.names = list(self.shares)
        self.streams = [SourceStream(s, tables[s], self.shares[s], seed) for s in self.names]
        for s in self.names if budget is not None else ():
            needed = self.shares[s] * budget / tables[s].kept_cost
            if needed > max_epochs:
                raise MixError(f"source {s!r} needs {needed:.2f} epochs for its share "
                               f"{self.shares[s]:.4f} of the budget {budget:g}, above "
                               f"max_epochs={max_epochs:g}; lower its weight or the budget, "
                               "or raise max_epochs")

    @property
    def epochs(self) -> dict[str, float]:
        return {st.name: st.used / st.table.kept for st in self.streams}

    def _limit(self) -> tuple[float, float]:
        """(a virtual time just past where the schedule should stop, the step to raise it by
        if it goes further), so no source generates much beyond the stop: at most a span,
        whatever the stage's size."""
        if self.budget is not None:
            base = self.budget
        else:
            base = min(st.table.kept_cost / st.share for st in self.streams)
        step = min(0.01 * base, self.span) + 1
        return base + step, step

    def __iter__(self) -> Iterator[ScheduledChunk]:
        done, total = False, 0.0
        limit, step = self._limit()
        for j in range(1, 2**62):
            horizon = min(j * self.span, limit)
            if horizon == limit:
                limit += step
            parts = [st.take_before(horizon) for st in self.streams]
            source = np.concatenate([np.full(len(p["tag"]), k) for k, p in enumerate(parts)])
            cols = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
            # lexsort is stable, so documents of one source with equal tags (cost 0) keep
            # their stream order: (tag, source, position) without a position column
            order = np.lexsort((source, cols["tag"]))
            source, cols = source[order], {k: v[order] for k, v in cols.items()}
            stop, done = self._stop(source, cols, total, horizon)
            source, cols = source[:stop], {k: v[:stop] for k, v in cols.items()}
            total += float(cols["cost"].sum())
            self._count(source, cols["cost"])
            if len(source):
                yield ScheduledChunk(source, {k: v for k, v in cols.items()
                                              if k != "tag"})
            if done:
                return

    def _stop(self, source, cols, total: float, horizon: float) -> tuple[int, bool]:
        if self.budget is not None:
            reached = total + np.cumsum(cols["cost"]) >= self.budget
            first = int(np.argmax(reached)) if reached.any() else -1
            return (first + 1, True) if first >= 0 else (len(source), False)
        repeats = [(st.repeat_tag, k) for k, st in enumerate(self.streams)
                   if st.repeat_tag is not None]
        if not repeats or min(repeats)[0] >= horizon:
            return len(source), False
        tag, k = min(repeats)
        before = (cols["tag"] < tag) | ((cols["tag"] == tag) & (source < k))
        return int(np.count_nonzero(before)), True

    def _count(self, source: np.ndarray, cost: np.ndarray) -> None:
        for k, st in enumerate(self.streams):
            mine = source == k
            st.used += int(np.count_nonzero(mine))
            st.used_cost += float(cost[mine].sum())
            if st.used > self.max_epochs * st.table.kept:
                raise MixError(f"source {st.name!r} needs more than max_epochs="
                               f"{self.max_epochs:g} epochs; lower its weight or the budget, "
                               "or raise max_epochs")


def _tables(costs: dict[str, Sequence[int]], shares: dict[str, float]) -> dict[str, ArrayTable]:
    tables = {}
    for s in shares:
        if s in costs and len(costs[s]):
            array = np.asarray(costs[s], np.int64)
            if (array < 0).any():
                raise ValueError(f"source {s!r} has negative document costs")
            tables[s] = ArrayTable(array)
    return tables


def schedule(shares: dict[str, float], costs: dict[str, Sequence[int]], *,
             budget: float | None, max_epochs: float, seed: int) -> MixPlan:
    """The whole exact schedule in memory (see `StreamSchedule`); `costs[s][i]` is the cost
    of document i of source s in the stage's weight_by unit."""
    tables = _tables(costs, shares)
    active = normalise(shares, tables)
    stream = StreamSchedule(shares, tables, budget=budget, max_epochs=max_epochs, seed=seed,
                            span=default_span(active, tables, 1 << 16))
    chunks = list(stream)
    return _plan(stream.names, chunks, stream.epochs)


def _plan(names: list[str], chunks: list[ScheduledChunk], epochs: dict[str, float]) -> MixPlan:
    source = np.concatenate([c.source for c in chunks]) if chunks else np.zeros(0, np.int64)
    cols = {k: np.concatenate([c.columns[k] for c in chunks]) if chunks else np.zeros(0, np.int64)
            for k in ("index", "epoch", "cost")}
    picks = [Pick(names[s], i, e) for s, i, e in
             zip(source.tolist(), cols["index"].tolist(), cols["epoch"].tolist())]
    cost = {s: int(cols["cost"][source == k].sum()) for k, s in enumerate(names)}
    return MixPlan(picks=picks, epochs=epochs, cost=cost)


def random_schedule(shares: dict[str, float], costs: dict[str, Sequence[int]], *,
                    budget: float | None, max_epochs: float, seed: int,
                    block: int = 4096) -> MixPlan:
    """Baseline: each document drawn from a source chosen at random (the benchmark's foil).

    A source is drawn with probability proportional to share / mean cost, so its expected
    cost share equals its target; within a source, epochs follow the same permutations as
    `schedule`. Stops like `schedule`. Draws `block` choices at a time from
    `default_rng([seed, 1])`.
    """
    tables = _tables(costs, shares)
    names = list(normalise(shares, tables))
    epochs = 1 if budget is None else int(max_epochs) + 1
    index = [np.concatenate([permutation(s, e, tables[s].size, seed) for e in range(epochs)])
             for s in names]
    cost = [tables[s].columns["cost"][ix] for s, ix in zip(names, index)]
    weights = np.array([shares[s] / (tables[s].kept_cost / tables[s].kept) for s in names])
    src, pos = _random_draws(weights, cost, budget, seed, block)
    if budget is not None and src[-1] < 0:
        raise MixError(f"source {names[-src[-1] - 1]!r} needs more than max_epochs="
                       f"{max_epochs:g} epochs")
    cols = {k: np.empty(len(src), np.int64) for k in ("index", "epoch", "cost")}
    for k, s in enumerate(names):
        mine = src == k
        cols["index"][mine] = index[k][pos[mine]]
        cols["epoch"][mine] = pos[mine] // tables[s].size
        cols["cost"][mine] = cost[k][pos[mine]]
    epochs_used = {s: int(np.count_nonzero(src == k)) / tables[s].kept
                   for k, s in enumerate(names)}
    for s, used in epochs_used.items():
        if used > max_epochs:
            raise MixError(f"source {s!r} needs {used:.2f} epochs, above max_epochs="
                           f"{max_epochs:g}; lower its weight or the budget, or raise max_epochs")
    return _plan(names, [ScheduledChunk(src, cols)], epochs_used)


def _random_draws(weights, cost, budget, seed, block) -> tuple[np.ndarray, np.ndarray]:
    """(source, position in its stream) of each drawn document, until the budget is reached
    or a source runs out (then the last source entry is -(source + 1))."""
    rng = np.random.default_rng([seed, 1])
    n = len(cost)
    limit = np.array([len(c) for c in cost])
    flat = np.concatenate(cost)
    offsets = np.concatenate([[0], np.cumsum(limit)])[:-1]
    taken, spent, srcs, poss = np.zeros(n, np.int64), 0.0, [], []
    while True:
        src = rng.choice(n, size=block, p=weights / weights.sum())
        pos = taken[src] + _occurrence(src, n)
        taken += np.bincount(src, minlength=n)
        over = np.flatnonzero(pos >= limit[src])
        stop = int(over[0]) if len(over) else block
        spent_after = spent + np.cumsum(flat[offsets[src[:stop]] + pos[:stop]])
        reach = np.flatnonzero(spent_after >= (np.inf if budget is None else budget))
        if len(reach):
            stop = int(reach[0]) + 1
        srcs.append(src[:stop])
        poss.append(pos[:stop])
        spent = float(spent_after[stop - 1]) if stop else spent
        if len(reach) or stop < block:
            if not len(reach) and budget is not None:
                srcs.append(np.asarray([-int(src[stop]) - 1]))
                poss.append(np.zeros(1, np.int64))
            return np.concatenate(srcs), np.concatenate(poss)


def _occurrence(src: np.ndarray, n_sources: int) -> np.ndarray:
    """For each entry, how many earlier entries name the same source."""
    out = np.empty(len(src), np.int64)
    for k in range(n_sources):
        mask = src == k
        out[mask] = np.arange(np.count_nonzero(mask))
    return out


def window_deviation(tokens, shares: dict[str, float], window: int = 1000,
                     names: Sequence[str] | None = None) -> float:
    """Largest |realised - target| token share of any source over sliding windows of sequences.

    `tokens` is either a list of dicts (source -> tokens in packed sequence k) or an array
    [sequences, len(names)]. Shares are normalised; a source absent from `shares` has target
    0. With fewer than `window` sequences the whole list is one window. Result in share
    units (0.005 = 0.5 points).
    """
    if isinstance(tokens, np.ndarray):
        names = list(names)
        matrix = tokens.astype(np.float64)
    else:
        names = sorted(set(shares) | {s for seq in tokens for s in seq})
        matrix = np.array([[seq.get(s, 0) for s in names] for seq in tokens],
                          dtype=np.float64).reshape(-1, len(names))
    tracker = WindowDeviation(shares, names, window)
    tracker.add(matrix)
    return tracker.value


class WindowDeviation:
    """`window_deviation` over sequences that arrive in batches (rows [n, len(names)]),
    holding only the last window - 1 rows."""

    def __init__(self, shares: dict[str, float], names: Sequence[str], window: int = 1000):
        total = sum(shares.values())
        self.target = np.array([shares.get(s, 0.0) / total for s in names])
        self.window, self.tail = window, np.zeros((0, len(names)))
        self.worst, self.full = 0.0, False

    def add(self, rows: np.ndarray) -> None:
        rows = np.vstack([self.tail, np.asarray(rows, np.float64)])
        if len(rows) >= self.window:
            csum = np.vstack([np.zeros(rows.shape[1]), np.cumsum(rows, axis=0)])
            per_window = csum[self.window:] - csum[:-self.window]
            self.worst = max(self.worst, self._deviation(per_window))
            self.full = True
        self.tail = rows[max(0, len(rows) - self.window + 1):] if self.window > 1 else rows[:0]

    def _deviation(self, per_window: np.ndarray) -> float:
        realised = per_window / np.maximum(per_window.sum(axis=1, keepdims=True), 1)
        return float(np.abs(realised - self.target).max()) if len(per_window) else 0.0

    @property
    def value(self) -> float:
        if self.full or not len(self.tail):
            return self.worst
        return self._deviation(self.tail.sum(axis=0, keepdims=True))
