"""Interleaved web documents: OBELICS / OmniCorpus parquet, MMC4 jsonl, WebDataset m4 tars.

Each format has a pure core that turns one record into (ordered parts, sample meta), given a
`load_image` callable (reference, meta) -> ImagePart that raises RecordRejected when the image
is missing, or returns None to drop it (`missing_images: drop`); the adapter classes only
stream records and resolve images.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

from ..errors import RecordRejected, Reject
from ..sample import ImagePart, Part, Sample, TextPart
from ..storage import expand
from .records import (
    RecordSource,
    TarRecordSource,
    base_dir,
    file_stem,
    jsonl_records,
    parquet_rows,
    parquet_units,
    parse_json,
    require,
    score_fields,
)

LoadImage = Callable[[object, dict], ImagePart | None]
OBELICS_COLUMNS = ["images", "texts", "metadata", "general_metadata"]
# OBELICS keys per image (metadata dicts) -> ImagePart.meta keys; OmniCorpus says width/height.
_IMAGE_META = {"alt_text": "alt_text", "original_width": "original_width",
               "original_height": "original_height", "width": "original_width",
               "height": "original_height", "format": "format", "src": "url"}


def _image_meta(entry) -> dict:
    entry = entry if isinstance(entry, dict) else {}
    meta = {dst: entry[src] for src, dst in _IMAGE_META.items() if entry.get(src) is not None}
    meta.update(score_fields(entry))
    return meta


def _strings(record: dict, field: str) -> list:
    """`record[field]` as a list of strings or nulls; RecordRejected otherwise."""
    value = require(record, field)
    if not isinstance(value, list) or not all(v is None or isinstance(v, str) for v in value):
        raise RecordRejected("bad_field", f"{field} is not a list of strings")
    return value


def _per_image_metadata(metadata, n_positions: int, image_positions: list[int]) -> list[dict]:
    """Metadata aligned with the images: OBELICS gives one entry per position (null at text
    positions); some OmniCorpus dumps give one entry per image."""
    if metadata is None:
        return [{} for _ in image_positions]
    if not isinstance(metadata, list):
        raise RecordRejected("bad_json", f"metadata is a {type(metadata).__name__}, not a list")
    if len(metadata) == n_positions:
        return [metadata[i] or {} for i in image_positions]
    if len(metadata) == len(image_positions):
        return [m or {} for m in metadata]
    raise RecordRejected("mismatched_lists", f"metadata has {len(metadata)} entries for "
                         f"{n_positions} positions and {len(image_positions)} images")


def obelics_parts(row: dict, load_image: LoadImage) -> tuple[list[Part], dict]:
    """One OBELICS/OmniCorpus row -> (parts in document order, {scores, images_dropped})."""
    images, texts = _strings(row, "images"), _strings(row, "texts")
    if len(images) != len(texts):
        raise RecordRejected("mismatched_lists", f"{len(images)} images vs {len(texts)} texts")
    both = [i for i, (img, txt) in enumerate(zip(images, texts)) if img and txt]
    if both:
        raise RecordRejected("mismatched_lists", f"position {both[0]} has both image and text")
    positions = [i for i, img in enumerate(images) if img]
    metadata = _per_image_metadata(parse_json(row.get("metadata"), "metadata"), len(images),
                                   positions)
    image_meta = {i: {**_image_meta(m), "url": images[i]} for i, m in zip(positions, metadata)}
    parts: list[Part | None] = []
    for i, (img, txt) in enumerate(zip(images, texts)):
        if img:
            parts.append(load_image(img, image_meta[i]))
        elif txt:
            parts.append(TextPart(text=txt))
    return _kept(parts)


def _kept(parts: list[Part | None]) -> tuple[list[Part], dict]:
    """Drop the images `load_image` gave up on; per-image score lists of the kept ones, so a
    filter range then holds for every image of the document."""
    kept = [p for p in parts if p is not None]
    scores: dict[str, list[float]] = {}
    for part in kept:
        if isinstance(part, ImagePart):
            for name, value in score_fields(part.meta).items():
                scores.setdefault(name, []).append(value)
    meta: dict = {"scores": scores}
    if len(kept) < len(parts):
        meta["images_dropped"] = len(parts) - len(kept)
    return kept, meta


def mmc4_parts(doc: dict, load_image: LoadImage) -> tuple[list[Part], dict]:
    """One MMC4 document -> (parts, {scores, images_dropped}); each image goes just before its
    matched sentence."""
    sentences = _strings(doc, "text_list")
    infos = require(doc, "image_info")
    if not isinstance(infos, list):
        raise RecordRejected("bad_field", f"image_info is a {type(infos).__name__}, not a list")
    before: dict[int, list[ImagePart | None]] = {}
    for info in infos:
        index = info.get("matched_text_index") if isinstance(info, dict) else None
        if not isinstance(index, int) or not 0 <= index < len(sentences):
            raise RecordRejected("bad_index", f"matched_text_index {index!r} outside "
                                 f"{len(sentences)} sentences")
        name = require(info, "image_name")
        faces = info.get("face_detections")
        meta = {"url": info.get("raw_url"), "matched_text_index": index,
                "matched_sim": info.get("matched_sim"),
                "faces": len(faces) if isinstance(faces, list) else None}
        before.setdefault(index, []).append(load_image(name, meta))
    parts: list[Part | None] = []
    for i, sentence in enumerate(sentences):
        parts.extend(before.get(i, []))
        if sentence:
            parts.append(TextPart(text=sentence))
    kept, meta = _kept(parts)
    meta["scores"].setdefault("matched_sim", [])
    if doc.get("could_have_url_duplicate") is not None:
        meta["scores"]["could_have_url_duplicate"] = float(bool(doc["could_have_url_duplicate"]))
    return kept, meta


def wds_interleaved_parts(members: dict[str, bytes]) -> tuple[list[Part], dict]:
    """`{"0.text.txt": b.., "1.image.jpg": b.., "json": b..}` -> (parts in order of i, meta)."""
    slots: dict[int, Part] = {}
    meta = {}
    for ext, data in members.items():
        pieces = ext.split(".")
        if len(pieces) == 1:
            if ext == "json":
                meta = parse_json(data, ext)
            continue  # other per-sample members (e.g. .txt summaries) are not document parts
        if not pieces[0].isdigit() or pieces[1] not in ("text", "image"):
            raise RecordRejected("bad_member", f"member .{ext} is not .{{i}}.text.txt or "
                                 ".{i}.image.EXT")
        index = int(pieces[0])
        if index in slots:
            raise RecordRejected("mismatched_lists", f"position {index} appears twice")
        slots[index] = TextPart(text=data.decode("utf-8", errors="replace")) \
            if pieces[1] == "text" else ImagePart(data=data, meta={"format": pieces[-1]})
    return [slots[i] for i in sorted(slots)], meta if isinstance(meta, dict) else {}


def _document(source: str, sample_id: str, locator: str, parts: list[Part], meta: dict) -> Sample:
    if not parts:
        raise RecordRejected("no_content", "no text and no image")
    return Sample(id=sample_id, source=source, kind="interleaved", parts=tuple(parts),
                  meta={**meta, "locator": locator})


class ObelicsSource(RecordSource):
    """`obelics` and `omnicorpus` parquet; units are row groups."""

    def units(self) -> list[str]:
        return parquet_units(expand(self.spec.uri), self.counter)

    def read(self, unit: str) -> Iterator[Sample | Reject]:
        stem, load = file_stem(unit), self.loader(base_dir(unit))
        for row, record in parquet_rows(unit, self.counter, OBELICS_COLUMNS):
            locator = f"{unit.split('#', 1)[0]}#row={row}"
            yield self.guard(locator, lambda: self._sample(record, f"{stem}-{row}", locator, load))

    def record_sample(self, record: dict, sample_id: str, locator: str) -> Sample:
        """One row read elsewhere (the `hf` adapter); relative image refs resolve from cwd."""
        return self._sample(record, sample_id, locator, self.loader(""))

    def _sample(self, record: dict, sample_id: str, locator: str, load) -> Sample:
        parts, meta = obelics_parts(record, load)
        general = parse_json(record.get("general_metadata"), "general_metadata") or {}
        if not isinstance(general, dict):
            raise RecordRejected("bad_json", "general_metadata is not an object")
        meta["scores"] = {**score_fields(general), **meta["scores"]}
        return _document(self.name, sample_id, locator, parts, {"url": general.get("url"), **meta})


class Mmc4Source(RecordSource):
    """MMC4 jsonl (`.jsonl`, `.jsonl.gz`, `.jsonl.zst`); units are files."""

    def units(self) -> list[str]:
        return expand(self.spec.uri)

    def read(self, unit: str) -> Iterator[Sample | Reject]:
        stem, load = file_stem(unit), self.loader(base_dir(unit))
        for line, doc in jsonl_records(unit, self.counter):
            locator = f"{unit}#line={line}"
            if isinstance(doc, RecordRejected):
                yield self.reject(locator, doc.reason, doc.message)
                continue
            yield self.guard(locator, lambda: self._sample(doc, f"{stem}-{line}", locator, load))

    def _sample(self, doc: dict, sample_id: str, locator: str, load) -> Sample:
        def load_named(name, meta):
            # the image folder first; the original URL only when the recipe allows fetching
            fallback = [meta["url"]] if meta.get("url") and self.options.fetch else []
            return load([name, *fallback], meta)

        parts, meta = mmc4_parts(doc, load_named)
        return _document(self.name, sample_id, locator, parts, {"url": doc.get("url"), **meta})


class WdsInterleavedSource(TarRecordSource):
    """WebDataset tars with `KEY.{i}.text.txt` / `KEY.{i}.image.EXT` members; units are tars."""

    def record_sample(self, members: dict, sample_id: str, locator: str) -> Sample:
        parts, meta = wds_interleaved_parts(members)
        return _document(self.name, sample_id, locator, parts,
                         {"url": meta.get("url"), "scores": score_fields(meta)})
