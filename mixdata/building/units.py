"""The plan's view of prepared units: one pass over them into a compact column file.

A prepared unit (`prepare.py`) is an Arrow IPC file with one row per document. The plan
opens each unit once, through a memory map, and touches only `length`, `n_images`,
`n_views`, `record` and `dedup` (16 bytes, zeros when dedup is off), so token ids and image
bytes are never read. `scan` copies the first four into one fixed-width file per source
(`COLUMNS`, 16 bytes per document) that later steps read by range with plain reads, so
nothing per document stays in memory. A source's documents are numbered in unit order,
then row order.

- `UnitTable`: one source as a `mix.DocTable` (ranges of columns), duplicates left out.
- `Dedup`: exact dedup across the stage, first record wins (source order, then unit and
  row); keys are spilled to disk in hash partitions, so memory stays bounded.
- `record_accounts`: which prepared records were written, why the others were not, and
  how many fit no reason (records the plan lost: the build's accounting check then fails).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

COLUMNS = np.dtype([("length", "<i4"), ("images", "<i4"), ("views", "<i4"), ("record", "<i4")])
PARTITION_DOCS = 1 << 18   # dedup keys held in memory at once (40 bytes each)
PARTITIONS = 256           # hash partitions once they no longer fit
READ_DOCS = 1 << 16        # documents per read when a step walks a whole source
_SPILL = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("doc", "<i8"), ("record", "<i8"),
                   ("length", "<i8")])


def open_unit(path: str) -> pa.Table:
    """The memory-mapped table of a prepared unit (`path` without `.arrow`)."""
    with pa.memory_map(path + ".arrow") as source:
        return ipc.open_file(source).read_all()


_INTEGERS = {pa.int32(): "<i4", pa.int64(): "<i8"}


def column(table: pa.Table, name: str, dtype=np.int64) -> np.ndarray:
    """An integer column as numpy, read from its buffer: one combined chunk converts ~10x
    faster than ChunkedArray.to_numpy over prepare's 256-row batches, and pyarrow's own
    to_numpy imports pandas (half a second)."""
    array = table.column(name).combine_chunks()
    if array.null_count or array.type not in _INTEGERS:
        raise ValueError(f"prepared column {name!r} is {array.type} with {array.null_count} "
                         "nulls; expected int32 without nulls (rebuild the .prepare cache)")
    width = np.dtype(_INTEGERS[array.type])
    data = np.frombuffer(array.buffers()[1], width, count=len(array),
                         offset=width.itemsize * array.offset)
    return data.astype(dtype)


def dedup_keys(table: pa.Table) -> np.ndarray:
    """The `dedup` column as uint64 pairs [rows, 2] (zeros: the document takes no part)."""
    array = table.column("dedup").combine_chunks()
    if not pa.types.is_fixed_size_binary(array.type) or array.type.byte_width != 16:
        raise ValueError(f"dedup column has type {array.type}; expected fixed_size_binary(16) "
                         "(prepared by an older mixdata: delete the .prepare cache)")
    data = array.buffers()[1]
    keys = np.frombuffer(data, "<u8", count=2 * len(array), offset=16 * array.offset)
    return keys.reshape(-1, 2)


class SourceScan:
    """One source after `scan`: its column file, documents and tokens per unit."""

    def __init__(self, path: Path, sizes: list[int], tokens: list[int]) -> None:
        self.path, self.sizes, self.tokens = path, sizes, tokens
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def read(self, start: int, stop: int) -> np.ndarray:
        """COLUMNS rows of documents [start, stop)."""
        return np.fromfile(self.path, COLUMNS, count=stop - start,
                           offset=start * COLUMNS.itemsize)

    def walk(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first document, rows) over the whole source in reads of whole units, about
        READ_DOCS documents each (a record never spans units)."""
        start = 0
        for end in self.offsets[1:].tolist():
            if end - start >= READ_DOCS or end == self.offsets[-1]:
                if end > start:
                    yield start, self.read(start, end)
                start = end


def scan(paths: list[str], out: Path, dedup: Dedup | None = None) -> SourceScan:
    """Copy one source's plan columns into `out` (and its dedup keys into `dedup`)."""
    sizes, tokens = [], []
    with open(out, "wb") as fh:
        for path in paths:
            table = open_unit(path)
            rows = np.empty(table.num_rows, COLUMNS)
            for field, name in (("length", "length"), ("images", "n_images"),
                                ("views", "n_views"), ("record", "record")):
                rows[field] = column(table, name, np.int32)
            if dedup is not None:
                dedup.add(table, rows, len(sizes))
            rows.tofile(fh)
            sizes.append(len(rows))
            tokens.append(int(rows["length"].sum(dtype=np.int64)))
    return SourceScan(out, sizes, tokens)


