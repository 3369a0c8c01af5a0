"""Packing documents into sequences of at most seq_len tokens (pure; lengths in, indices out).

`pack` reads items in order, `window` at a time, and keeps the mixture exact:
1. The batch's large items (over seq_len / 4) go largest first into the open sequence with
   the least room that fits them (respecting the image and view caps), or into a new one:
   best-fit-decreasing.
2. Its small items then fill the gaps, sequences about to close first. Each step adds one
   item or a pair that fills the gap exactly if there is one; else the largest that still
   leaves room for a pair, so that a later step can. Pairs turn the last gaps into exact
   fits, where best fit leaves gaps smaller than any item. Leftovers fill new sequences.
3. A sequence stays open for the batch it was opened in and the next one; then it closes. A
   full one closes at once. This bounds how far an item can move from its input position.
4. Closed sequences are ordered by where their tokens sit in the input, then reordered within
   a short lookahead so that each item group's (each source's) cumulative tokens stay within
   half a sequence of the input stream's at the same point. Every window of sequences then
   keeps the shares the input had, which the exact mixture schedule made smooth.

`pack_first_fit` (streaming greedy) and `pack_one_per_sequence` are the baselines.
"""
from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class PackItem(NamedTuple):
    length: int      # tokens
    images: int = 0  # images in the document
    views: int = 0   # tiles + global views of those images
    group: int = 0   # the item's stream (its source): output order keeps groups' shares


class Bin:
    """One sequence being filled: its members and what room is left."""

    __slots__ = ("batch", "images", "members", "serial", "space", "views")

    def __init__(self, serial: int, batch: int, seq_len: int):
        self.serial, self.batch, self.space = serial, batch, seq_len
        self.images = self.views = 0
        self.members: list[int] = []

    def admits(self, item: PackItem, caps: tuple[float, float]) -> bool:
        return (item.length <= self.space and self.images + item.images <= caps[0]
                and self.views + item.views <= caps[1])

    def add(self, index: int, item: PackItem) -> None:
        self.members.append(index)
        self.space -= item.length
        self.images += item.images
        self.views += item.views


class Pool:
    """A batch's small items, sorted by length, for best single-or-pair gap filling."""

    def __init__(self, items: Sequence[PackItem], indices: list[int]):
        order = sorted(indices, key=lambda i: (items[i].length, i))
        self.index = np.asarray(order, np.int64)
        self.length = np.asarray([items[i].length for i in order], np.int64)
        self.images = np.asarray([items[i].images for i in order], np.int64)
        self.views = np.asarray([items[i].views for i in order], np.int64)
        self.alive = np.ones(len(order), bool)

    def __bool__(self) -> bool:
        return bool(self.alive.any())

    def _best(self, space: int, images: float, views: float) -> tuple[int, list[int]]:
        """Largest total of one item or two that fits, and their positions in the pool."""
        fits = int(np.searchsorted(self.length, space, side="right"))
        mask = self.alive[:fits]
        capped = [(counts, cap) for counts, cap in ((self.images, images), (self.views, views))
                  if cap != float("inf")]
        for counts, cap in capped:
            mask = mask & (counts[:fits] <= cap)
        cand = np.flatnonzero(mask)
        if not len(cand):
            return 0, []
        lengths = self.length[cand]
        partner = np.searchsorted(lengths, space - lengths, side="right") - 1
        ok = partner > np.arange(len(cand))
        partner = np.where(ok, partner, 0)
        both = cand[partner]
        for counts, cap in capped:
            ok &= counts[cand] + counts[both] <= cap
        totals = np.where(ok, lengths + lengths[partner], -1)
        best = int(np.argmax(totals))
        if totals[best] > lengths[-1]:
            return int(totals[best]), [int(cand[best]), int(both[best])]
        return int(lengths[-1]), [int(cand[-1])]

    def take(self, space: int, images: float, views: float) -> list[int]:
        """Item indices to add to a gap of `space` tokens: an exact fill if there is one;
        else the largest that leaves room for a pair, so a later step can still fill exactly;
        else the largest that fits."""
        total, chosen = self._best(space, images, views)
        if total != space:
            alive = self.length[self.alive]
            room = int(alive[:2].sum()) if len(alive) > 2 else space
            if space - room > 0:
                spared, kept = self._best(space - room, images, views)
                if spared:
                    chosen = kept
        self.alive[chosen] = False
        return [int(self.index[c]) for c in chosen]


