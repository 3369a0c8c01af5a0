"""The one registry of source formats: format name -> options class, adapter, conventions.

Everything that lists formats reads `FORMATS`: the recipe parser (which options a source may
set), `open_source` (which adapter reads it), the `hf` adapter (which formats it can read
record by record) and the image resolution (the format's default `image_key`). Adapter
modules are imported only when a source of that format is opened, so validating a recipe
stays cheap.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from .base import Source
from .options import (
    CaptionOptions,
    HfOptions,
    InterleavedOptions,
    PdfOptions,
    SftOptions,
    SourceOptions,
    TextOptions,
)


@dataclass(frozen=True)
class Format:
    options: type[SourceOptions]
    adapter: str                 # "module:Class"
    image_key: str | None = None  # how its records name images under images_root, if they do
    by_record: bool = False       # offers record_sample(record, id, locator): readable via hf
    kind: str | None = None       # the Sample kind of every record, where it is one kind


FORMATS: dict[str, Format] = {
    "obelics": Format(InterleavedOptions, "mixdata.sources.interleaved:ObelicsSource", "name",
                      by_record=True),
    "omnicorpus": Format(InterleavedOptions, "mixdata.sources.interleaved:ObelicsSource", "name"),
    "mmc4": Format(InterleavedOptions, "mixdata.sources.interleaved:Mmc4Source", "name"),
    "wds-interleaved": Format(SourceOptions, "mixdata.sources.interleaved:WdsInterleavedSource"),
    "img2dataset": Format(CaptionOptions, "mixdata.sources.caption:Img2DatasetSource", "name",
                          by_record=True, kind="caption"),
    "cc3m-tsv": Format(CaptionOptions, "mixdata.sources.caption:TsvCaptionSource", "name",
                       kind="caption"),
    "cc12m-tsv": Format(CaptionOptions, "mixdata.sources.caption:TsvCaptionSource", "name",
                        kind="caption"),
    "laion-parquet": Format(CaptionOptions, "mixdata.sources.caption:UrlParquetSource", "name",
                            by_record=True, kind="caption"),
    "datacomp-parquet": Format(CaptionOptions, "mixdata.sources.caption:UrlParquetSource", "name",
                               kind="caption"),
    "pdfa-wds": Format(PdfOptions, "mixdata.sources.pdf:PdfWdsSource", kind="ocr"),
    "idl-wds": Format(PdfOptions, "mixdata.sources.pdf:PdfWdsSource", kind="ocr"),
    "pdf": Format(PdfOptions, "mixdata.sources.pdf:RawPdfSource", kind="ocr"),
    "renderedtext": Format(SourceOptions, "mixdata.sources.pdf:RenderedTextSource",
                           by_record=True, kind="ocr"),
    "parquet-text": Format(TextOptions, "mixdata.sources.plaintext:ParquetTextSource",
                           by_record=True),
    "jsonl-text": Format(TextOptions, "mixdata.sources.plaintext:JsonlTextSource"),
    "cauldron": Format(SftOptions, "mixdata.sources.sft:CauldronSource", "path", by_record=True),
    "llava": Format(SftOptions, "mixdata.sources.sft:LlavaSource", "path", by_record=True),
    "chat-messages": Format(SftOptions, "mixdata.sources.sft:ChatMessagesSource", "path",
                            by_record=True),
    "hf": Format(HfOptions, "mixdata.sources.hf:HfSource"),
}


def record_formats() -> list[str]:
    """Formats the `hf` adapter can read row by row (its `as_format`)."""
    return [name for name, fmt in FORMATS.items() if fmt.by_record]


def adapter_class(fmt: str) -> type[Source]:
    if fmt not in FORMATS:
        raise KeyError(f"no adapter for format {fmt!r}; known: {', '.join(sorted(FORMATS))}")
    module, cls = FORMATS[fmt].adapter.split(":")
    return getattr(importlib.import_module(module), cls)


def open_source(spec) -> Source:
    """The adapter for a recipe `SourceSpec` (no I/O happens here)."""
    return adapter_class(spec.format)(spec)