def scan_sources(sources: list[tuple[list[str], bool]], folder: Path
                 ) -> list[tuple[SourceScan, np.ndarray, int]]:
    """One pass over every unit of the stage's sources ((unit paths, dedup on?) in stage
    order): per source its scan, the sorted indices of its duplicates and their tokens."""
    dedup = Dedup(folder)
    scans = []
    for k, (paths, on) in enumerate(sources):
        scans.append(scan(paths, folder / f"columns-{k:03d}.bin", dedup if on else None))
        dedup.next_source(int(scans[-1].offsets[-1]), len(paths), scanned=on)
    return [(sc, dups, tokens) for sc, (dups, tokens) in zip(scans, dedup.duplicates())]


class UnitTable:
    """One source as a `mix.DocTable`: columns length, images, views and cost (`length`, or 1
    per document when weighting by samples); duplicates are not kept."""

    def __init__(self, source: SourceScan, duplicates: np.ndarray, dup_tokens: int,
                 weight_by: str) -> None:
        self.source, self.weight_by, self.duplicates = source, weight_by, duplicates
        self.offsets = source.offsets
        self.size = int(self.offsets[-1])
        self.kept = self.size - len(duplicates)
        self.kept_tokens = int(sum(source.tokens)) - dup_tokens
        self.kept_cost = float(self.kept_tokens if weight_by == "tokens" else self.kept)

    def locate(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(unit index, row) of document indices."""
        unit = np.searchsorted(self.offsets, docs, side="right") - 1
        return unit, docs - self.offsets[unit]

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        rows = self.source.read(start, stop)
        keep = ~member(np.arange(start, stop), self.duplicates)
        cost = rows["length"] if self.weight_by == "tokens" else np.ones(len(rows), np.int32)
        return {"cost": cost, "keep": keep, "length": rows["length"],
                "images": rows["images"], "views": rows["views"]}


def member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if not len(sorted_set):
        return np.zeros(len(values), bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values


class Dedup:
    """Exact dedup across the stage's sources, fed unit by unit by `scan` in stage order.

    A document is a duplicate when an earlier record (source order, then unit, row) has the
    same key; every document of the first record with a key is kept, so the chunks of one
    long record are never duplicates of each other. Keys stay in memory up to
    PARTITION_DOCS of them; beyond, they go to PARTITIONS files in `scratch` by hash, each
    then deduplicated on its own.
    """

    def __init__(self, scratch: Path) -> None:
        self.scratch, self.rows, self.buffered, self.spilled = scratch, [], 0, False
        self.paths = [scratch / f"dedup-{p:03d}.bin" for p in range(PARTITIONS)]
        self.doc_base = self.unit_base = 0
        self.bases = [0]

    def add(self, table: pa.Table, rows: np.ndarray, unit: int) -> None:
        keys = dedup_keys(table)
        live = np.flatnonzero(keys[:, 0] | keys[:, 1])
        spill = np.empty(len(live), _SPILL)
        spill["hi"], spill["lo"] = keys[live, 0], keys[live, 1]
        spill["doc"] = self.doc_base + live
        spill["record"] = ((self.unit_base + unit) << 32) | rows["record"][live].astype(np.int64)
        spill["length"] = rows["length"][live]
        self.doc_base += len(rows)
        self.rows.append(spill)
        self.buffered += len(spill)
        if self.buffered > PARTITION_DOCS:
            self._spill()

    def next_source(self, docs: int, units: int, scanned: bool = True) -> None:
        """Close a source; one whose dedup is off (`scanned=False`) still takes numbers."""
        self.doc_base += 0 if scanned else docs
        self.unit_base += units
        self.bases.append(self.doc_base)

    def _spill(self) -> None:
        if not self.spilled:
            for path in self.paths:
                path.unlink(missing_ok=True)
            self.spilled = True
        rows = np.concatenate(self.rows) if self.rows else np.zeros(0, _SPILL)
        self.rows, self.buffered = [], 0
        part = ((rows["hi"] >> np.uint64(32)) * np.uint64(PARTITIONS)) >> np.uint64(32)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(PARTITIONS + 1))
        for p, path in enumerate(self.paths):
            if bounds[p + 1] > bounds[p]:
                with open(path, "ab") as fh:
                    rows[order[bounds[p]:bounds[p + 1]]].tofile(fh)

    def _partitions(self) -> Iterator[np.ndarray]:
        if not self.spilled:
            yield np.concatenate(self.rows) if self.rows else np.zeros(0, _SPILL)
            return
        self._spill()
        for path in self.paths:
            yield np.fromfile(path, _SPILL) if path.exists() else np.zeros(0, _SPILL)
            path.unlink(missing_ok=True)

    def duplicates(self) -> list[tuple[np.ndarray, int]]:
        """Per source: sorted indices of its duplicate documents, and their tokens."""
        found = [_repeats(rows) for rows in self._partitions()]
        docs = np.concatenate([d for d, _ in found])
        lengths = np.concatenate([n for _, n in found])
        order = np.argsort(docs, kind="stable")
        docs, lengths = docs[order], lengths[order]
        out = []
        for lo, hi in itertools.pairwise(self.bases):
            a, b = np.searchsorted(docs, [lo, hi])
            out.append((docs[a:b] - lo, int(lengths[a:b].sum())))
        return out


def _repeats(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(document, length) of the rows of one partition that repeat the key of an earlier
    record."""
    hi, lo = rows["hi"].copy(), rows["lo"].copy()
    order = np.argsort(hi, kind="stable")  # rows arrive in document order
    hi, lo = hi[order], lo[order]
    same = hi[1:] == hi[:-1]
    if (same & (lo[1:] != lo[:-1])).any():  # a 64-bit prefix collision: sort on both halves
        order = np.lexsort((rows["doc"], rows["lo"], rows["hi"]))
        hi, lo = rows["hi"][order], rows["lo"][order]
        same = hi[1:] == hi[:-1]
    new_key = np.r_[True, ~(same & (lo[1:] == lo[:-1]))]
    first = np.maximum.accumulate(np.where(new_key, np.arange(len(hi)), 0))
    record = rows["record"][order]
    repeat = order[record != record[first]]
    return rows["doc"][repeat], rows["length"][repeat]


REASONS = ("duplicate", "sequence_budget", "budget", "single_pass")


def record_accounts(table: UnitTable, written: np.ndarray, scheduled: np.ndarray,
                    cut: np.ndarray, has_budget: bool) -> tuple[int, dict[str, int], int]:
    """(records written, records unused by reason, records unaccounted for).

    `written` / `scheduled`: bits (little-endian, `np.packbits`) over the source's documents,
    set for each one in a written sequence / in a scheduled chunk; `cut`: sorted indices of
    documents scheduled but dropped by a sequences budget. A record is written when any of its
    documents is; otherwise it is a `duplicate` (all its documents were), else
    `sequence_budget` (one was cut), else `budget` / `single_pass` (the schedule stopped
    before reaching it, with / without a stage budget). A record scheduled but neither
    written nor cut fits no reason: it is unaccounted for.
    """
    counts = dict.fromkeys(REASONS, 0)
    total = unaccounted = 0
    stopped = "budget" if has_budget else "single_pass"
    for start, rows in table.source.walk():
        docs = np.arange(start, start + len(rows))
        unit, _ = table.locate(docs)
        first = np.r_[True, (rows["record"][1:] != rows["record"][:-1]) | (unit[1:] != unit[:-1])]
        starts = np.flatnonzero(first)

        def any_doc(bits_of: np.ndarray, starts=starts, start=start, rows=rows) -> np.ndarray:
            bits = np.unpackbits(bits_of[start // 8:(start + len(rows) + 7) // 8],
                                 bitorder="little")
            return np.logical_or.reduceat(bits[:len(rows)].astype(bool), starts)

        was_written = any_doc(written)
        duplicate = np.logical_and.reduceat(member(docs, table.duplicates), starts) & ~was_written
        was_cut = np.logical_or.reduceat(member(docs, cut), starts) & ~was_written & ~duplicate
        left = ~was_written & ~duplicate & ~was_cut
        lost = left & any_doc(scheduled)
        total += int(was_written.sum())
        counts["duplicate"] += int(duplicate.sum())
        counts["sequence_budget"] += int(was_cut.sum())
        counts[stopped] += int((left & ~lost).sum())
        unaccounted += int(lost.sum())
    return total, {k: v for k, v in counts.items() if v}, unaccounted

