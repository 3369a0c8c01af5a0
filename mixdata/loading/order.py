"""Pure order arithmetic of the loader: which samples each rank, stream and batch reads.

- **Epoch order of a dataset.** Epoch e visits the shards in the permutation drawn from
  `default_rng([seed, e])`, each shard's samples in file order. A sample's *position* counts
  samples in that order; positions past the end continue into the next epoch's order, so a
  dataset is an endless cyclic sequence. The manifest's per-shard sample counts locate any
  position, so no index file is needed.
- **Mixtures.** With several datasets, epoch e of the mixture is `sum(samples)` *virtual*
  positions; `pattern[i]` names the dataset that fills virtual position i (the build's exact
  deficit schedule, `mixdata.mix.schedule`, with every sequence costing 1), and dataset c's
  k-th appearance reads its own position `e * quota[c] + k`.
- **Split: a global order that does not depend on the world size.** The order is laid out
  for `canonical_ranks` (q) ranks, each reading `streams` streams; `global_batch` (G =
  batch_size x world_size) sequences make one step. An epoch is cut into q x streams equal
  contiguous *lanes*: lane (i, g), canonical rank i's stream g, starts at virtual position
  `(i * streams + g) * lane_length`. Step j of an epoch uses stream g = j % streams: it takes
  the next c = G / q sequences of every canonical rank's lane (i, g), in canonical-rank
  order. Rank r of a world of size W (which must divide q) owns canonical ranks
  [r q / W, (r + 1) q / W) and delivers their c-blocks of each step: its slice of the global
  batch, read from its own lanes only. So global batch j is the same sequences for any world
  size dividing q, a position (epoch, steps done) means the same on every rank, and a rank
  never reads a sequence another rank delivers. With q = world_size (the default) this is
  rank r reading the contiguous range `r * batches * batch_size`, cut into `streams` streams.
  The order depends on seed, q, streams and G; never on the world size (dividing q) or on how
  many DataLoader workers produce it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..errors import MixdataError


def shard_order(seed: int, epoch: int, count: int) -> np.ndarray:
    """The order in which epoch `epoch` of a dataset visits its `count` shards."""
    return np.random.default_rng([seed, epoch]).permutation(count)


@dataclass(frozen=True)
class Component:
    """One built dataset: its shard folder URL, its shards (name, samples) in manifest order,
    and the seed of its shard permutations."""

    folder: str
    shards: tuple[tuple[str, int], ...]
    seed: int

    @property
    def samples(self) -> int:
        return sum(size for _, size in self.shards)


class Run(NamedTuple):
    """`take` consecutive samples of one shard, after its first `skip`."""

    shard: str
    skip: int
    take: int


def component_runs(component: Component, start: int, stop: int) -> list[Run]:
    """The shard runs that hold cyclic positions [start, stop) of `component`, in order."""
    total, runs, position = component.samples, [], start
    while position < stop:
        epoch, offset = divmod(position, total)
        order = shard_order(component.seed, epoch, len(component.shards))
        sizes = np.asarray([component.shards[i][1] for i in order], np.int64)
        ends = np.cumsum(sizes)
        k = int(np.searchsorted(ends, offset, side="right"))
        skip = offset - int(ends[k] - sizes[k])
        take = min(int(sizes[k]) - skip, stop - position)
        runs.append(Run(component.shards[order[k]][0], skip, take))
        position += take
    return runs


@dataclass(frozen=True)
class Split:
    """How one epoch of `samples` (virtual) positions is cut into lanes, steps and ranks.

    `drop_last=True` drops the last `samples % (streams * global_batch)` positions of each
    epoch's order (different samples each epoch, as the order is re-drawn);
    `drop_last=False` instead completes the last group from the epoch's first positions, so
    every sample is read and a few are read twice. `canonical_ranks=None` means world_size.
    """

    samples: int
    batch_size: int
    world_size: int
    rank: int
    streams: int
    drop_last: bool = True
    canonical_ranks: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise MixdataError(f"rank {self.rank} is outside world size {self.world_size}")
        q, world = self.ranks, self.world_size
        if q % world:
            raise MixdataError(
                f"world size {world} does not divide canonical_ranks={q}: the batch order is "
                f"laid out for {q} canonical ranks, so the world size must divide it (or load "
                "with approximate_resume=True to re-lay the order for this world size)")
        if self.batch_size % (q // world):
            raise MixdataError(
                f"batch_size {self.batch_size} is not a multiple of canonical_ranks / world "
                f"size = {q // world}: each rank's batch takes an equal block from each of its "
                f"{q // world} canonical ranks; use a global batch divisible by {q}")
        if self.batches == 0:
            raise MixdataError(
                f"an epoch of {self.samples} sequences cannot give every one of "
                f"{self.world_size} ranks x {self.streams} streams a batch of "
                f"{self.batch_size}; lower batch_size or streams, or pass drop_last=False")

    @property
    def ranks(self) -> int:
        """Canonical ranks the order is laid out for."""
        return self.canonical_ranks or self.world_size

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def block(self) -> int:
        """Sequences each canonical rank gives every step (c = global_batch / q)."""
        return self.global_batch // self.ranks

    @property
    def batches(self) -> int:
        """Steps (batches per rank) per epoch, the same on every rank."""
        group = self.streams * self.global_batch
        rounds = self.samples // group if self.drop_last else math.ceil(self.samples / group)
        return rounds * self.streams

    @property
    def lane_length(self) -> int:
        return self.batches // self.streams * self.block

    @property
    def owned(self) -> range:
        """The canonical ranks this rank delivers."""
        per = self.ranks // self.world_size
        return range(self.rank * per, (self.rank + 1) * per)

    def lane_range(self, canonical: int, stream: int) -> tuple[int, int]:
        """Virtual positions [a, b) of one lane; b may pass `samples` (then it wraps)."""
        start = (canonical * self.streams + stream) * self.lane_length
        return start, start + self.lane_length

    def consumed(self, stream: int, batches: int) -> int:
        """How many steps of `stream` are among an epoch's first `batches` steps."""
        return max(0, -(-(batches - stream) // self.streams))


def worker_streams(streams: int, worker: int, workers: int) -> list[int]:
    """The streams a DataLoader worker produces: batch j goes to worker j % workers, and it is
    stream j % streams, so worker w owns the streams congruent to w when workers divides
    streams."""
    if streams % workers:
        raise MixdataError(f"{workers} DataLoader workers cannot share {streams} streams "
                           f"evenly: use a worker count that divides streams={streams}, or "
                           "set streams to a multiple of num_workers")
    return list(range(worker, streams, workers))


def shuffle_order(count: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """Emission order of a bounded shuffle buffer over items 0..count-1.

    Items arrive in order; once `buffer` items are held, each arrival first emits a held item
    at a random slot; at the end the rest leave in random order. It depends on the count
    only, so resuming replays it without the items.
    """
    if buffer <= 1 or count <= 1:
        return np.arange(count, dtype=np.int64)
    held = list(range(min(buffer, count)))
    slots = rng.integers(0, len(held), size=max(0, count - len(held))).tolist()
    out = []
    for arrival, slot in zip(range(len(held), count), slots):
        out.append(held[slot])
        held[slot] = arrival
    out.extend(np.asarray(held)[rng.permutation(len(held))].tolist())
    return np.asarray(out, dtype=np.int64)


def mixture_pattern(weights: list[float], sizes: list[int], seed: int) -> np.ndarray:
    """Which dataset fills each virtual position of a mixture epoch of `sum(sizes)`: the
    build's exact schedule with every sequence costing 1, as arrays (no per-position objects)."""
    from ..mix import ArrayTable, StreamSchedule, default_span, normalise

    names = [str(i) for i in range(len(sizes))]
    shares = dict(zip(names, weights))
    tables = {n: ArrayTable(np.ones(size, np.int64)) for n, size in zip(names, sizes) if size}
    active = normalise(shares, tables)
    stream = StreamSchedule(shares, tables, budget=sum(sizes), max_epochs=math.inf, seed=seed,
                            span=default_span(active, tables, 1 << 20))
    dataset = np.asarray([int(n) for n in stream.names], np.int64)
    return np.concatenate([dataset[chunk.source] for chunk in stream])


def virtual_segments(total: int, start: int, stop: int) -> list[tuple[int, int]]:
    """[start, stop) as ranges within one epoch of `total` positions, wrapping past the end
    (only `drop_last=False` reads past it)."""
    out = []
    while start < stop:
        first = start % total
        last = min(total, first + stop - start)
        out.append((first, last))
        start += last - first
    return out
