"""Build phase 2: plan sequences and shards from prepared lengths alone, chunk by chunk.

`plan_stage` runs in memory bounded by a chunk, plus a bit per prepared document:
1. scan each source's units for documents and tokens (`units.scan`);
2. exact dedup across the stage for sources with `filters.dedup` (`units.find_duplicates`);
3. the exact mixture schedule (`mix.StreamSchedule` over `units.UnitTable`s), cut at fixed
   virtual times into chunks of about `CHUNK_DOCS` documents;
4. `pack_chunk` on each chunk: a pure function of the chunk's numpy arrays, so chunks can be
   packed anywhere, in any order, with the same result;
5. in chunk order: the sequences budget, the chunk's document references written to
   `folder/chunk-NNNNNN.npz`, the 1,000-sequence window deviation and per-source counts;
6. per-record accounting (`units.record_accounts`).

The plan depends only on the recipe, the seed and the prepared documents of each source's
minimal unit prefix; never on how many workers prepared them, nor on who packs the chunks.
"""
from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..mix import ScheduledChunk, StreamSchedule, WindowDeviation, default_span
from ..pack import pack_arrays
from .units import UnitTable, column, open_unit, record_accounts, scan_sources

PACKING_SLACK = 0.99  # expected packing efficiency when a budget is given in sequences
PREPARE_MARGIN = 1.02  # prepare a little beyond a source's share so packing never runs short
CHUNK_DOCS = 1 << 16   # documents per plan chunk, on average


@dataclass(frozen=True)
class SourceInput:
    """One source's prepared unit prefix: unit names, cache paths (without `.arrow`), and
    whether its documents take part in exact dedup."""

    units: tuple[str, ...]
    paths: tuple[str, ...]
    dedup: bool = False


@dataclass(frozen=True)
class SourcePlan:
    """What the plan did with one source's prepared documents and records."""

    documents: int      # documents written (a repeated document counts each time)
    tokens: int         # tokens written
    images: int         # images written
    epochs: float       # documents written / documents kept after dedup
    written: int        # records with at least one document written
    unused: dict[str, int]  # records with none, by reason (`units.REASONS`)
    unaccounted: int    # records scheduled but neither written nor cut: always 0, or a bug


class SequenceRefs(NamedTuple):
    """Sequences first..first+count-1: sequence k holds documents offsets[k]:offsets[k+1] of
    the flat arrays (source index into `StagePlan.sources`, unit index, row in the unit)."""

    first: int
    offsets: np.ndarray  # int64 [count + 1]
    source: np.ndarray   # int16
    unit: np.ndarray     # int32
    row: np.ndarray      # int32


