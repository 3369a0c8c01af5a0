"""Per-format options a recipe source may set, beside `format`, `uri` and `filters`.

Each format maps to one frozen dataclass (see `registry.FORMATS`); the recipe parser checks a
source's keys against it. All of them are `SourceOptions`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class SourceOptions:
    """Options of a format that has none of its own; the base of every format's options."""


@dataclass(frozen=True, kw_only=True)
class ImageResolution(SourceOptions):
    """How an adapter finds images that a record names by URL or path instead of carrying."""

    images_root: str | None = None   # local mirror folder (or fsspec URL) of the images
    # How a ref maps into images_root: its relative `path`, its file `name`, or the `sha1` of
    # the ref. None takes the format's own convention (`registry.FORMATS[...].image_key`).
    image_key: Literal["path", "name", "sha1"] | None = None
    fetch: bool = False              # fetch refs missing from the mirror through fsspec


@dataclass(frozen=True, kw_only=True)
class InterleavedOptions(ImageResolution):
    # Web documents often lose some images to dead links: "drop" keeps the document without
    # them (counted in Sample.meta["images_dropped"]) instead of rejecting it as image_missing.
    missing_images: Literal["reject", "drop"] = "reject"


@dataclass(frozen=True, kw_only=True)
class CaptionOptions(ImageResolution):
    layout: Literal["auto", "tar", "parquet", "files"] = "auto"  # img2dataset output layout
    url_field: str | None = None      # URL lists: defaults per format (URL, url, ...)
    caption_field: str | None = None  # defaults per format (TEXT, text, caption, ...)


@dataclass(frozen=True, kw_only=True)
class PdfOptions(SourceOptions):
    dpi: int = 150
    max_page_pixels: int = 25_000_000  # pages that would render larger are rejected
    page_timeout_s: float = 30.0       # pages that render slower are rejected
    max_pages: int | None = None       # per document
    keep_scans: bool = False           # raw PDFs: keep pages without a text layer, image only
    grayscale: bool = False


@dataclass(frozen=True, kw_only=True)
class TextOptions(SourceOptions):
    text_field: str = "text"
    id_field: str = "id"


@dataclass(frozen=True, kw_only=True)
class SftOptions(ImageResolution):
    pass


@dataclass(frozen=True, kw_only=True)
class HfOptions(SourceOptions):
    """`uri` is the dataset name or local path given to `datasets.load_dataset`."""

    as_format: str   # a format that reads record by record (`registry.record_formats()`)
    name: str | None = None
    split: str = "train"
    data_files: list[str] | None = None
    columns: dict[str, str] = field(default_factory=dict)  # dataset column -> format field
    streaming: bool = True


@dataclass(frozen=True, kw_only=True)
class ScoreRange:
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, kw_only=True)
class Filters:
    """Quality filters, all off by default. Each rejection is counted under its own reason."""

    min_words: int | None = None
    max_words: int | None = None
    max_char_repetition: float | None = None  # share of characters inside repeated 10-grams
    max_word_repetition: float | None = None  # share of words inside repeated word 3-grams
    max_special_ratio: float | None = None    # share of non-alphanumeric, non-space characters
    min_stopword_ratio: float | None = None   # share of words that are common English stop words
    min_image_side: int | None = None
    max_image_side: int | None = None
    max_image_aspect: float | None = None     # long side / short side
    min_images: int | None = None             # per document
    max_images: int | None = None
    scores: dict[str, ScoreRange] = field(default_factory=dict)  # column -> allowed range
    dedup: bool = False                       # exact dedup by text + image bytes, per stage