class OpenBins:
    """Open sequences indexed by remaining space, for best-fit lookups."""

    def __init__(self, items: Sequence[PackItem], seq_len: int, caps: tuple[float, float]):
        self.items, self.seq_len, self.caps = items, seq_len, caps
        self.keys: list[tuple[int, int]] = []   # (space, serial), sorted
        self.bins: dict[int, Bin] = {}
        self.serial = 0

    def new(self, batch: int) -> Bin:
        self.serial += 1
        return Bin(self.serial, batch, self.seq_len)

    def _insert(self, b: Bin) -> list[Bin]:
        if b.space == 0:
            return [b]
        insort(self.keys, (b.space, b.serial))
        self.bins[b.serial] = b
        return []

    def _detach(self, b: Bin) -> None:
        if b.serial in self.bins:
            del self.keys[bisect_left(self.keys, (b.space, b.serial))]
            del self.bins[b.serial]

    def place(self, index: int, batch: int) -> list[Bin]:
        """Best fit: the open bin with the least room that admits the item, else a new one."""
        item = self.items[index]
        target = next((self.bins[serial] for _, serial in
                       self.keys[bisect_left(self.keys, (item.length, -1)):]
                       if self.bins[serial].admits(item, self.caps)), None)
        if target is None:
            target = self.new(batch)
        self._detach(target)
        target.add(index, item)
        return self._insert(target)

    def fill(self, b: Bin, pool: Pool) -> list[Bin]:
        """Fill `b` from the pool; returns it if it became full (closed)."""
        self._detach(b)
        while b.space and pool:
            chosen = pool.take(b.space, self.caps[0] - b.images, self.caps[1] - b.views)
            if not chosen:
                break
            for index in chosen:
                b.add(index, self.items[index])
        return self._insert(b) if b.members else []

    def by_urgency(self) -> list[Bin]:
        """Open bins, those closing soonest first, then tightest first."""
        return sorted(self.bins.values(), key=lambda b: (b.batch, b.space, b.serial))

    def close_born_before(self, batch: int) -> list[Bin]:
        old = [b for b in self.bins.values() if b.batch < batch]
        for b in old:
            self._detach(b)
        return old


class _InputShares:
    """Per-group tokens of the input stream's prefix holding T tokens (straddling item split)."""

    def __init__(self, items: Sequence[PackItem], groups: int):
        lengths = np.asarray([it.length for it in items], np.int64)
        group = np.asarray([it.group for it in items], np.int64)
        ends = np.cumsum(lengths)
        self.ends = [ends[group == g] for g in range(groups)]
        self.lengths = [lengths[group == g] for g in range(groups)]
        self.done = [np.concatenate([[0], np.cumsum(x)]) for x in self.lengths]

    def at(self, totals: np.ndarray) -> np.ndarray:
        """[len(totals), groups] tokens of each group in the input prefix of each total."""
        out = np.empty((len(totals), len(self.ends)))
        for g, (ends, lengths, done) in enumerate(zip(self.ends, self.lengths, self.done)):
            k = np.searchsorted(ends, totals, side="left")   # first item not finished by T
            straddle = np.zeros(len(totals))
            inside = k < len(ends)
            kk = k[inside]
            straddle[inside] = np.clip(totals[inside] - (ends[kk] - lengths[kk]), 0, None)
            out[:, g] = done[k] + straddle
        return out


def _by_centroid(bins: list[Bin], items: Sequence[PackItem]) -> list[list[int]]:
    """Sequences ordered by where their tokens sit in the input, on average."""
    lengths = np.asarray([it.length for it in items], np.float64)
    middle = np.cumsum(lengths) - lengths / 2
    keyed = []
    for b in bins:
        members = np.asarray(sorted(b.members))
        centroid = float((middle[members] * lengths[members]).sum() / lengths[members].sum())
        keyed.append((centroid, int(members[0]), members.tolist()))
    return [members for _, _, members in sorted(keyed)]


