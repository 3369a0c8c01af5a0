"""Helpers shared by the record-oriented adapters (interleaved, caption, ...).

- `RecordSource`: a `Source` with image resolution that turns a miss into the reject reason
  `image_missing`, and `guard` that turns `RecordRejected` into a `Reject`;
  `TarRecordSource` reads tars sample by sample through `tario`.
- Parquet read one row group at a time, with row groups as units (`path#rg=3`) and row
  numbers counted from the start of the file, so ids do not depend on how units are split.
- JSON-lines read line by line from plain or compressed text.
- `score_fields`: the numeric quality/safety columns a source already has.
"""
from __future__ import annotations

import json
import math
import posixpath
import re
import zlib
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import RecordRejected, Reject, UnitDamaged
from ..sample import ImagePart, Sample
from ..storage import RetryCounter, StorageError, expand, open_binary, open_text
from .base import Source
from .registry import FORMATS
from .resolve import resolve_image
from .tario import iter_tar_groups

_RG = "#rg="
_EXTENSIONS = re.compile(r"(\.(tar|parquet|jsonl|json|tsv|csv|txt|gz|zst))+$")
# Columns that hold a model's judgement of a record: LAION's punsafe/pwatermark/similarity,
# DataComp's clip_*_similarity_score, OmniCorpus' *_prob, aesthetic scores.
_SCORE_NAME = re.compile(r"^(punsafe|pwatermark|similarity|matched_sim|aesthetic.*|.*_prob|"
                         r".*similarity.*|.*_score)$", re.IGNORECASE)


class RecordSource(Source):
    """Base of adapters that map one input record to one Sample."""

    def __init__(self, spec) -> None:
        super().__init__(spec)
        self.image_key = getattr(self.options, "image_key", None) or \
            FORMATS[spec.format].image_key or "name"

    def guard(self, locator: str, build: Callable[[], Sample]) -> Sample | Reject:
        """`build()`'s Sample, or a Reject carrying the reason it raised."""
        try:
            return build()
        except RecordRejected as err:
            return self.reject(locator, err.reason, err.message)

    def loader(self, folder: str) -> Callable[[object, dict], ImagePart | None]:
        """`load_image` bound to the folder relative references resolve against.

        With the option `missing_images: drop`, a missing image gives None instead of a reject.
        """
        drop = getattr(self.options, "missing_images", "reject") == "drop"

        def load(refs, meta: dict) -> ImagePart | None:
            try:
                return self.load_image(refs, folder, meta)
            except RecordRejected as err:
                if drop and err.reason == "image_missing":
                    return None
                raise
        return load

    def load_image(self, refs: str | list[str], base_dir: str, meta: dict) -> ImagePart:
        """Resolve the first reference that exists (mirror, path or URL) into image bytes.

        Raises RecordRejected `image_missing` when none resolves, `image_unreachable` when a
        remote one kept failing after its retries. `meta` keeps only set values.
        """
        errors, reason = [], "image_missing"
        for ref in [refs] if isinstance(refs, str) else refs:
            try:
                data = resolve_image(ref, self.options, base_dir, self.counter, self.image_key)
            except FileNotFoundError as err:
                errors.append(str(err))
                continue
            except StorageError as err:
                errors.append(str(err))
                reason = "image_unreachable"
                continue
            return ImagePart(data=data, meta={k: v for k, v in meta.items() if v is not None})
        raise RecordRejected(reason, "; ".join(errors) or "no image reference")


class TarRecordSource(RecordSource):
    """Adapters whose records are WebDataset samples: units are tars, one sample per key."""

    def units(self) -> list[str]:
        return expand(self.spec.uri)

    def read(self, unit: str) -> Iterator[Sample | Reject]:
        stem = file_stem(unit)
        for key, members, locator in iter_tar_groups(unit, self.counter):
            if isinstance(members, RecordRejected):
                yield self.reject(locator, members.reason, members.message)
                continue
            yield self.guard(locator, lambda: self.record_sample(members, f"{stem}-{key}", locator))

    @abstractmethod
    def record_sample(self, members: dict[str, bytes], sample_id: str, locator: str) -> Sample:
        """One tar sample (`{ext: bytes}`) -> Sample, or RecordRejected."""


def base_dir(url: str) -> str:
    return posixpath.dirname(url.split(_RG, 1)[0])


def file_stem(url: str) -> str:
    """`.../train-00001.jsonl.gz#rg=2` -> `train-00001`: the prefix of a stable sample id."""
    return _EXTENSIONS.sub("", posixpath.basename(url.split(_RG, 1)[0]))


def parse_json(value, field: str):
    """A JSON string (or an already-decoded value) -> Python; RecordRejected `bad_json`."""
    if not isinstance(value, (str, bytes)):
        return value
    try:
        return json.loads(value)
    except ValueError as err:
        raise RecordRejected("bad_json", f"{field}: {err}") from None


