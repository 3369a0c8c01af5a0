"""`hf`: any dataset `datasets.load_dataset` can open (Hub name, local folder, or a builder such
as `parquet` / `json` / `webdataset` with `data_files`), read as one of the file formats.

Rows are streamed (`streaming: true`, the default), renamed per `columns` (dataset column ->
the field name the format expects), and handed to the `as_format` adapter's own
`record_sample(record, sample_id, locator)`, so a row read from the Hub becomes exactly the
Sample the same row would give from a local file. Image columns are read undecoded (HF's
`{bytes, path}`), never as PIL images.

Units are the dataset's shards (`IterableDataset.num_shards`): `<uri>#shard=i`. Ids are
`<split>-<shard>-<row>`, row counted within the shard.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from ..errors import MixdataError, Reject
from ..sample import Sample
from .base import Source
from .registry import FORMATS, adapter_class

_SHARD = "#shard="


def undecoded(feature):
    """`feature` with every `Image` (at any depth) set to `decode=False`, so rows carry the
    encoded bytes instead of PIL images."""
    from datasets import Image, LargeList, List, Sequence

    if isinstance(feature, Image):
        return Image(decode=False)
    if isinstance(feature, dict):
        return type(feature)({k: undecoded(v) for k, v in feature.items()})
    if isinstance(feature, list):
        return [undecoded(v) for v in feature]
    if isinstance(feature, (List, LargeList, Sequence)):
        return dataclasses.replace(feature, feature=undecoded(feature.feature))
    return feature


def as_record(row: dict, columns: dict[str, str]) -> dict:
    """A dataset row as the format's record: columns renamed, and a top-level image column's
    `{bytes, path}` reduced to its bytes, as the same image is a plain member in a file."""
    return {columns.get(name, name): _image_bytes(value) for name, value in row.items()}


def _image_bytes(value):
    if isinstance(value, dict) and set(value) == {"bytes", "path"} and value["bytes"] is not None:
        return value["bytes"]
    return value


class HfSource(Source):
    """Reads `datasets.load_dataset(uri, name, split=, data_files=, streaming=)` rows."""

    def __init__(self, spec) -> None:
        super().__init__(spec)
        fmt = self.options.as_format
        inner = dataclasses.replace(spec, format=fmt, options=FORMATS[fmt].options())
        self.inner = adapter_class(fmt)(inner)  # constructors do no I/O
        if not callable(getattr(self.inner, "record_sample", None)):
            raise MixdataError(f"source {self.name!r}: format {fmt!r} has no record-level "
                               "reader (record_sample), so it cannot be read through hf")

    def _dataset(self):
        import datasets

        opts = self.options
        dataset = datasets.load_dataset(self.spec.uri, opts.name, split=opts.split,
                                        data_files=opts.data_files, streaming=opts.streaming)
        if not opts.streaming:
            dataset = dataset.to_iterable_dataset(num_shards=1)
        if dataset.features is not None:
            dataset = dataset.cast(datasets.Features(undecoded(dict(dataset.features))))
        return dataset

    def units(self) -> list[str]:
        return [f"{self._where()}{_SHARD}{i}" for i in range(self._dataset().num_shards)]

    def read(self, unit: str) -> Iterator[Sample | Reject]:
        shard = int(unit.rsplit(_SHARD, 1)[1])
        dataset = self._dataset()
        rows = dataset.shard(num_shards=dataset.num_shards, index=shard)
        split, columns = self.options.split, self.options.columns
        for row, record in enumerate(rows):
            locator = f"{unit},row={row}"
            sample_id = f"{split}-{shard}-{row}"
            # the inner adapter carries this source's name, so its Samples and Rejects do too
            yield self.inner.guard(locator, lambda: self.inner.record_sample(
                as_record(record, columns), sample_id, locator))

    def _where(self) -> str:
        opts = self.options
        name = f"/{opts.name}" if opts.name else ""
        return f"hf:{self.spec.uri}{name}[{opts.split}]"

    @property
    def retries(self) -> int:
        return self.inner.retries
