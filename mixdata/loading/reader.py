"""The loader's streaming side: shard runs -> samples (with faults handled) -> shuffled batches.

Faults. A sample whose members fail validation, or the rest of a shard whose tar breaks, is
skipped, logged (`logging`, logger `mixdata.load`) and counted in `LoadStats`; the stream then
reads its range again from the start to make up the missing samples, so every stream still
yields its exact number of batches (the repeats are counted as `samples_repeated`). More than
`max_failures` failures in a row raise MixdataError naming the shard. A shard the manifest
lists but the store lacks is a MixdataError at once: that is a broken upload, not bad luck.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch

from ..errors import MixdataError
from ..shards import PackedSequence, ShardError, iter_shard
from ..storage import RetryCounter, open_binary
from .order import Component, component_runs, virtual_segments

log = logging.getLogger("mixdata.load")

STAT_FIELDS = ("samples_failed", "shards_failed", "samples_repeated", "images_failed",
               "retries")
MAX_WORKERS = 64


class LoadStats:
    """Fault counters shared by the main process and its DataLoader workers.

    A small shared-memory tensor with one row per process (row 0: the main process, row
    w + 1: worker w), so workers never race; `totals()` sums the rows.
    """

    def __init__(self) -> None:
        self.table = torch.zeros(MAX_WORKERS + 1, len(STAT_FIELDS), dtype=torch.int64)
        self.table.share_memory_()
        self.row = 0

    def add(self, field: str, amount: int = 1) -> None:
        self.table[self.row, STAT_FIELDS.index(field)] += amount

    def totals(self) -> dict[str, int]:
        sums = self.table.sum(dim=0).tolist()
        return dict(zip(STAT_FIELDS, sums))


class FailureRun:
    """Counts failures and raises once more than `limit` happen with no good sample between."""

    def __init__(self, limit: int, stats: LoadStats) -> None:
        self.limit, self.stats, self.run = limit, stats, 0
        self.replaying = False  # re-reading a range to make up samples: already counted

    def ok(self) -> None:
        self.run = 0

    def failed(self, where: str, error: object, samples: int, whole_shard: bool) -> None:
        if self.replaying:
            return
        self.stats.add("samples_failed", samples)
        if whole_shard:
            self.stats.add("shards_failed")
        log.warning("skipped %d sample(s) of %s: %s", samples, where, error)
        self.run += 1
        if self.run > self.limit:
            raise MixdataError(f"{self.run} read failures in a row (max_failures={self.limit}),"
                               f" the last in {where}: {error}")


def read_run(folder: str, run, failures: FailureRun, stats: LoadStats
             ) -> Iterator[PackedSequence | None]:
    """Exactly `run.take` items from one shard: each sample, or None where it failed."""
    url = f"{folder.rstrip('/')}/{run.shard}"
    retries = RetryCounter()
    try:
        handle = open_binary(url, retries)
    except (FileNotFoundError, IsADirectoryError):
        raise MixdataError(f"shard {url} is missing, though the manifest lists it; "
                           "rebuild or re-upload the stage") from None
    produced = 0
    with handle, contextlib.closing(iter_shard(handle, name=url, strict=False,
                                                skip=run.skip)) as samples:
        try:
            for item in samples:
                if isinstance(item, ShardError):
                    failures.failed(url, item, 1, whole_shard=False)
                    item = None
                else:
                    failures.ok()
                produced += 1
                yield item
                if produced == run.take:
                    break
        except ShardError as err:
            failures.failed(url, err, run.take - produced, whole_shard=True)
        else:
            if produced < run.take:
                failures.failed(url, "the shard holds fewer samples than its manifest entry",
                                run.take - produced, whole_shard=True)
    stats.add("retries", retries.retries)
    yield from [None] * (run.take - produced)


class Positions:
    """Reads virtual positions of a mixture epoch (or of one dataset) as samples or None."""

    def __init__(self, components: list[Component], pattern: np.ndarray | None,
                 failures: FailureRun, stats: LoadStats) -> None:
        self.components, self.pattern = components, pattern
        self.failures, self.stats = failures, stats
        self.total = components[0].samples if pattern is None else len(pattern)
        self.quotas = None if pattern is None else np.bincount(pattern, minlength=len(components))

    def read(self, epoch: int, start: int, stop: int) -> Iterator[PackedSequence | None]:
        for first, last in virtual_segments(self.total, start, stop):
            yield from self._segment(epoch, first, last)

    def _component(self, index: int, start: int, stop: int) -> Iterator[PackedSequence | None]:
        component = self.components[index]
        for run in component_runs(component, start, stop):
            yield from read_run(component.folder, run, self.failures, self.stats)

    def _segment(self, epoch: int, start: int, stop: int) -> Iterator[PackedSequence | None]:
        if self.pattern is None:
            base = epoch * self.total
            yield from self._component(0, base + start, base + stop)
            return
        before = np.bincount(self.pattern[:start], minlength=len(self.components))
        within = np.bincount(self.pattern[start:stop], minlength=len(self.components))
        readers = [self._component(c, int(epoch * self.quotas[c] + before[c]),
                                   int(epoch * self.quotas[c] + before[c] + within[c]))
                   for c in range(len(self.components))]
        for c in self.pattern[start:stop].tolist():
            yield next(readers[c])


def fill_failures(read: Callable[[], Iterator[PackedSequence | None]], count: int,
                  failures: FailureRun) -> Iterator[PackedSequence]:
    """Exactly `count` samples: failed positions are dropped and made up by reading the range
    again from its start (the repeats are counted, the failures only once)."""
    produced, passes = 0, 0
    while produced < count:
        found = 0
        failures.replaying = passes > 0
        for item in read():
            if item is None:
                continue
            found += 1
            if passes:
                failures.stats.add("samples_repeated")
            yield item
            produced += 1
            if produced == count:
                return
        if not found:
            raise MixdataError(f"no readable sample in a range of {count} positions; "
                               "see the warnings above for the failing shards")
        passes += 1


def shuffled(items: Iterator, order: np.ndarray, start: int = 0) -> Iterator:
    """Items in `order` (see `order.shuffle_order`), from output index `start` on.

    Reads `items` in arrival order, keeping only those not emitted before `start`, so the
    memory held is bounded by the shuffle buffer.
    """
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    arrivals = enumerate(items)
    held = {}
    for wanted in order[start:].tolist():
        while wanted not in held:
            index, item = next(arrivals)
            if rank[index] >= start:
                held[index] = item
        yield held.pop(wanted)


def chunked(items: Iterator, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (stream lengths are multiples of the batch size)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
