"""Per-format options a recipe source may set, beside `format`, `uri` and `filters`.

Each format maps to one frozen dataclass; the recipe parser checks a source's keys against it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class NoOptions:
    pass


@dataclass(frozen=True, kw_only=True)
class ImageResolution:
    """How an adapter finds images that a record names by URL or path instead of carrying."""

    images_root: str | None = None   # local mirror folder (or fsspec URL) of the images
    # How a ref maps into images_root: its relative `path`, its file `name`, or the `sha1` of
    # the ref. None takes the format's own convention (DEFAULT_IMAGE_KEYS).
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
class PdfOptions:
    dpi: int = 150
    max_page_pixels: int = 25_000_000  # pages that would render larger are rejected
    page_timeout_s: float = 30.0       # pages that render slower are rejected
    max_pages: int | None = None       # per document
    keep_scans: bool = False           # raw PDFs: keep pages without a text layer, image only
    grayscale: bool = False


@dataclass(frozen=True, kw_only=True)
class TextOptions:
    text_field: str = "text"
    id_field: str = "id"


@dataclass(frozen=True, kw_only=True)
class SftOptions(ImageResolution):
    pass


@dataclass(frozen=True, kw_only=True)
class HfOptions:
    """`uri` is the dataset name or local path given to `datasets.load_dataset`."""

    as_format: Literal["obelics", "img2dataset", "laion-parquet", "parquet-text", "cauldron",
                       "llava", "chat-messages", "renderedtext"]
    name: str | None = None
    split: str = "train"
    data_files: list[str] | None = None
    columns: dict[str, str] = field(default_factory=dict)  # dataset column -> format field
    streaming: bool = True


FORMAT_OPTIONS: dict[str, type] = {
    "obelics": InterleavedOptions, "omnicorpus": InterleavedOptions, "mmc4": InterleavedOptions,
    "wds-interleaved": NoOptions,
    "img2dataset": CaptionOptions, "cc3m-tsv": CaptionOptions, "cc12m-tsv": CaptionOptions,
    "laion-parquet": CaptionOptions, "datacomp-parquet": CaptionOptions,
    "pdfa-wds": PdfOptions, "idl-wds": PdfOptions, "pdf": PdfOptions, "renderedtext": NoOptions,
    "parquet-text": TextOptions, "jsonl-text": TextOptions,
    "cauldron": SftOptions, "llava": SftOptions, "chat-messages": SftOptions,
    "hf": HfOptions,
}


# How each format's own tools find a referenced image under its image folder: LLaVA, chat
# messages and the_cauldron name images by their path relative to the image folder
# (`coco/train2017/000000391895.jpg`); MMC4 by `image_name`; URL lists and OBELICS by the URL,
# whose file name is what img2dataset-style mirrors keep.
DEFAULT_IMAGE_KEYS: dict[str, str] = {
    "llava": "path", "chat-messages": "path", "cauldron": "path",
    "obelics": "name", "omnicorpus": "name", "mmc4": "name",
    "cc3m-tsv": "name", "cc12m-tsv": "name", "laion-parquet": "name", "datacomp-parquet": "name",
    "img2dataset": "name",
}


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
    dedup: bool = False                       # exact dedup by hash of text and image bytes, per stage
