"""`MixdataDataset`: the IterableDataset of batches, its resumable position and its loader.

Position. The dataset's whole state is its position: (epoch, steps of that epoch already
consumed), with the layout it was taken under (streams, canonical ranks, global batch). A
step is one global batch, so the position is the same on every rank. Iterating continues
from the position and advances it in the process that iterates; with DataLoader workers,
`ds.loader()` (or torchdata's StatefulDataLoader, which asks each worker) keeps it.

Workers. Batch j of an epoch comes from stream j % streams (see `order.Split`). A DataLoader
collects batches from its workers round-robin, starting at worker 0 when an iteration starts
(or, under StatefulDataLoader, after the worker that yielded last), so an iteration that
starts at batch k0 (`offset`) gives batch j to worker (j - k0) % num_workers, which then owns
every stream s with (s - k0) % num_workers == worker: any worker count dividing `streams`
yields the same batches in the same order. A worker restored to position (e, k) skips, in
each lane it owns, the blocks of that lane among the first k steps, replaying only the
shuffle of those positions (their samples are read and validated, their images never
decoded).

World size. The order is laid out for `canonical_ranks` ranks (default: the world size), and
a state records it with the global batch. Restored under any world size that divides it,
with the same global batch (batch_size x world_size), the run continues with exactly the
global batches the uninterrupted run would have given: each rank takes its slice, nothing is
repeated or skipped. A different global batch (or a world size that does not divide the
canonical ranks) is refused, unless the dataset was loaded with `approximate_resume=True`:
then it keeps its own layout and restarts the saved epoch at the same fraction of its
sequences, so within that epoch some are read twice and others not at all.
"""
from __future__ import annotations

import atexit
import logging
import math
import weakref
from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import MixdataError
from ..lifeline import die_with_parent
from .collate import BatchSpec, PixelMemory, Row, RowFailed, normalize_pixels, shared_pixels
from .families import default_collator
from .order import Component, Split, shuffle_order, worker_streams
from .reader import MAX_WORKERS, FailureRun, LoadStats, Positions, chunked, fill_failures, shuffled

log = logging.getLogger("mixdata.load")
# Batch iterators still open, closed at exit while every module is intact: one dropped at
# interpreter shutdown would unwind its readers after their modules were torn down.
_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_live() -> None:
    for batches in list(_LIVE):
        batches.close()


@dataclass(frozen=True, kw_only=True)
class LoadConfig:
    """How batches are drawn; see `mixdata.load` for each field."""

    batch_size: int
    seed: int = 0
    shuffle_buffer: int = 1000
    epochs: int | None = None
    drop_last: bool = True
    streams: int | None = None
    max_failures: int = 16
    canonical_ranks: int | None = None
    approximate_resume: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "streams", "epochs", "canonical_ranks"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MixdataError(f"{name} must be a positive integer, got {value}")
        if self.seed < 0 or self.shuffle_buffer < 0 or self.max_failures < 0:
            raise MixdataError("seed, shuffle_buffer and max_failures must be >= 0")


