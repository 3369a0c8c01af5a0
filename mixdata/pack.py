"""Packing documents into sequences of at most seq_len tokens (pure; lengths in, indices out).

`pack_arrays` packs one chunk of documents (the plan cuts a stage into chunks; see
`mixdata.building.plan`) in two steps:
1. **Exact completion.** A document longer than seq_len / 2 can share with nothing as long,
   so each opens its own sequence. Every other document waits in a pool indexed by length,
   whose lengths are bits of a Python integer, so "the largest length <= y" and "two lengths
   that sum to g" are a few big-integer operations. Sequences are completed one at a time,
   the fullest first, then new ones: each step adds one or two documents that fill the room
   exactly when the pool has them; otherwise the largest that still leaves room for two of
   the shortest, so a later step can fill exactly; else the largest that fits. A sequence is
   left only when nothing in the pool fits it, so no two sequences could be merged. Exact
   fills are what bring packing near 100% (BENCHMARKS.md, "Scale"). With image or view caps,
   documents go instead longest first into the sequence with the least room that admits
   them within the caps (best-fit decreasing over a sorted list of integer keys
   `room << 32 | sequence`).
2. **Balanced emission.** Best-fit scatters the input order, so the sequences are then
   emitted in an order that keeps each group (each source) on its share: each sequence joins
   the bucket of the group it holds most of (relative to that group's share), buckets are
   ordered by where their documents sit in the input, and each step takes the next sequence
   of the group whose tokens lag their share the most. Every prefix of the chunk's output
   then holds each group within about one sequence of its share of the chunk, so windows of
   sequences keep the shares the exact mixture schedule gave the chunk.

`pack` is the same for a list of `PackItem`s; `pack_first_fit` (streaming greedy) and
`pack_one_per_sequence` are the baselines.
"""
from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence
from itertools import pairwise
from typing import NamedTuple

import numpy as np

_SHIFT = 32   # key = room << _SHIFT | sequence id
_SCAN = 32    # open sequences tried past the best fit when the caps refuse it


class PackItem(NamedTuple):
    length: int      # tokens
    images: int = 0  # images in the document
    views: int = 0   # tiles + global views of those images
    group: int = 0   # the item's stream (its source): output order keeps groups' shares


class Packed(NamedTuple):
    """Sequences as a flat permutation: sequence k holds `order[offsets[k]:offsets[k+1]]`
    (item indices, ascending within a sequence)."""

    order: np.ndarray    # int64 [n_items]
    offsets: np.ndarray  # int64 [n_sequences + 1]

    def sequences(self) -> list[list[int]]:
        bounds = self.offsets.tolist()
        items = self.order.tolist()
        return [items[a:b] for a, b in pairwise(bounds)]


def _caps(max_images: int | None, max_views: int | None) -> tuple[float, float]:
    return (float("inf") if max_images is None else max_images,
            float("inf") if max_views is None else max_views)


def _check_arrays(length: np.ndarray, images: np.ndarray, views: np.ndarray, seq_len: int,
                  caps: tuple[float, float]) -> None:
    bad = np.flatnonzero((length < 1) | (length > seq_len))
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"item {i} has length {int(length[i])}; expected 1..seq_len={seq_len}")
    over = np.flatnonzero((images > caps[0]) | (views > caps[1]))
    if len(over):
        i = int(over[0])
        raise ValueError(f"item {i} has {int(images[i])} images / {int(views[i])} views, above "
                         f"the caps {caps[0]} / {caps[1]}")


