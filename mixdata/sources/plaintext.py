"""Text-only sources: FineWeb-style parquet, Dolma-style jsonl(.gz/.zst), or any parquet/jsonl
with a configurable `text_field`.

One row (or line) is one record and one `text` Sample. A record's id is its own (`id_field`,
FineWeb's and Dolma's `id`), so a reject or packed document traces back to it; a record
without one is `<file stem>-<row>` (parquet: row number within the file; jsonl: 1-based line
number). The locator, not the id, is what is unique: data can repeat its own ids.
Score-like columns (FineWeb's `language_score`, ...) go to `meta["scores"]` for the filters.
"""
from __future__ import annotations

from collections.abc import Iterator

from ..errors import RecordRejected, Reject
from ..sample import Sample, TextPart
from ..storage import expand
from .records import (
    RecordSource,
    file_stem,
    jsonl_records,
    own_id,
    parquet_rows,
    parquet_units,
    require,
    score_fields,
)

_META_FIELDS = ("url", "source", "dump", "date", "language", "added", "created")


def text_of(record: dict, field: str) -> str:
    """The record's text: `missing_field` when absent or not text, `no_content` when blank."""
    value = require(record, field)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        raise RecordRejected("missing_field", f"{field!r} is a {type(value).__name__}, not text")
    if not value.strip():
        raise RecordRejected("no_content", f"{field!r} is blank")
    return value


def text_sample(record: dict, options, *, source: str, sample_id: str, locator: str) -> Sample:
    """One text record -> a `text` Sample (pure)."""
    text = text_of(record, options.text_field)
    meta = {k: record[k] for k in _META_FIELDS if isinstance(record.get(k), (str, int, float))}
    meta["scores"] = score_fields(record)
    meta["locator"] = locator
    return Sample(id=own_id(record, options.id_field, sample_id), source=source, kind="text",
                  parts=(TextPart(text=text),), meta=meta)


class _TextSource(RecordSource):
    def record_sample(self, record: dict, sample_id: str, locator: str) -> Sample:
        return text_sample(record, self.options, source=self.name, sample_id=sample_id,
                           locator=locator)


class ParquetTextSource(_TextSource):
    """`parquet-text`; units are row groups (`path#rg=N`)."""

    def units(self) -> list[str]:
        return parquet_units(expand(self.spec.uri), self.counter)

    def read(self, unit: str) -> Iterator[Sample | Reject]:
        stem, path = file_stem(unit), unit.split("#", 1)[0]
        for row, record in parquet_rows(unit, self.counter):
            locator = f"{path}#row={row}"
            yield self.guard(locator, lambda: self.record_sample(record, f"{stem}-{row}", locator))


class JsonlTextSource(_TextSource):
    """`jsonl-text` (plain, `.gz` or `.zst`); units are files."""

    def units(self) -> list[str]:
        return expand(self.spec.uri)

    def read(self, unit: str) -> Iterator[Sample | Reject]:
        stem = file_stem(unit)
        for line, record in jsonl_records(unit, self.counter):
            locator = f"{unit}#line={line}"
            if isinstance(record, RecordRejected):
                yield self.reject(locator, record.reason, record.message)
                continue
            yield self.guard(locator, lambda: self.record_sample(record, f"{stem}-{line}", locator))
