"""Cleaning and quality filtering of what an adapter yields, and exact dedup.

`read_clean(source, unit)` wraps `source.read(unit)`: every text part goes through
`text.clean_text`, then the source's recipe `filters:` are checked. A failing check turns the
Sample into a Reject with reason `filter:<name>` (e.g. `filter:min_words`), so every record
read still yields exactly one Sample or one Reject. `check_filters` is the pure core. A source
with a `prompt` yields its samples as conversations (`prompting.as_conversation`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from collections.abc import Iterator
from io import BytesIO

from PIL import Image

from ..errors import RecordRejected, Reject, UnitDamaged
from ..sample import ImagePart, Sample, TextPart
from ..storage import StorageError
from ..text import (
    char_repetition,
    clean_text,
    dedup_text,
    special_char_ratio,
    stopword_ratio,
    word_count,
    word_repetition,
)
from .options import Filters
from .prompting import as_conversation

# filter name -> (measure, is the limit a maximum?)
_TEXT_LIMITS = {
    "max_char_repetition": (char_repetition, True),
    "max_word_repetition": (word_repetition, True),
    "max_special_ratio": (special_char_ratio, True),
    "min_stopword_ratio": (stopword_ratio, False),
}


def clean_sample(sample: Sample) -> Sample:
    """`sample` with every text part cleaned; role-less text parts left empty are dropped.

    Raises RecordRejected `no_content` when nothing is left, or a caption loses its text.
    """
    parts = []
    for part in sample.parts:
        if isinstance(part, TextPart):
            part = dataclasses.replace(part, text=clean_text(part.text))
            if not part.text and part.role is None:
                continue  # SFT turns keep their place even when empty: roles carry structure
        parts.append(part)
    if not parts or (sample.kind == "caption" and not any(isinstance(p, TextPart) for p in parts)):
        raise RecordRejected("no_content", "no text left after cleaning")
    return dataclasses.replace(sample, parts=tuple(parts))


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header only; RecordRejected when it cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError as err:
        raise RecordRejected("image_bomb", str(err)) from None
    except Exception as err:  # noqa: BLE001 - PIL raises UnidentifiedImageError, OSError, ...
        raise RecordRejected("image_format", f"unreadable image header ({err})") from None


def check_text(text: str, filters: Filters) -> tuple[str, str] | None:
    """The first text filter `text` fails, as (filter name, message), or None."""
    if filters.min_words is not None or filters.max_words is not None:
        count = word_count(text)
        if filters.min_words is not None and count < filters.min_words:
            return "min_words", f"{count} words < {filters.min_words}"
        if filters.max_words is not None and count > filters.max_words:
            return "max_words", f"{count} words > {filters.max_words}"
    for name, (measure, is_max) in _TEXT_LIMITS.items():
        limit = getattr(filters, name)
        if limit is None:
            continue
        value = measure(text)
        if (value > limit) if is_max else (value < limit):
            return name, f"{value:.3f} {'>' if is_max else '<'} {limit}"
    return None


def check_image_count(images: list[ImagePart], filters: Filters) -> tuple[str, str] | None:
    if filters.min_images is not None and len(images) < filters.min_images:
        return "min_images", f"{len(images)} images < {filters.min_images}"
    if filters.max_images is not None and len(images) > filters.max_images:
        return "max_images", f"{len(images)} images > {filters.max_images}"
    return None


def check_image_sizes(images: list[ImagePart], filters: Filters) -> tuple[str, str] | None:
    """The first image whose side or aspect ratio is out of bounds (header-only sizes)."""
    if filters.min_image_side is None and filters.max_image_side is None \
            and filters.max_image_aspect is None:
        return None
    for index, image in enumerate(images):
        if image.data is None:
            continue  # unresolved references are sized by the image step
        width, height = image_size(image.data)
        short, long = min(width, height), max(width, height)
        if filters.min_image_side is not None and short < filters.min_image_side:
            return "min_image_side", f"image {index} is {width}x{height}"
        if filters.max_image_side is not None and long > filters.max_image_side:
            return "max_image_side", f"image {index} is {width}x{height}"
        if filters.max_image_aspect is not None and long > filters.max_image_aspect * max(short, 1):
            return "max_image_aspect", f"image {index} is {width}x{height}"
    return None


def check_scores(scores: dict, filters: Filters) -> tuple[str, str] | None:
    """Score ranges: a value may be one number or a list (one per image; all must pass).

    A configured score the record does not have fails, so a threshold never passes unchecked.
    """
    for name, allowed in sorted(filters.scores.items()):
        value = scores.get(name)
        values = value if isinstance(value, list) else [value]
        if value is None or any(not isinstance(v, (int, float)) or math.isnan(v) for v in values):
            return f"score:{name}", f"{name} is missing"
        for v in values:
            if (allowed.min is not None and v < allowed.min) or \
                    (allowed.max is not None and v > allowed.max):
                return f"score:{name}", f"{name}={v} outside [{allowed.min}, {allowed.max}]"
    return None


def check_filters(sample: Sample, filters: Filters) -> tuple[str, str] | None:
    """The first filter `sample` fails, as (name, message); None when it passes all.

    Cheap checks run first: image count, scores, text, then image headers.
    """
    images = sample.images
    return (check_image_count(images, filters)
            or check_scores(sample.meta.get("scores") or {}, filters)
            or check_text(sample.text(), filters)
            or check_image_sizes(images, filters))


def read_unit(source, unit: str) -> Iterator[Sample | Reject]:
    """`source.read(unit)`, with damage to the unit as its last item: a Reject whose locator
    names the unit and where reading stopped (`unit_truncated`, `unit_unreachable`, ...)."""
    try:
        yield from source.read(unit)
    except UnitDamaged as err:
        yield source.reject(err.locator, err.reason, err.message)
    except StorageError as err:
        yield source.reject(unit, "unit_unreachable", str(err))


def read_clean(source, unit: str) -> Iterator[Sample | Reject]:
    """`read_unit(source, unit)` with text cleaned and the source's filters applied, then
    turned into a conversation where the source has a `prompt`."""
    filters, prompt = source.spec.filters, source.spec.prompt
    for item in read_unit(source, unit):
        if isinstance(item, Reject):
            yield item
            continue
        locator = item.meta.get("locator", f"{unit}#{item.id}")
        try:
            sample = clean_sample(item)
            failed = check_filters(sample, filters)
            if prompt is not None and not failed:
                sample = as_conversation(sample, prompt)
        except RecordRejected as err:
            yield source.reject(locator, err.reason, err.message)
            continue
        if failed:
            yield source.reject(locator, f"filter:{failed[0]}", failed[1])
        else:
            yield sample


def dedup_key(sample: Sample) -> str:
    """sha1 over the sample's normalised text parts and image bytes, in order.

    Text is length-prefixed so moving a part boundary always changes the key.
    """
    digest = hashlib.sha1()
    for part in sample.parts:
        if isinstance(part, TextPart):
            text = dedup_text(part.text).encode()
            digest.update(b"T%d:" % len(text) + text)
        elif part.data is not None:
            digest.update(b"I" + hashlib.sha1(part.data).digest())
        else:
            digest.update(b"R" + part.ref.encode())
    return digest.hexdigest()