class MixdataDataset(IterableDataset):
    """Batches (dicts, see `mixdata.loading.collate`, or a family's `ModelBatch`es, see
    `mixdata.loading.families`) of one rank, endless unless `epochs`."""

    def __init__(self, components: list[Component], spec: BatchSpec, config: LoadConfig, *,
                 rank: int, world_size: int, pattern: np.ndarray | None = None,
                 collator=None) -> None:
        self.components, self.spec, self.config = components, spec, config
        # how rows are checked and batched: the contract collate, or a model family's
        # (`loading.families`); either has `cut(seq) -> Row` and `collate(rows, allocate)`
        self.collator = collator or default_collator(spec)
        self.rank, self.world_size, self.pattern = rank, world_size, pattern
        self.samples = components[0].samples if pattern is None else len(pattern)
        self._streams = config.streams
        self._ranks = config.canonical_ranks or world_size
        self._position = (0, 0)
        self._offset = 0  # the batch at which the DataLoader iteration began (see above)
        self._stats = LoadStats()
        if self._streams:
            self.split(self._streams)  # fail now, not in a worker, if the data is too small

    # --- order -----------------------------------------------------------------------------
    def split(self, streams: int) -> Split:
        return Split(samples=self.samples, batch_size=self.config.batch_size,
                     world_size=self.world_size, rank=self.rank, streams=streams,
                     drop_last=self.config.drop_last, canonical_ranks=self._ranks)

    @property
    def streams(self) -> int | None:
        """Streams the order is cut into: `streams=`, else set by `loader()`, a restored
        state, or (under a plain DataLoader) the worker count."""
        return self._streams

    @property
    def batches_per_epoch(self) -> int:
        """Batches each rank yields per epoch (needs the stream count to be known)."""
        if not self._streams:
            raise MixdataError("the stream count is not known yet: pass streams= to load, or "
                               "use ds.loader(num_workers=...)")
        return self.split(self._streams).batches

    @property
    def stats(self) -> dict[str, int]:
        """Fault counts of this process and its DataLoader workers (see `loading.reader`)."""
        return self._stats.totals()

    def normalize(self, pixel_values, device=None, dtype=None):
        """`normalize_pixels` with the stage's image-policy mean and std."""
        kwargs = {} if dtype is None else {"dtype": dtype}
        return normalize_pixels(pixel_values, self.spec.mean, self.spec.std, device, **kwargs)

    # --- iteration -------------------------------------------------------------------------
    def __iter__(self):
        batches = self._batches()
        _LIVE.add(batches)
        return batches

    def _batches(self):
        info = get_worker_info()
        if info is not None:
            die_with_parent()  # a DataLoader worker never outlives the training process
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        self._stats.row = 1 + worker % MAX_WORKERS if info else 0
        if not self._streams:
            self._streams = workers
        split = self.split(self._streams)
        failures = FailureRun(self.config.max_failures, self._stats)
        positions = Positions(self.components, self.pattern, failures, self._stats)
        allocate = shared_pixels if info else PixelMemory()
        epoch, done = self._normalised(split)
        while self.config.epochs is None or epoch < self.config.epochs:
            yield from self._epoch(split, positions, epoch, done, (worker, workers), allocate)
            epoch, done = epoch + 1, 0

    def _epoch(self, split: Split, positions: Positions, epoch: int, done: int, worker,
               allocate):
        index, workers = worker
        offset = self._offset % workers
        owned = worker_streams(split.streams, (index + offset) % workers, workers)
        lanes = {s: [self._lane(split, positions, epoch, c, s, split.consumed(s, done))
                     for c in split.owned] for s in owned}
        first = done + (index + offset - done) % workers
        for j in range(first, split.batches, workers):
            rows = [row for lane in lanes[j % split.streams] for row in next(lane)]
            batch = self._collate(rows, allocate)
            self._position = (epoch, j + 1)  # before the yield: a snapshot taken now has it
            yield batch

    def _lane(self, split: Split, positions: Positions, epoch: int, canonical: int,
              stream: int, skip: int):
        """Blocks of `split.block` sequences of one lane, from its `skip`-th block."""
        start, stop = split.lane_range(canonical, stream)
        buffer = math.ceil(self.config.shuffle_buffer / split.streams)
        rng = np.random.default_rng([self.config.seed, epoch, canonical, stream])
        order = shuffle_order(stop - start, buffer, rng)
        samples = fill_failures(lambda: positions.read(epoch, start, stop), stop - start,
                                positions.failures)
        return chunked(shuffled(samples, order, skip * split.block), split.block)

    def _collate(self, sequences, allocate) -> dict:
        """Cut every row's images; a row that fails is replaced by a neighbouring good row."""
        rows: list[Row | None] = []
        for seq in sequences:
            try:
                rows.append(self.collator.cut(seq))
            except MixdataError as err:
                self._row_failed(err)
                rows.append(None)
        while True:
            filled = fill_rows(rows)
            try:
                return self.collator.collate(filled, allocate)
            except RowFailed as err:  # rare: collate again without the row
                self._row_failed(err)
                rows = [None if row is filled[err.row] else row for row in rows]

    def _row_failed(self, err: MixdataError) -> None:
        self._stats.add("images_failed")
        log.warning("replaced a row of a batch: %s", err)

    # --- state -----------------------------------------------------------------------------
    def _normalised(self, split: Split) -> tuple[int, int]:
        epoch, done = self._position
        return (epoch + 1, 0) if done >= split.batches else (epoch, done)

    def advance(self) -> None:
        """Count one batch consumed in this process (what `loader()` does with workers)."""
        epoch, done = self._normalised(self.split(self._streams))
        self._position = (epoch, done + 1)

    def state_dict(self) -> dict:
        """A few integers: the position (the same on every rank) and its layout."""
        epoch, done = self._position
        split = self.split(self._streams) if self._streams else None
        return {"epoch": epoch, "batches": done, "streams": self._streams,
                "offset": self._offset, "world_size": self.world_size,
                "canonical_ranks": self._ranks,
                "global_batch": self.config.batch_size * self.world_size,
                "batches_per_epoch": split.batches if split else None}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`, exactly under any world size dividing its canonical ranks
        with the same global batch (see the module docstring)."""
        streams = state.get("streams")
        if self.config.streams and streams and streams != self.config.streams:
            raise MixdataError(f"the state was taken with streams={streams}, this dataset has "
                               f"streams={self.config.streams}: the batch order differs; load "
                               f"with streams={streams}")
        epoch, done = int(state["epoch"]), int(state["batches"])
        mismatch = self._layout_mismatch(state)
        if mismatch and not self.config.approximate_resume:
            raise MixdataError(f"cannot resume this state exactly: {mismatch}. Load with the "
                               "state's layout, or pass approximate_resume=True to restart its "
                               "epoch at the same fraction (some sequences then repeat or are "
                               "skipped within that epoch)")
        self._streams = streams or self._streams
        if mismatch:
            done = self._same_fraction(state, done)
        else:
            self._ranks = int(state.get("canonical_ranks") or state.get("world_size")
                              or self._ranks)
        self._position = (epoch, done)
        # Inside a worker (StatefulDataLoader) the round-robin continues where it stopped; in
        # the main process the next DataLoader iteration starts it afresh at this batch.
        self._offset = int(state.get("offset", 0)) if get_worker_info() else done

    def _layout_mismatch(self, state: dict) -> str | None:
        """Why `state` cannot continue exactly here, or None."""
        saved_world = state.get("world_size", self.world_size)
        ranks = state.get("canonical_ranks") or saved_world
        global_batch = state.get("global_batch")
        if global_batch is None and saved_world != self.world_size:
            return (f"it was taken at world size {saved_world} by an older mixdata that did "
                    "not record its global batch")
        here = self.config.batch_size * self.world_size
        if global_batch is not None and global_batch != here:
            hint = (f"use batch_size={global_batch // self.world_size}"
                    if global_batch % self.world_size == 0 else
                    f"world size {self.world_size} cannot split {global_batch} evenly")
            return (f"its global batch is {global_batch} sequences, this one is {here} "
                    f"(batch_size {self.config.batch_size} x world size {self.world_size}); "
                    + hint)
        if self.config.canonical_ranks and self.config.canonical_ranks != ranks:
            return (f"it was laid out for canonical_ranks={ranks}, this dataset for "
                    f"canonical_ranks={self.config.canonical_ranks}")
        if ranks % self.world_size:
            return (f"world size {self.world_size} does not divide its canonical_ranks="
                    f"{ranks}")
        return None

    def _same_fraction(self, state: dict, done: int) -> int:
        saved = state.get("batches_per_epoch")
        if not (saved and self._streams):
            return 0
        now = self.split(self._streams).batches
        log.warning("approximate resume: a state from world size %s (global batch %s) under "
                    "world size %s (global batch %s) restarts its epoch at the same fraction, "
                    "not exactly", state.get("world_size"), state.get("global_batch"),
                    self.world_size, self.config.batch_size * self.world_size)
        return done * now // saved

    def start_iteration(self) -> None:
        """Called by `MixdataLoader` as a DataLoader iteration starts at the position."""
        if self._streams:
            self._offset = self._normalised(self.split(self._streams))[1]

    def loader(self, num_workers: int = 0, **kwargs) -> MixdataLoader:
        """A DataLoader over this dataset (batch_size=None) that keeps the position."""
        if not self._streams:
            self._streams = max(1, num_workers)
        return MixdataLoader(self, num_workers=num_workers, **kwargs)


def fill_rows(rows: list[Row | None]) -> list[Row]:
    """Replace each failed row (None) by the nearest good row before it, else the first good
    one after it, so the batch keeps its size."""
    good = [row for row in rows if row is not None]
    if not good:
        raise MixdataError("every sequence of a batch failed; see the warnings above")
    filled, last = [], good[0]
    for row in rows:
        last = row if row is not None else last
        filled.append(last)
    return filled


class MixdataLoader(DataLoader):
    """DataLoader(dataset, batch_size=None) that counts delivered batches in the main
    process, so `state_dict()` is exact with worker processes too."""

    def __init__(self, dataset: MixdataDataset, num_workers: int = 0, **kwargs) -> None:
        if num_workers:
            worker_streams(dataset.streams, 0, num_workers)  # refuse a bad count up front
        super().__init__(dataset, batch_size=None, num_workers=num_workers, **kwargs)

    def __iter__(self):
        self.dataset.start_iteration()
        for batch in super().__iter__():
            if self.num_workers:  # without workers the dataset counts itself
                self.dataset.advance()
            yield batch

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)