@dataclass(frozen=True)
class StagePlan:
    """The plan of one stage: its sequences live in chunk files under `folder`."""

    folder: Path
    sources: tuple[str, ...]            # source order (indices in SequenceRefs.source)
    chunk_starts: tuple[int, ...]       # first sequence of each chunk file
    sequences: int
    tokens: int
    window_deviation: float             # largest share deviation over 1,000-sequence windows
    per_source: dict[str, SourcePlan]

    def shard_count(self, per_shard: int) -> int:
        return -(-self.sequences // per_shard)

    def shard_ranges(self, per_shard: int) -> Iterator[range]:
        """The sequences of each shard, shard by shard (lazily: a shard at a time)."""
        for i in range(0, self.sequences, per_shard):
            yield range(i, min(i + per_shard, self.sequences))

    def refs(self, first: int, count: int) -> SequenceRefs:
        """The document references of `count` sequences from `first` (any chunks)."""
        parts, k, stop = [], bisect_right(self.chunk_starts, first) - 1, first + count
        while count and k < len(self.chunk_starts) and self.chunk_starts[k] < stop:
            data = _chunk_file(self.folder / f"chunk-{k:06d}.npz")
            a = max(first, self.chunk_starts[k]) - self.chunk_starts[k]
            b = min(stop, self.chunk_starts[k] + len(data["offsets"]) - 1) - self.chunk_starts[k]
            lo, hi = int(data["offsets"][a]), int(data["offsets"][b])
            parts.append((data["offsets"][a:b + 1] - lo, data["source"][lo:hi],
                          data["unit"][lo:hi], data["row"][lo:hi]))
            k += 1
        if not parts:
            return SequenceRefs(first, np.zeros(1, np.int64), np.zeros(0, np.int16),
                                np.zeros(0, np.int32), np.zeros(0, np.int32))
        base = np.cumsum([0] + [len(p[1]) for p in parts])
        offsets = np.concatenate([parts[0][0][:1]] + [p[0][1:] + b for p, b in zip(parts, base)])
        return SequenceRefs(first, offsets, *(np.concatenate([p[i] for p in parts])
                                              for i in (1, 2, 3)))


def _chunk_file(path: Path) -> dict[str, np.ndarray]:
    """A chunk's arrays; the last two read are kept, as shards read their chunks in order."""
    stat = path.stat()
    return _read_chunk(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=2)
def _read_chunk(path: str, mtime_ns: int, size: int) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def stage_budget(stage, seq_len: int, mean_len: dict[str, float], shares: dict[str, float]):
    """The stage budget in its weight_by unit, or None for 'all data, no repeats'."""
    if stage.budget is None:
        return None
    unit, amount = stage.budget.unit, float(stage.budget.amount)
    tokens_per_doc = sum(shares[s] * mean_len.get(s, 1.0) for s in shares) or 1.0
    if unit == "sequences":
        unit, amount = "tokens", amount * seq_len / PACKING_SLACK
    if unit == "samples" and stage.weight_by == "tokens":
        return amount * tokens_per_doc
    if unit == "tokens" and stage.weight_by == "samples":
        return amount / tokens_per_doc
    return amount


class PackTask(NamedTuple):
    """What packing one chunk needs, and nothing else (it travels to a worker): per scheduled
    document its length, images, views and source index; the stage's limits."""

    length: np.ndarray   # int32
    images: np.ndarray   # int32
    views: np.ndarray    # int32
    source: np.ndarray   # int16
    seq_len: int
    caps: tuple[int | None, int | None]   # max images, max views per sequence

    @classmethod
    def of(cls, chunk: ScheduledChunk, seq_len: int, caps) -> PackTask:
        cols = chunk.columns
        return cls(*(np.asarray(cols[k], np.int32) for k in ("length", "images", "views")),
                   np.asarray(chunk.source, np.int16), seq_len, tuple(caps))


def pack_task(task: PackTask):
    """Pack one chunk (pure: numpy arrays in, `pack.Packed` out)."""
    return pack_arrays(task.length, task.seq_len, images=task.images, views=task.views,
                       group=task.source, max_images=task.caps[0], max_views=task.caps[1])


def pack_chunk(chunk: ScheduledChunk, seq_len: int, caps: tuple[int | None, int | None]):
    """Pack one scheduled chunk (pure: numpy arrays in, `pack.Packed` out)."""
    return pack_task(PackTask.of(chunk, seq_len, caps))


PackMap = Callable[[Iterator[PackTask]], Iterator]  # packs tasks, results in task order


def plan_stage(stage, sources: dict[str, SourceInput], *, seq_len: int, seed: int,
               folder: Path, chunk_docs: int = CHUNK_DOCS,
               on_chunk: Callable[[int], None] | None = None,
               pack_map: PackMap | None = None) -> StagePlan:
    """Plan one stage (module docstring) into `folder`; `on_chunk(documents)` reports
    progress; `pack_map` packs the chunks elsewhere (an engine's ordered map; default: one
    after the other, here). MixError (a MixdataError) when the mixture cannot be
    scheduled."""
    from ..mix import normalise

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("chunk-*.npz"):
        stale.unlink()
    names = [s for s in stage.shares() if s in sources]
    tables = _tables(sources, names, stage.weight_by, folder)
    shares = normalise({s: v for s, v in stage.shares().items() if s in tables or v > 0},
                       tables)
    mean_len = {s: t.kept_tokens / t.kept if t.kept else 1.0 for s, t in tables.items()}
    budget = stage_budget(stage, seq_len, mean_len, shares)
    schedule = StreamSchedule(shares, tables, budget=budget, max_epochs=stage.max_epochs,
                              seed=seed, span=default_span(shares, tables, chunk_docs))
    limit = int(stage.budget.amount) if stage.budget and stage.budget.unit == "sequences" \
        else None
    reducer = _Reducer(schedule.names, [tables[s] for s in schedule.names], folder, shares,
                       limit, has_budget=stage.budget is not None)
    caps = (stage.pack.max_images, stage.pack.max_tiles)
    chunks: deque[ScheduledChunk] = deque()  # scheduled, not yet reduced (a map's window)

    def tasks() -> Iterator[PackTask]:
        for chunk in schedule:
            chunks.append(chunk)
            yield PackTask.of(chunk, seq_len, caps)

    packed_chunks = (pack_map or partial(map, pack_task))(tasks())
    try:
        for packed in packed_chunks:
            chunk = chunks.popleft()
            if not reducer.add(chunk, packed):
                break
            if on_chunk is not None:
                on_chunk(len(chunk.source))
    finally:
        close = getattr(packed_chunks, "close", None)
        if close is not None:  # a sequences budget stops early: drop what is in flight
            close()
    plan = reducer.finish()
    for done in folder.glob("columns-*.bin"):
        done.unlink()
    return plan


def _tables(sources: dict[str, SourceInput], names: list[str], weight_by: str,
            folder: Path) -> dict[str, UnitTable]:
    scanned = scan_sources([(list(sources[s].paths), sources[s].dedup) for s in names], folder)
    return {s: UnitTable(*found, weight_by) for s, found in zip(names, scanned)}


class _Reducer:
    """Consumes packed chunks in order: cuts at the sequences budget, writes each chunk's
    references, and counts what each source wrote."""

    def __init__(self, names: list[str], tables: list[UnitTable], folder: Path,
                 shares: dict[str, float], limit: int | None, has_budget: bool) -> None:
        self.names, self.tables, self.folder, self.limit = names, tables, folder, limit
        self.has_budget = has_budget
        self.written = [np.zeros((t.size + 7) // 8, np.uint8) for t in tables]
        self.scheduled = [np.zeros((t.size + 7) // 8, np.uint8) for t in tables]
        self.cut: list[list[np.ndarray]] = [[] for _ in tables]
        self.totals = np.zeros((3, len(names)), np.int64)  # documents, tokens, images
        self.window = WindowDeviation(shares, names)
        self.starts: list[int] = []
        self.sequences = 0

    def add(self, chunk: ScheduledChunk, packed) -> bool:
        """Take one chunk; False once the sequences budget is reached."""
        count = len(packed.offsets) - 1
        if self.limit is not None:
            count = min(count, self.limit - self.sequences)
        end = int(packed.offsets[count])
        docs, dropped = packed.order[:end], packed.order[end:]
        src, cols = chunk.source, chunk.columns
        groups = len(self.names)
        seq = np.repeat(np.arange(count), np.diff(packed.offsets[:count + 1]))
        tokens = np.bincount(seq * groups + src[docs], weights=cols["length"][docs],
                             minlength=count * groups).reshape(count, groups)
        self.window.add(tokens)
        refs = {"offsets": packed.offsets[:count + 1].astype(np.int64),
                "source": src[docs].astype(np.int16)}
        refs["unit"], refs["row"] = np.zeros(end, np.int32), np.zeros(end, np.int32)
        for k, table in enumerate(self.tables):
            mine = src[docs] == k
            index = cols["index"][docs][mine]
            unit, row = table.locate(index)
            refs["unit"][mine], refs["row"][mine] = unit, row
            _set_bits(self.written[k], index)
            _set_bits(self.scheduled[k], cols["index"][src == k])
            self.totals[:, k] += (len(index), int(cols["length"][docs][mine].sum()),
                                  int(cols["images"][docs][mine].sum()))
            self.cut[k].append(cols["index"][dropped][src[dropped] == k])
        np.savez(self.folder / f"chunk-{len(self.starts):06d}.npz", **refs)
        self.starts.append(self.sequences)
        self.sequences += count
        return self.limit is None or self.sequences < self.limit

    def finish(self) -> StagePlan:
        per_source = {}
        for k, (name, table) in enumerate(zip(self.names, self.tables)):
            cut = np.unique(np.concatenate(self.cut[k])) if self.cut[k] else np.zeros(0, np.int64)
            written, unused, lost = record_accounts(table, self.written[k], self.scheduled[k],
                                                    cut, self.has_budget)
            documents, tokens, images = (int(x) for x in self.totals[:, k])
            per_source[name] = SourcePlan(
                documents=documents, tokens=tokens, images=images,
                epochs=documents / table.kept if table.kept else 0.0, written=written,
                unused=unused, unaccounted=lost)
        return StagePlan(folder=self.folder, sources=tuple(self.names),
                         chunk_starts=tuple(self.starts), sequences=self.sequences,
                         tokens=int(self.totals[1].sum()),
                         window_deviation=self.window.value, per_source=per_source)


def _set_bits(bits: np.ndarray, index: np.ndarray) -> None:
    np.bitwise_or.at(bits, index >> 3, (1 << (index & 7)).astype(np.uint8))


def shard_hash(refs: SequenceRefs, names, unit_keys: dict[str, list[str]], context: str) -> str:
    """Identity of one shard's content: its sequences' documents (source, unit cache key,
    row), their position in the stage and the build context."""
    digest = hashlib.sha256(context.encode())
    used = np.unique((refs.source.astype(np.int64) << 32) | refs.unit.astype(np.int64))
    keys = [[names[u >> 32], unit_keys[names[u >> 32]][u & 0xFFFFFFFF]] for u in used.tolist()]
    digest.update(json.dumps([refs.first, keys]).encode())
    for array, dtype in ((refs.offsets, "<i8"), (refs.source, "<i2"), (refs.unit, "<i4"),
                         (refs.row, "<i4")):
        digest.update(np.ascontiguousarray(array, dtype).tobytes())
    return digest.hexdigest()


def prefix_length(unit_costs: list[float | None], need: float | None) -> int | None:
    """Units needed so that their cost reaches `need` (None: all). None if still unknown."""
    total = 0.0
    for n, cost in enumerate(unit_costs, start=1):
        if cost is None:
            return None
        total += cost
        if need is not None and total >= need:
            return n
    return len(unit_costs)


def unit_cost(stats: dict, path: str, weight_by: str) -> float:
    if weight_by == "samples":
        return float(stats["docs"])
    return float(column(open_unit(path), "length").sum())
