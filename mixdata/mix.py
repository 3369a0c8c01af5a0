"""Exact, deterministic mixing of documents across sources.

`schedule` is a smooth deficit round-robin in its virtual-time form (weighted fair queueing):
each document of source s gets the tag `(cost emitted by s before it + half its cost) / share_s`,
and the stream emits documents in tag order. At every step this emits the next document of
the source whose emitted cost, counted up to the middle of its next document, lags its target
share the most; so every prefix of the stream holds each source within about one document of
its exact share. Because tags depend only on the costs, the whole schedule is one stable sort.

Each epoch of a source visits its documents in the permutation drawn by
`numpy.random.default_rng([seed, crc32(source), epoch])`; no global random state is used.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .errors import MixdataError


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


@dataclass
class _Stream:
    """Documents of one source over the epochs generated so far, with their tags."""

    index: np.ndarray
    epoch: np.ndarray
    cost: np.ndarray
    tag: np.ndarray


def permutation(source: str, epoch: int, n: int, seed: int) -> np.ndarray:
    """The order in which epoch `epoch` of `source` visits its `n` documents."""
    rng = np.random.default_rng([seed, zlib.crc32(source.encode()), epoch])
    return rng.permutation(n)


def _normalise(shares: dict[str, float], costs: dict[str, Sequence[int]]
               ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    if any(v < 0 or not math.isfinite(v) for v in shares.values()):
        raise ValueError(f"shares must be finite and >= 0, got {shares}")
    active = {s: float(v) for s, v in shares.items() if v > 0}
    if not active:
        raise MixError(f"no source has a positive share: {shares}")
    total = sum(active.values())
    arrays = {}
    for s in active:
        if s not in costs or len(costs[s]) == 0:
            raise MixError(f"source {s!r} has share {shares[s]} but no documents")
        arrays[s] = np.asarray(costs[s], dtype=np.int64)
        if (arrays[s] < 0).any():
            raise ValueError(f"source {s!r} has negative document costs")
        if arrays[s].sum() == 0:
            raise MixError(f"source {s!r} has share {shares[s]} but its documents cost 0")
    return {s: v / total for s, v in active.items()}, arrays


def _stream(source: str, costs: np.ndarray, share: float, epochs: int, seed: int,
            extra: int = 0) -> _Stream:
    """`epochs` full epochs of `source`, then the first `extra` documents of the next one."""
    n = len(costs)
    perms = [permutation(source, e, n, seed) for e in range(epochs)]
    if extra:
        perms.append(permutation(source, epochs, n, seed)[:extra])
    index = np.concatenate(perms)
    epoch = np.repeat(np.arange(len(perms)), [len(p) for p in perms])
    cost = costs[index]
    tag = (np.cumsum(cost) - cost / 2) / share
    return _Stream(index=index, epoch=epoch, cost=cost, tag=tag)


def _merge(streams: dict[str, _Stream]) -> tuple[np.ndarray, np.ndarray]:
    """Global order of all generated documents: by tag, ties by source order, then position."""
    tags = np.concatenate([st.tag for st in streams.values()])
    src = np.concatenate([np.full(len(st.tag), k) for k, st in enumerate(streams.values())])
    pos = np.concatenate([np.arange(len(st.tag)) for st in streams.values()])
    order = np.lexsort((pos, src, tags))
    return src[order], pos[order]


def _plan(streams: dict[str, _Stream], src: np.ndarray, pos: np.ndarray,
          counts: dict[str, int]) -> MixPlan:
    names = list(streams)
    picks = [Pick(names[k], int(streams[names[k]].index[p]), int(streams[names[k]].epoch[p]))
             for k, p in zip(src.tolist(), pos.tolist())]
    used = {s: int(np.count_nonzero(src == k)) for k, s in enumerate(names)}
    return MixPlan(picks=picks,
                   epochs={s: used[s] / counts[s] for s in names},
                   cost={s: int(streams[s].cost[:used[s]].sum()) for s in names})


def _one_pass(shares, arrays, seed) -> tuple[dict[str, _Stream], np.ndarray, np.ndarray]:
    """budget=None: everything scheduled before the first document of any second epoch."""
    streams = {s: _stream(s, arrays[s], shares[s], 1, seed, extra=1) for s in shares}
    src, pos = _merge(streams)
    n_first = np.array([len(arrays[s]) for s in streams])
    second = np.flatnonzero(pos >= n_first[src])
    stop = int(second[0]) if len(second) else len(src)
    return streams, src[:stop], pos[:stop]


def _budgeted(shares, arrays, budget: float, max_epochs: float, seed: int):
    for s in shares:
        needed = shares[s] * budget / arrays[s].sum()
        if needed > max_epochs:
            raise MixError(f"source {s!r} needs {needed:.2f} epochs for its share "
                           f"{shares[s]:.4f} of the budget {budget:g}, above max_epochs="
                           f"{max_epochs:g}; lower its weight or the budget, or raise max_epochs")
    # Virtual time at the cut is at most the budget plus a few documents; generate a bit past
    # it and widen if some source still runs out before the cut.
    horizon = budget + 2 * sum(int(a.max()) for a in arrays.values())
    while True:
        streams = {}
        for s in shares:
            total = int(arrays[s].sum())
            want = shares[s] * horizon + int(arrays[s].max())
            streams[s] = _stream(s, arrays[s], shares[s], int(want // total) + 1, seed)
        src, pos = _merge(streams)
        done = np.cumsum(np.concatenate([st.cost for st in streams.values()])[
            _flat_index(streams, src, pos)])
        stop = int(np.searchsorted(done, budget, side="left")) + 1
        if stop <= len(done) and _covered(streams, src[:stop], pos[:stop]):
            return streams, src[:stop], pos[:stop]
        horizon *= 2


def _flat_index(streams: dict[str, _Stream], src: np.ndarray, pos: np.ndarray) -> np.ndarray:
    offsets = np.cumsum([0] + [len(st.tag) for st in streams.values()])[:-1]
    return offsets[src] + pos


def _covered(streams: dict[str, _Stream], src: np.ndarray, pos: np.ndarray) -> bool:
    """True when no source's generated documents ran out before the cut."""
    if not len(src):
        return True
    last_tag = streams[list(streams)[src[-1]]].tag[pos[-1]]
    return all(st.tag[-1] > last_tag for st in streams.values())


