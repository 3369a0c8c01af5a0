"""Adapters by format name. Modules are imported lazily so validating a recipe stays cheap."""
from __future__ import annotations

import importlib

from .base import Source

# format -> "module:Class"
ADAPTERS: dict[str, str] = {
    "obelics": "mixdata.sources.interleaved:ObelicsSource",
    "omnicorpus": "mixdata.sources.interleaved:ObelicsSource",
    "mmc4": "mixdata.sources.interleaved:Mmc4Source",
    "wds-interleaved": "mixdata.sources.interleaved:WdsInterleavedSource",
    "img2dataset": "mixdata.sources.caption:Img2DatasetSource",
    "cc3m-tsv": "mixdata.sources.caption:TsvCaptionSource",
    "cc12m-tsv": "mixdata.sources.caption:TsvCaptionSource",
    "laion-parquet": "mixdata.sources.caption:UrlParquetSource",
    "datacomp-parquet": "mixdata.sources.caption:UrlParquetSource",
    "pdfa-wds": "mixdata.sources.pdf:PdfWdsSource",
    "idl-wds": "mixdata.sources.pdf:PdfWdsSource",
    "pdf": "mixdata.sources.pdf:RawPdfSource",
    "renderedtext": "mixdata.sources.pdf:RenderedTextSource",
    "parquet-text": "mixdata.sources.plaintext:ParquetTextSource",
    "jsonl-text": "mixdata.sources.plaintext:JsonlTextSource",
    "cauldron": "mixdata.sources.sft:CauldronSource",
    "llava": "mixdata.sources.sft:LlavaSource",
    "chat-messages": "mixdata.sources.sft:ChatMessagesSource",
    "hf": "mixdata.sources.hf:HfSource",
}


def adapter_class(fmt: str) -> type[Source]:
    if fmt not in ADAPTERS:
        raise KeyError(f"no adapter for format {fmt!r}; known: {', '.join(sorted(ADAPTERS))}")
    module, cls = ADAPTERS[fmt].split(":")
    return getattr(importlib.import_module(module), cls)


def open_source(spec) -> Source:
    """The adapter for a recipe `SourceSpec` (no I/O happens here)."""
    return adapter_class(spec.format)(spec)