def assign(length: np.ndarray, seq_len: int, images: np.ndarray, views: np.ndarray,
           caps: tuple[float, float]) -> tuple[np.ndarray, int]:
    """(sequence id of each item, number of sequences); see step 1 of the module docstring."""
    order = np.argsort(-length, kind="stable")
    sorted_len = length[order]
    big = int(np.count_nonzero(sorted_len > seq_len // 2))
    room = seq_len - sorted_len[:big]
    bins = np.empty(len(length), np.int64)
    bins[order[:big]] = np.arange(big)
    rest = order[big:]
    if caps == (float("inf"), float("inf")):
        rooms = sorted(zip(room[room > 0].tolist(), np.flatnonzero(room > 0).tolist()))
        bins[rest] = _complete(rooms, sorted_len[big:].tolist(), big, seq_len)
    else:
        open_ = room > 0
        keys = sorted(((room[open_] << _SHIFT) | np.flatnonzero(open_)).tolist())
        bins[rest] = _fill_capped(sorted_len[big:].tolist(), images[rest].tolist(),
                                  views[rest].tolist(), images[order[:big]].tolist(),
                                  views[order[:big]].tolist(), keys, seq_len, caps)
    return bins, (int(bins.max()) + 1 if len(bins) else 0)


class _Pool:
    """Short items by length, with the lengths present as bits of Python ints (`present`,
    and `mirror` with bit seq_len - x), so the largest length <= y, and whether two
    lengths sum to g, are a few big-integer operations (no per-item search)."""

    def __init__(self, lengths: list[int], seq_len: int) -> None:
        self.seq_len, self.left = seq_len, len(lengths)
        self.slots: list[list[int]] = [[] for _ in range(seq_len + 1)]
        for position in reversed(range(len(lengths))):   # pop() gives the first index
            self.slots[lengths[position]].append(position)
        self.present = self.mirror = 0
        for x, slot in enumerate(self.slots):
            if slot:
                self.present |= 1 << x
                self.mirror |= 1 << (seq_len - x)

    def take(self, x: int) -> int:
        slot = self.slots[x]
        position = slot.pop()
        self.left -= 1
        if not slot:
            self.present ^= 1 << x
            self.mirror ^= 1 << (self.seq_len - x)
        return position

    def fill(self, room: int) -> list[int]:
        """Positions of items to add to a sequence with `room` tokens left: one or two that
        fill it exactly when there are; otherwise the largest that still leaves room for two
        of the shortest, so a later step can; else the largest that fits."""
        taken = []
        while room and self.left:
            largest = self.present.bit_length() - 1
            if room <= largest and self.slots[room]:
                taken.append(self.take(room))
                return taken
            if room <= 2 * largest:
                pairs = self.present & (self.mirror >> (self.seq_len - room))
                pairs &= (2 << (room // 2)) - 1   # x <= room - x
                while pairs:
                    x = pairs.bit_length() - 1
                    if 2 * x != room or len(self.slots[x]) >= 2:
                        taken += [self.take(x), self.take(room - x)]
                        return taken
                    pairs ^= 1 << x
            shortest = (self.present & -self.present).bit_length() - 1
            spare = room - 2 * shortest
            fits = self.present & ((2 << spare) - 1) if spare >= shortest else 0
            fits = fits or self.present & ((2 << room) - 1)
            if not fits:
                return taken
            x = fits.bit_length() - 1
            taken.append(self.take(x))
            room -= x
        return taken


def _complete(rooms: list[tuple[int, int]], lengths: list[int], opened: int,
              seq_len: int) -> list[int]:
    """Sequence ids of short items (`lengths`, longest first): they fill the open sequences'
    `rooms` [(room, id)] in order, then new sequences from `opened` on."""
    pool = _Pool(lengths, seq_len)
    out = [0] * len(lengths)
    for room, b in rooms:
        if not pool.left:
            break
        for position in pool.fill(room):
            out[position] = b
    while pool.left:
        for position in pool.fill(seq_len):
            out[position] = opened
        opened += 1
    return out


def _fill_capped(lengths, images, views, big_images, big_views, keys, seq_len, caps):
    """Best fit within the image and view caps. Sequences that can take no more images or
    views move to a second list that only image-free items search, so they never crowd the
    lookups of items with images; past the best fit, at most `_SCAN` sequences whose
    remaining caps are too small are skipped before a new sequence opens."""
    mask = (1 << _SHIFT) - 1
    images_left = [caps[0] - i for i in big_images]
    views_left = [caps[1] - v for v in big_views]
    closed = [key for key in keys if not (images_left[key & mask] and views_left[key & mask])]
    keys = [key for key in keys if images_left[key & mask] and views_left[key & mask]]
    out = []
    for x, im, vw in zip(lengths, images, views):
        pool, k = keys, bisect_left(keys, x << _SHIFT)
        if im or vw:
            stop = min(len(keys), k + _SCAN)
            while k < stop and (images_left[keys[k] & mask] < im
                                or views_left[keys[k] & mask] < vw):
                k += 1
            k = len(keys) if k == stop else k
        else:
            j = bisect_left(closed, x << _SHIFT)
            if j < len(closed) and (k == len(keys) or closed[j] < keys[k]):
                pool, k = closed, j
        if k < len(pool):
            key = pool.pop(k)
            b, room = key & mask, (key >> _SHIFT) - x
        else:
            b, room = len(images_left), seq_len - x
            images_left.append(caps[0])
            views_left.append(caps[1])
        images_left[b] -= im
        views_left[b] -= vw
        out.append(b)
        if room:
            insort(keys if images_left[b] and views_left[b] else closed, (room << _SHIFT) | b)
    return out


def balanced_order(tokens: np.ndarray, position: np.ndarray, seq_len: int) -> np.ndarray:
    """Emission order of sequences (step 2 of the module docstring).

    `tokens[k, g]`: tokens of group g in sequence k; `position[k]`: where sequence k's
    documents sit in the input (their mean index). Returns a permutation of the sequences.
    """
    n, groups = tokens.shape
    total = tokens.sum()
    share = tokens.sum(axis=0) / max(total, 1)
    present = share > 0
    relative = np.where(present, tokens / np.where(present, share, 1), -1.0)
    dominant = np.argmax(relative, axis=1)
    ranked = np.lexsort((np.arange(n), position, dominant))
    counts = np.bincount(dominant, minlength=groups)
    starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
    return np.asarray(_deficit_walk(ranked.tolist(), starts, tokens.tolist(),
                                    share.tolist(), seq_len), np.int64)


def _deficit_walk(ranked: list[int], starts: list[int], rows: list[list[float]],
                  share: list[float], seq_len: int) -> list[int]:
    groups = len(share)
    heads, ends = starts[:-1], starts[1:]
    emitted, total, out = [0.0] * groups, 0.0, []
    weight = [1 / s if s > 0 else 0.0 for s in share]
    for _ in range(len(ranked)):
        best, pick = -float("inf"), -1
        ahead = total + seq_len
        for g in range(groups):
            if heads[g] < ends[g]:
                lag = (share[g] * ahead - emitted[g]) * weight[g]
                if lag > best:
                    best, pick = lag, g
        k = ranked[heads[pick]]
        heads[pick] += 1
        out.append(k)
        row = rows[k]
        for g in range(groups):
            emitted[g] += row[g]
        total += sum(row)
    return out


def pack_arrays(length, seq_len: int, *, images=None, views=None, group=None,
                max_images: int | None = None, max_views: int | None = None) -> Packed:
    """Pack items given as arrays (see module docstring); `group` defaults to one group.

    Every item is in exactly one sequence; no sequence exceeds seq_len tokens, `max_images`
    or `max_views`. An item that alone exceeds a limit is a ValueError. Deterministic: the
    result depends only on the arrays and the limits.
    """
    length = np.asarray(length, np.int64)
    n = len(length)
    images = np.zeros(n, np.int64) if images is None else np.asarray(images, np.int64)
    views = np.zeros(n, np.int64) if views is None else np.asarray(views, np.int64)
    group = np.zeros(n, np.int64) if group is None else np.asarray(group, np.int64)
    if n and group.min() < 0:
        raise ValueError("group must be >= 0")
    caps = _caps(max_images, max_views)
    _check_arrays(length, images, views, seq_len, caps)
    if not n:
        return Packed(np.zeros(0, np.int64), np.zeros(1, np.int64))
    bins, count = assign(length, seq_len, images, views, caps)
    groups = int(group.max()) + 1
    tokens = np.bincount(bins * groups + group, weights=length,
                         minlength=count * groups).reshape(count, groups)
    position = np.bincount(bins, weights=np.arange(n), minlength=count) / np.bincount(bins)
    emit = balanced_order(tokens, position, seq_len)
    rank = np.empty(count, np.int64)
    rank[emit] = np.arange(count)
    order = np.lexsort((np.arange(n), rank[bins]))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(bins, minlength=count)[emit])])
    return Packed(order.astype(np.int64), offsets.astype(np.int64))


def _columns(items: Sequence[PackItem]) -> dict[str, np.ndarray]:
    array = np.asarray([tuple(it) for it in items], np.int64).reshape(-1, 4)
    return {"length": array[:, 0], "images": array[:, 1], "views": array[:, 2],
            "group": array[:, 3]}


def pack(items: Sequence[PackItem], seq_len: int, *, max_images: int | None = None,
         max_views: int | None = None) -> list[list[int]]:
    """`pack_arrays` over a list of PackItems; sequences as lists of item indices."""
    cols = _columns(items)
    return pack_arrays(cols["length"], seq_len, images=cols["images"], views=cols["views"],
                       group=cols["group"], max_images=max_images,
                       max_views=max_views).sequences()


class _Bin:
    __slots__ = ("images", "members", "space", "views")

    def __init__(self, seq_len: int):
        self.space, self.images, self.views, self.members = seq_len, 0, 0, []


def _check(items: Sequence[PackItem], seq_len: int, caps: tuple[float, float]) -> None:
    cols = _columns(items)
    _check_arrays(cols["length"], cols["images"], cols["views"], seq_len, caps)


def pack_first_fit(items: Sequence[PackItem], seq_len: int, *, max_images: int | None = None,
                   max_views: int | None = None, open_bins: int = 1) -> list[list[int]]:
    """Streaming greedy baseline: each item, in input order, goes into the oldest open
    sequence that has room; otherwise a new one opens, and beyond `open_bins` open sequences
    the oldest is closed. `open_bins=1` is the next-fit packing simple loaders do."""
    caps = _caps(max_images, max_views)
    _check(items, seq_len, caps)
    active: list[_Bin] = []
    closed: list[_Bin] = []
    for i, item in enumerate(items):
        target = next((b for b in active if item.length <= b.space
                       and b.images + item.images <= caps[0]
                       and b.views + item.views <= caps[1]), None)
        if target is None:
            target = _Bin(seq_len)
            active.append(target)
            if len(active) > open_bins:
                closed.append(active.pop(0))
        target.members.append(i)
        target.space -= item.length
        target.images += item.images
        target.views += item.views
    return sorted((b.members for b in closed + active), key=lambda m: m[0])


def pack_one_per_sequence(items: Sequence[PackItem], seq_len: int, *,
                          max_images: int | None = None, max_views: int | None = None
                          ) -> list[list[int]]:
    """Baseline: every document padded to its own sequence."""
    _check(items, seq_len, _caps(max_images, max_views))
    return [[i] for i in range(len(items))]


def efficiency(items: Sequence[PackItem], sequences: list[list[int]], seq_len: int) -> float:
    """Real tokens / (sequences * seq_len): the share of a padded batch that is not padding."""
    if not sequences:
        return 0.0
    real = sum(items[i].length for seq in sequences for i in seq)
    return real / (len(sequences) * seq_len)