def schedule(shares: dict[str, float], costs: dict[str, Sequence[int]], *,
             budget: float | None, max_epochs: float, seed: int) -> MixPlan:
    """Exact weighted schedule of documents across sources (see module docstring).

    `costs[s][i]` is the cost of document i of source s in the stage's weight_by unit.
    Stops at the first document that brings the total cost to `budget`; with `budget=None`,
    at the largest total where no source has started a second epoch. Sources with share 0
    are skipped. Raises MixError when a source would need more than `max_epochs` epochs.
    """
    shares, arrays = _normalise(shares, costs)
    if budget is None:
        streams, src, pos = _one_pass(shares, arrays, seed)
    elif budget <= 0:
        raise ValueError(f"budget must be positive or None, got {budget}")
    else:
        streams, src, pos = _budgeted(shares, arrays, float(budget), max_epochs, seed)
    plan = _plan(streams, src, pos, {s: len(a) for s, a in arrays.items()})
    _check_epochs(plan, max_epochs)
    return plan


def random_schedule(shares: dict[str, float], costs: dict[str, Sequence[int]], *,
                    budget: float | None, max_epochs: float, seed: int,
                    block: int = 4096) -> MixPlan:
    """Baseline: each document drawn from a source chosen at random (the benchmark's foil).

    A source is drawn with probability proportional to share / mean cost, so its expected
    cost share equals its target; within a source, epochs follow the same permutations as
    `schedule`. Stops like `schedule`. Draws `block` choices at a time from
    `default_rng([seed, 1])`.
    """
    shares, arrays = _normalise(shares, costs)
    names = list(shares)
    weights = np.array([shares[s] / arrays[s].mean() for s in names])
    rng = np.random.default_rng([seed, 1])
    streams = {s: _stream(s, arrays[s], shares[s], int(max_epochs) + 1, seed) for s in names}
    limit = np.array([len(arrays[s]) if budget is None else len(streams[s].tag) for s in names])
    flat_cost = np.concatenate([streams[s].cost for s in names])
    offsets = np.cumsum([0] + [len(streams[s].cost) for s in names])[:-1]
    taken, spent, srcs, poss = np.zeros(len(names), np.int64), 0, [], []
    while True:
        src = rng.choice(len(names), size=block, p=weights / weights.sum())
        pos = taken[src] + _occurrence(src, len(names))
        taken += np.bincount(src, minlength=len(names))
        over = np.flatnonzero(pos >= limit[src])
        stop = int(over[0]) if len(over) else block
        spent_after = spent + np.cumsum(flat_cost[offsets[src[:stop]] + pos[:stop]])
        reach = np.flatnonzero(spent_after >= (np.inf if budget is None else budget))
        if len(reach):
            stop = int(reach[0]) + 1
        elif stop < block and budget is not None:
            raise MixError(f"source {names[src[stop]]!r} needs more than max_epochs="
                           f"{max_epochs:g} epochs")
        srcs.append(src[:stop])
        poss.append(pos[:stop])
        spent = int(spent_after[stop - 1]) if stop else spent
        if len(reach) or stop < block:
            break
    plan = _plan(streams, np.concatenate(srcs), np.concatenate(poss),
                 {s: len(a) for s, a in arrays.items()})
    _check_epochs(plan, max_epochs)
    return plan


def _occurrence(src: np.ndarray, n_sources: int) -> np.ndarray:
    """For each entry, how many earlier entries name the same source."""
    out = np.empty(len(src), np.int64)
    for k in range(n_sources):
        mask = src == k
        out[mask] = np.arange(np.count_nonzero(mask))
    return out


def _check_epochs(plan: MixPlan, max_epochs: float) -> None:
    for s, used in plan.epochs.items():
        if used > max_epochs:
            raise MixError(f"source {s!r} needs {used:.2f} epochs, above max_epochs="
                           f"{max_epochs:g}; lower its weight or the budget, or raise max_epochs")


def window_deviation(sources_per_seq_tokens: list[dict[str, int]], shares: dict[str, float],
                     window: int = 1000) -> float:
    """Largest |realised - target| token share of any source over sliding windows of sequences.

    `sources_per_seq_tokens[k]` maps source -> tokens it has in packed sequence k. Shares are
    normalised; a source absent from `shares` has target 0. With fewer than `window`
    sequences the whole list is one window. Result in share units (0.005 = 0.5 points).
    """
    total = sum(shares.values())
    names = sorted(set(shares) | {s for seq in sources_per_seq_tokens for s in seq})
    if not sources_per_seq_tokens:
        return 0.0
    tokens = np.array([[seq.get(s, 0) for s in names] for seq in sources_per_seq_tokens],
                      dtype=np.float64)
    window = min(window, len(tokens))
    csum = np.vstack([np.zeros(len(names)), np.cumsum(tokens, axis=0)])
    per_window = csum[window:] - csum[:-window]
    realised = per_window / np.maximum(per_window.sum(axis=1, keepdims=True), 1)
    target = np.array([shares.get(s, 0.0) / total for s in names])
    return float(np.abs(realised - target).max())
