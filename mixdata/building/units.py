"""The plan's view of prepared units: a few fixed-width columns read by memory map.

A prepared unit (`prepare.py`) is an Arrow IPC file with one row per document. The plan
touches only `length`, `n_images`, `n_views`, `record` and `dedup` (16 bytes, zeros when
dedup is off), through a memory map, so the token ids and image bytes of the file are never
read. A source's documents are numbered in unit order, then row order.

- `UnitTable`: one source as a `mix.DocTable` (ranges of columns), duplicates left out.
- `find_duplicates`: exact dedup across the stage, first record wins (source order, then
  unit and row); keys are spilled to disk in hash partitions, so memory stays bounded.
- `record_accounts`: which prepared records were written, and why the others were not.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

PARTITION_DOCS = 1 << 20   # dedup keys held in memory at once (32 bytes each)
MAX_PARTITIONS = 256
_SPILL = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("doc", "<i8"), ("record", "<i8"),
                   ("length", "<i8")])


def open_unit(path: str) -> pa.Table:
    """The memory-mapped table of a prepared unit (`path` without `.arrow`)."""
    with pa.memory_map(path + ".arrow") as source:
        return ipc.open_file(source).read_all()


def column(table: pa.Table, name: str, dtype=np.int64) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(), dtype)


def dedup_keys(table: pa.Table) -> np.ndarray:
    """The `dedup` column as uint64 pairs [rows, 2] (zeros: the document takes no part)."""
    array = table.column("dedup").combine_chunks()
    if not pa.types.is_fixed_size_binary(array.type) or array.type.byte_width != 16:
        raise ValueError(f"dedup column has type {array.type}; expected fixed_size_binary(16) "
                         "(prepared by an older mixdata: delete the .prepare cache)")
    data = array.buffers()[1]
    keys = np.frombuffer(data, "<u8", count=2 * len(array), offset=16 * array.offset)
    return keys.reshape(-1, 2)


class UnitTable:
    """One source's prepared units as a `mix.DocTable`: columns length, images, views and
    cost (`length`, or 1 per document when weighting by samples); duplicates are not kept."""

    def __init__(self, paths: list[str], sizes: list[int], lengths: list[int],
                 duplicates: np.ndarray, dup_tokens: int, weight_by: str) -> None:
        self.paths, self.weight_by = paths, weight_by
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.size = int(self.offsets[-1])
        self.duplicates = duplicates
        self.kept = self.size - len(duplicates)
        self.kept_tokens = int(sum(lengths)) - dup_tokens
        self.kept_cost = float(self.kept_tokens if weight_by == "tokens" else self.kept)
        self._open: OrderedDict[int, pa.Table] = OrderedDict()

    def _table(self, unit: int) -> pa.Table:
        if unit not in self._open:
            if len(self._open) >= 16:
                self._open.popitem(last=False)
            self._open[unit] = open_unit(self.paths[unit])
        self._open.move_to_end(unit)
        return self._open[unit]

    def locate(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(unit index, row) of document indices."""
        unit = np.searchsorted(self.offsets, docs, side="right") - 1
        return unit, docs - self.offsets[unit]

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        parts = []
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        for unit in range(first, len(self.paths)):
            lo, hi = self.offsets[unit], self.offsets[unit + 1]
            if lo >= stop:
                break
            a, b = max(start, lo) - lo, min(stop, hi) - lo
            part = self._table(unit).slice(a, b - a)
            parts.append([column(part, k, np.int32) for k in ("length", "n_images", "n_views")])
        length, images, views = (np.concatenate(c) for c in zip(*parts))
        docs = np.arange(start, stop)
        keep = ~_member(docs, self.duplicates)
        cost = length if self.weight_by == "tokens" else np.ones(len(length), np.int32)
        return {"cost": cost, "keep": keep, "length": length, "images": images,
                "views": views}


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if not len(sorted_set):
        return np.zeros(len(values), bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values


def scan(paths: list[str]) -> tuple[list[int], list[int]]:
    """(documents, tokens) of each unit."""
    sizes, lengths = [], []
    for path in paths:
        length = column(open_unit(path), "length")
        sizes.append(len(length))
        lengths.append(int(length.sum()))
    return sizes, lengths


def find_duplicates(sources: list[list[str]], sizes: list[list[int]], scratch: Path
                    ) -> list[tuple[np.ndarray, int]]:
    """Per source (in order): the sorted indices of its duplicate documents and their tokens.

    `sources[k]` lists the unit paths of source k, or is empty when its dedup is off. A
    document is a duplicate when an earlier record (source order, then unit, row) has the
    same key; every document of the first record with a key is kept.
    """
    bases = np.concatenate([[0], np.cumsum([sum(s) for s in sizes])]).astype(np.int64)
    total = sum(sum(s) for paths, s in zip(sources, sizes) if paths)
    parts = int(min(MAX_PARTITIONS, max(1, -(-total // PARTITION_DOCS))))
    spill = _Spill(scratch, parts)
    unit_base = 0
    for k, paths in enumerate(sources):
        doc_base = int(bases[k])
        for u, path in enumerate(paths):
            spill.add(_key_rows(open_unit(path), doc_base, (unit_base + u) << 32))
            doc_base += sizes[k][u]
        unit_base += len(sizes[k])
    found = np.concatenate([_partition_duplicates(rows) for rows in spill.partitions()])
    found.sort(order="doc")
    docs, lengths = found["doc"], found["length"]
    out = []
    for k in range(len(sources)):
        lo, hi = np.searchsorted(docs, [bases[k], bases[k + 1]])
        out.append((docs[lo:hi] - bases[k], int(lengths[lo:hi].sum())))
    return out


def _key_rows(table: pa.Table, doc_base: int, unit_tag: int) -> np.ndarray:
    keys = dedup_keys(table)
    live = np.flatnonzero(keys.any(axis=1))
    rows = np.empty(len(live), _SPILL)
    rows["hi"], rows["lo"] = keys[live, 0], keys[live, 1]
    rows["doc"] = doc_base + live
    rows["record"] = unit_tag | column(table, "record")[live]
    rows["length"] = column(table, "length")[live]
    return rows


def _partition_duplicates(rows: np.ndarray) -> np.ndarray:
    """The rows of one partition that repeat the key of an earlier record."""
    order = np.lexsort((rows["doc"], rows["lo"], rows["hi"]))
    rows = rows[order]
    new_key = np.ones(len(rows), bool)
    new_key[1:] = (rows["hi"][1:] != rows["hi"][:-1]) | (rows["lo"][1:] != rows["lo"][:-1])
    first = np.maximum.accumulate(np.where(new_key, np.arange(len(rows)), 0))
    return rows[rows["record"] != rows["record"][first]]


class _Spill:
    """Rows split by key hash into partitions: in memory when there is one, else in files."""

    def __init__(self, scratch: Path, parts: int) -> None:
        self.parts, self.rows = parts, []
        self.paths = [scratch / f"dedup-{p:03d}.bin" for p in range(parts)] if parts > 1 else []
        if self.paths:
            scratch.mkdir(parents=True, exist_ok=True)
            for path in self.paths:
                path.unlink(missing_ok=True)

    def add(self, rows: np.ndarray) -> None:
        if not self.paths:
            self.rows.append(rows)
            return
        part = ((rows["hi"] >> np.uint64(32)) * np.uint64(self.parts)) >> np.uint64(32)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(self.parts + 1))
        for p, path in enumerate(self.paths):
            if bounds[p + 1] > bounds[p]:
                with open(path, "ab") as fh:
                    rows[order[bounds[p]:bounds[p + 1]]].tofile(fh)

    def partitions(self) -> Iterator[np.ndarray]:
        if not self.paths:
            yield np.concatenate(self.rows) if self.rows else np.zeros(0, _SPILL)
            return
        for path in self.paths:
            yield np.fromfile(path, _SPILL) if path.exists() else np.zeros(0, _SPILL)
            path.unlink(missing_ok=True)


REASONS = ("duplicate", "sequence_budget", "budget")


def record_accounts(table: UnitTable, written: np.ndarray, cut: np.ndarray
                    ) -> tuple[int, dict[str, int], tuple[np.ndarray, np.ndarray]]:
    """(records written, records unused by reason, (unit, record) of duplicate records).

    `written`: bits (little-endian, `np.packbits`) over the source's documents, set for each
    one in a written sequence; `cut`: sorted indices of documents scheduled but dropped by a
    sequences budget. A record is written when any of its documents is; otherwise it is a
    `duplicate` (all its documents were), else `sequence_budget` (one was cut), else
    `budget` (the schedule stopped before reaching it).
    """
    counts = dict.fromkeys(REASONS, 0)
    written_records, dup_units, dup_records = 0, [], []
    for unit, path in enumerate(table.paths):
        lo, hi = int(table.offsets[unit]), int(table.offsets[unit + 1])
        if lo == hi:
            continue
        records = column(open_unit(path), "record")
        bits = np.unpackbits(written[lo // 8:(hi + 7) // 8], bitorder="little")
        docs = np.arange(lo, hi)
        starts = np.flatnonzero(np.r_[True, records[1:] != records[:-1]])
        was_written = np.logical_or.reduceat(bits[lo % 8:lo % 8 + hi - lo].astype(bool), starts)
        duplicate = np.logical_and.reduceat(_member(docs, table.duplicates), starts)
        was_cut = np.logical_or.reduceat(_member(docs, cut), starts)
        written_records += int(was_written.sum())
        duplicate &= ~was_written
        was_cut &= ~was_written & ~duplicate
        counts["duplicate"] += int(duplicate.sum())
        counts["sequence_budget"] += int(was_cut.sum())
        counts["budget"] += int((~was_written & ~duplicate & ~was_cut).sum())
        dup_units.append(np.full(int(duplicate.sum()), unit, np.int64))
        dup_records.append(records[starts][duplicate])
    dups = (np.concatenate(dup_units) if dup_units else np.zeros(0, np.int64),
            np.concatenate(dup_records) if dup_records else np.zeros(0, np.int64))
    return written_records, counts, dups
