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
- **Split.** Each epoch every rank gets the same number of batches, `batches`, a multiple
  of `streams`; rank r reads the contiguous virtual range starting at `r * batches * B`.
  That range is cut into `streams` equal contiguous stream ranges, and batch j of the rank's
  epoch is the next batch of stream `j % streams`. The order therefore depends on `streams`
  (and on seed, world size and rank), never on how many DataLoader workers produce it.
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
    """How one epoch of `samples` (virtual) positions is cut into ranks and streams.

    `drop_last=True` drops the last `samples % (world_size * streams * batch_size)` positions
    of each epoch's order (different samples each epoch, as the order is re-drawn);
    `drop_last=False` instead completes the last group from the epoch's first positions, so
    every sample is read and a few are read twice.
    """

    samples: int
    batch_size: int
    world_size: int
    rank: int
    streams: int
    drop_last: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise MixdataError(f"rank {self.rank} is outside world size {self.world_size}")
        if self.batches == 0:
            raise MixdataError(
                f"an epoch of {self.samples} sequences cannot give every one of "
                f"{self.world_size} ranks x {self.streams} streams a batch of "
                f"{self.batch_size}; lower batch_size or streams, or pass drop_last=False")

    @property
    def batches(self) -> int:
        """Batches per rank per epoch, the same on every rank."""
        group = self.world_size * self.streams * self.batch_size
        rounds = self.samples // group if self.drop_last else math.ceil(self.samples / group)
        return rounds * self.streams

    @property
    def stream_length(self) -> int:
        return self.batches // self.streams * self.batch_size

    def stream_range(self, stream: int) -> tuple[int, int]:
        """Virtual positions [a, b) of one stream; b may pass `samples` (then it wraps)."""
        start = self.rank * self.batches * self.batch_size + stream * self.stream_length
        return start, start + self.stream_length

    def consumed(self, stream: int, batches: int) -> int:
        """How many batches of `stream` are among the rank's first `batches` of an epoch."""
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
    """Which dataset fills each virtual position of a mixture epoch of `sum(sizes)`."""
    from ..mix import schedule

    names = [str(i) for i in range(len(sizes))]
    plan = schedule(dict(zip(names, weights)), {n: [1] * s for n, s in zip(names, sizes)},
                    budget=sum(sizes), max_epochs=math.inf, seed=seed)
    return np.asarray([int(pick.source) for pick in plan.picks], dtype=np.int64)


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