def own_id(record: dict, field: str, fallback: str) -> str:
    """The record's own id (`record[field]` as a string) when it has a usable one, else
    `fallback` (the position-based id)."""
    value = record.get(field)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        return fallback
    return str(value)


def require(record: dict, field: str):
    """`record[field]`, or RecordRejected `missing_field` when absent or null."""
    value = record.get(field)
    if value is None:
        raise RecordRejected("missing_field", f"no {field!r}")
    return value


def score_fields(record: dict) -> dict[str, float]:
    """The finite numeric score columns of `record` (see `_SCORE_NAME`)."""
    out = {}
    for name, value in record.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and _SCORE_NAME.match(name) and math.isfinite(value):
            out[name] = float(value)
    return out


def parquet_units(paths: list[str], counter: RetryCounter | None = None) -> list[str]:
    """One unit per row group: `path#rg=i` (reads only each file's footer). A file whose footer
    cannot be read is one unit of its own (the bare path), which then fails as a damaged unit
    when it is read, so one bad file never stops the listing."""
    units = []
    for path in paths:
        try:
            with open_binary(path, counter) as fh:
                groups = pq.ParquetFile(fh).num_row_groups
        except (StorageError, OSError, ValueError, pa.ArrowException):
            units.append(path)
            continue
        units.extend(f"{path}{_RG}{i}" for i in range(groups))
    return units


def parquet_rows(unit: str, counter: RetryCounter | None = None,
                 columns: list[str] | None = None) -> Iterator[tuple[int, dict]]:
    """`(row number within the file, row dict)` for one row-group unit (`path#rg=N`) or, given
    a plain path, the whole file; streamed one batch at a time.

    `columns` missing from the file are left out, so the adapter can reject per row. A file
    that is empty, not parquet, or breaks while being read raises UnitDamaged after the rows
    before the damage.
    """
    path, group = unit.rsplit(_RG, 1) if _RG in unit else (unit, None)
    row = 0
    with open_binary(path, counter) as fh:
        if not fh.peek(1):
            raise UnitDamaged("unit_empty", unit, "the file is empty (0 bytes)")
        try:
            parquet = pq.ParquetFile(fh)
            groups = None if group is None else [int(group)]
            row = 0 if group is None else \
                sum(parquet.metadata.row_group(i).num_rows for i in range(int(group)))
            present = None if columns is None else \
                [c for c in columns if c in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=256, row_groups=groups,
                                              columns=present):
                for record in batch.to_pylist():
                    yield row, record
                    row += 1
        except StorageError:
            raise
        except (OSError, ValueError, pa.ArrowException) as err:
            raise UnitDamaged("unit_unreadable", unit, f"not a readable parquet file "
                              f"({type(err).__name__}: {err})", where=f"row {row}") from err


@contextmanager
def stream_damage(url: str, where: Callable[[], str]):
    """Turn the errors of a plain or compressed stream that breaks while being read into
    UnitDamaged (`where()` says how far reading got): EOFError is a stream cut short, the
    rest (bad gzip/zstd data, undecodable bytes) an unreadable one."""
    try:
        yield
    except StorageError:
        raise
    except EOFError as err:
        raise UnitDamaged("unit_truncated", url, f"the compressed stream ends early ({err})",
                          where=where()) from err
    except (OSError, zlib.error, ValueError) as err:
        raise UnitDamaged("unit_unreadable", url, f"{type(err).__name__}: {err}",
                          where=where()) from err


def open_unit_text(url: str, counter: RetryCounter | None = None):
    """`open_text(url)`; a zero-byte file raises UnitDamaged `unit_empty`."""
    fh = open_text(url, counter)
    with stream_damage(url, lambda: "byte 0"):
        empty = not fh.buffer.peek(1)
    if empty:
        fh.close()
        raise UnitDamaged("unit_empty", url, "the file is empty (0 bytes)")
    return fh


def text_lines(url: str, counter: RetryCounter | None = None) -> Iterator[tuple[int, str]]:
    """`(1-based line number, line)` of each non-blank line of a plain or compressed text file.

    A zero-byte file, or a compressed stream that is corrupt or cut short, raises UnitDamaged
    naming the line where reading stopped, after the lines before it.
    """
    number = 0
    with open_unit_text(url, counter) as fh, \
            stream_damage(url, lambda: f"after line {number}"):
        for number, line in enumerate(fh, 1):
            if line.strip():
                yield number, line


def jsonl_records(url: str, counter: RetryCounter | None = None
                  ) -> Iterator[tuple[int, dict | RecordRejected]]:
    """`(1-based line number, object or RecordRejected)` for each non-blank line."""
    for number, line in text_lines(url, counter):
        try:
            value = json.loads(line)
        except ValueError as err:
            yield number, RecordRejected("bad_json", str(err))
            continue
        if not isinstance(value, dict):
            yield number, RecordRejected("bad_json",
                                         f"expected an object, got {type(value).__name__}")
            continue
        yield number, value