def emit_in_input_order(bins: list[Bin], items: Sequence[PackItem], seq_len: int,
                        lookahead: int = 64) -> list[list[int]]:
    """Order sequences so that each group's cumulative tokens track the input stream's.

    Sequences are taken in order of where their tokens sit in the input. Each step looks at
    the next `lookahead` of them and emits the first one after which every group's output
    tokens are within `seq_len / 2` of the input prefix holding as many tokens; if none
    qualifies, the one that comes closest (sum of squares). A sequence that `lookahead`
    later ones have overtaken goes next, which bounds how far any sequence moves.
    """
    groups = max((it.group for it in items), default=0) + 1
    if groups == 1:
        return sorted((sorted(b.members) for b in bins), key=lambda m: m[0])
    if min(it.group for it in items) < 0:
        raise ValueError("PackItem.group must be >= 0")
    sequences = _by_centroid(bins, items)
    tokens = np.zeros((len(sequences), groups))
    for k, members in enumerate(sequences):
        for i in members:
            tokens[k, items[i].group] += items[i].length
    shares = _InputShares(items, groups)
    out, order, pending, nxt = np.zeros(groups), [], [], 0
    while nxt < len(sequences) or pending:
        while len(pending) < lookahead and nxt < len(sequences):
            pending.append(nxt)
            nxt += 1
        after = out + tokens[pending]
        error = after - shares.at(after.sum(axis=1))
        close = np.flatnonzero(np.abs(error).max(axis=1) <= seq_len / 2)
        if pending[0] + lookahead <= len(order):
            pick = 0
        elif len(close):
            pick = int(close[0])
        else:
            pick = int(np.argmin((error ** 2).sum(axis=1)))
        out = after[pick]
        order.append(pending.pop(pick))
    return [sequences[k] for k in order]


def _caps(max_images: int | None, max_views: int | None) -> tuple[float, float]:
    return (float("inf") if max_images is None else max_images,
            float("inf") if max_views is None else max_views)


def _check(items: Sequence[PackItem], seq_len: int, max_images: float, max_views: float) -> None:
    for i, item in enumerate(items):
        if not 0 < item.length <= seq_len:
            raise ValueError(f"item {i} has length {item.length}; expected 1..seq_len={seq_len}")
        if item.images > max_images or item.views > max_views:
            raise ValueError(f"item {i} has {item.images} images / {item.views} views, above "
                             f"the caps {max_images} / {max_views}")


def pack(items: Sequence[PackItem], seq_len: int, *, max_images: int | None = None,
         max_views: int | None = None, window: int = 512) -> list[list[int]]:
    """Bounded-window packing (see module docstring).

    Returns sequences as lists of item indices (ascending within a sequence). Every item is in
    exactly one sequence; no sequence exceeds seq_len tokens, `max_images` or `max_views`.
    An item that alone exceeds a limit is a ValueError.
    """
    caps = _caps(max_images, max_views)
    _check(items, seq_len, *caps)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    open_bins, closed = OpenBins(items, seq_len, caps), []
    for batch, start in enumerate(range(0, len(items), window)):
        indices = range(start, min(start + window, len(items)))
        small = [i for i in indices if items[i].length <= seq_len // 4]
        for i in sorted(set(indices) - set(small), key=lambda i: (-items[i].length, i)):
            closed += open_bins.place(i, batch)
        pool = Pool(items, small)
        for b in open_bins.by_urgency():
            closed += open_bins.fill(b, pool)
        while pool:
            closed += open_bins.fill(open_bins.new(batch), pool)
        closed += open_bins.close_born_before(batch)
    closed += open_bins.close_born_before(len(items) + 1)
    return emit_in_input_order(closed, items, seq_len)


def pack_first_fit(items: Sequence[PackItem], seq_len: int, *, max_images: int | None = None,
                   max_views: int | None = None, open_bins: int = 1) -> list[list[int]]:
    """Streaming greedy baseline: each item, in input order, goes into the oldest open
    sequence that has room; otherwise a new one opens, and beyond `open_bins` open sequences
    the oldest is closed. `open_bins=1` is the next-fit packing simple loaders do."""
    caps = _caps(max_images, max_views)
    _check(items, seq_len, *caps)
    active: list[Bin] = []
    closed: list[Bin] = []
    for i, item in enumerate(items):
        target = next((b for b in active if b.admits(item, caps)), None)
        if target is None:
            target = Bin(i, 0, seq_len)
            active.append(target)
            if len(active) > open_bins:
                closed.append(active.pop(0))
        target.add(i, item)
    return sorted((sorted(b.members) for b in closed + active), key=lambda m: m[0])


def pack_one_per_sequence(items: Sequence[PackItem], seq_len: int, *,
                          max_images: int | None = None, max_views: int | None = None
                          ) -> list[list[int]]:
    """Baseline: every document padded to its own sequence."""
    _check(items, seq_len, *_caps(max_images, max_views))
    return [[i] for i in range(len(items))]


def efficiency(items: Sequence[PackItem], sequences: list[list[int]], seq_len: int) -> float:
    """Real tokens / (sequences * seq_len): the share of a padded batch that is not padding."""
    if not sequences:
        return 0.0
    real = sum(items[i].length for seq in sequences for i in seq)
    return real / (len(sequences) * seq_len)
