"""Supervised fine-tuning conversations: the_cauldron / Docmatix parquet, LLaVA JSON, and chat
messages (HF content parts, OpenAI `image_url` parts).

Every record becomes one `sft` Sample: text parts carry a role (system / user / assistant) and
images sit where the conversation puts them. A record without any assistant text is rejected
(`no_assistant`): it would supervise nothing. Text-only conversations are fine.

Pure cores (`cauldron_parts`, `llava_parts`, `chat_parts`) map one record to parts, given a
`load_image(ref, meta) -> ImagePart` that raises RecordRejected `image_missing`; the adapters
stream records (parquet row groups, JSON arrays and JSON lines) and resolve images.
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator

from ..errors import RecordRejected, Reject
from ..sample import ImagePart, Part, Sample, TextPart
from ..storage import RetryCounter, expand
from .records import (
    RecordSource,
    base_dir,
    file_stem,
    jsonl_records,
    open_unit_text,
    own_id,
    parquet_rows,
    parquet_units,
    require,
    stream_damage,
)

LoadImage = Callable[[object, dict], ImagePart]
IMAGE_TAG = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "system": "system"}
_CHUNK = 1 << 20
_MAX_ELEMENT = 64 << 20  # a JSON array element larger than this is treated as malformed


def image_part(value, load_image: LoadImage, meta: dict | None = None) -> ImagePart:
    """An image given as bytes, HF `{bytes, path}`, a `data:` URI, or a path/URL reference."""
    meta = meta or {}
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return ImagePart(data=value["bytes"], meta=meta)
        value = value.get("path") or value.get("url")
    if isinstance(value, bytes):
        return ImagePart(data=value, meta=meta)
    if not isinstance(value, str) or not value:
        raise RecordRejected("image_missing", "an image entry has neither bytes nor a reference")
    if value.startswith("data:"):
        return ImagePart(data=decode_data_uri(value), meta=meta)
    return load_image(value, meta)


def decode_data_uri(uri: str) -> bytes:
    """`data:image/png;base64,...` -> bytes (RecordRejected `bad_image_uri`)."""
    header, _, payload = uri.partition(",")
    if not header.endswith(";base64") or not payload:
        raise RecordRejected("bad_image_uri", f"expected a base64 data URI, got {header[:40]!r}")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RecordRejected("bad_image_uri", f"invalid base64 ({err})") from None


def _role(name) -> str:
    if name not in ROLES:
        raise RecordRejected("bad_role", f"unknown role {name!r}; expected one of "
                             + ", ".join(ROLES))
    return ROLES[name]


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise RecordRejected("missing_field", f"{what} is {type(value).__name__}, not text")
    return value


def cauldron_parts(row: dict, load_image: LoadImage) -> list[Part]:
    """the_cauldron / Docmatix: every image first, then the turns `{user, assistant}` in order."""
    texts = require(row, "texts")
    if not isinstance(texts, list) or not texts:
        raise RecordRejected("no_content", "'texts' holds no turn")
    parts: list[Part] = [image_part(img, load_image) for img in row.get("images") or []]
    for turn in texts:
        if not isinstance(turn, dict):
            raise RecordRejected("missing_field", "a turn is not a {user, assistant} struct")
        parts.append(TextPart(text=_text(turn.get("user"), "user"), role="user"))
        parts.append(TextPart(text=_text(turn.get("assistant"), "assistant"), role="assistant"))
    return parts


def llava_parts(record: dict, load_image: LoadImage) -> list[Part]:
    """LLaVA / ShareGPT: `<image>` tags become the images (str or list), in order."""
    conversations = require(record, "conversations")
    if not isinstance(conversations, list) or not conversations:
        raise RecordRejected("no_content", "'conversations' holds no turn")
    images = record.get("image")
    refs = [] if images is None else [images] if isinstance(images, str) else list(images)
    turns = [(_role(t.get("from") if isinstance(t, dict) else None),
              _text(t.get("value"), "a turn's value")) for t in conversations]
    tags = sum(value.count(IMAGE_TAG) for _, value in turns)
    if tags != len(refs):
        raise RecordRejected("image_count_mismatch", f"{tags} {IMAGE_TAG} tags for "
                             f"{len(refs)} images")
    pending = iter(refs)
    parts: list[Part] = []
    for role, value in turns:
        pieces = value.split(IMAGE_TAG)
        for i, piece in enumerate(pieces):
            if i:
                parts.append(image_part(next(pending), load_image))
            # the newline that follows a tag only separates it from the text
            text = piece.strip("\n") if len(pieces) > 1 else piece
            if text:
                parts.append(TextPart(text=text, role=role))
    return parts


def chat_parts(record: dict, load_image: LoadImage) -> list[Part]:
    """Chat messages: `content` is a string or a list of typed parts. `{"type": "image"}` with
    no reference takes the next entry of the record's `images` list (HF/TRL style)."""
    messages = require(record, "messages")
    if not isinstance(messages, list) or not messages:
        raise RecordRejected("no_content", "'messages' holds no message")
    spare = iter(record.get("images") or [])
    parts: list[Part] = []
    for message in messages:
        if not isinstance(message, dict):
            raise RecordRejected("missing_field", "a message is not an object")
        role = _role(message.get("role"))
        content = require(message, "content")
        for item in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            parts.append(_content_part(item, role, spare, load_image))
    return [p for p in parts if not isinstance(p, TextPart) or p.text]


def _content_part(item, role: str, spare: Iterator, load_image: LoadImage) -> Part:
    kind = item.get("type") if isinstance(item, dict) else None
    if kind == "text":
        return TextPart(text=_text(item.get("text"), "a text part"), role=role)
    if kind == "image_url":
        url = item.get("image_url")
        return image_part(url.get("url") if isinstance(url, dict) else url, load_image)
    if kind == "image":
        ref = next((item[k] for k in ("path", "url", "image") if item.get(k) is not None), None)
        if ref is None:
            ref = next(spare, None)
        return image_part(ref, load_image)
    raise RecordRejected("bad_part", f"content part of type {kind!r}; expected text, image "
                         "or image_url")


def sft_sample(parts: list[Part], *, source: str, sample_id: str, locator: str,
               meta: dict | None = None) -> Sample:
    if not any(isinstance(p, TextPart) and p.role == "assistant" and p.text.strip()
               for p in parts):
        raise RecordRejected("no_assistant", "no assistant text to supervise")
    return Sample(id=sample_id, source=source, kind="sft", parts=tuple(parts),
                  meta={**(meta or {}), "locator": locator})


def json_records(url: str, counter: RetryCounter | None = None
                 ) -> Iterator[tuple[str, dict | RecordRejected]]:
    """`(position, object or RecordRejected)` from a JSON array (`item=i`, streamed element by
    element) or from JSON lines (`line=n`); the first non-blank character decides. A damaged
    stream raises UnitDamaged after the records before the damage."""
    position = "the start"
    with open_unit_text(url, counter) as fh, stream_damage(url, lambda: f"after {position}"):
        head = fh.read(_CHUNK)
        if head.lstrip().startswith("["):
            for position, record in _array_elements(fh, head):
                yield position, record
            return
    for line, record in jsonl_records(url, counter):
        yield f"line={line}", record


def _array_elements(fh, buffer: str) -> Iterator[tuple[str, dict | RecordRejected]]:
    """Decode one element at a time with the stdlib decoder, refilling a bounded buffer, so a
    1 GB LLaVA file never sits in memory. A malformed element ends the file: after it there is
    no reliable way to find the next one."""
    decoder, pos, index, eof = json.JSONDecoder(), buffer.index("[") + 1, 0, False
    while True:
        while pos < len(buffer) and buffer[pos] in " \t\r\n,":
            pos += 1
        if pos < len(buffer) and buffer[pos] == "]":
            return
        try:
            value, end = decoder.raw_decode(buffer, pos)
            complete = end < len(buffer) or eof  # a number may go on in the next chunk
        except json.JSONDecodeError as err:
            if eof or len(buffer) - pos > _MAX_ELEMENT:
                yield f"item={index}", RecordRejected("bad_json", f"{err}; the rest of the "
                                                      "array is not read")
                return
            complete = False
        if not complete:
            more = fh.read(_CHUNK)
            eof = not more
            buffer, pos = buffer[pos:] + more, 0
            continue
        yield f"item={index}", value if isinstance(value, dict) else RecordRejected(
            "bad_json", f"expected an object, got {type(value).__name__}")
        index, pos = index + 1, end


class _SftSource(RecordSource):
    PARTS: Callable[[dict, LoadImage], list[Part]]

    def record_sample(self, record: dict, sample_id: str, locator: str, folder: str = "") -> Sample:
        """`sample_id` names a record without an `id` of its own; one with an id keeps it,
        so rejects and packed documents trace back to the id the user has."""
        parts = type(self).PARTS(record, self.loader(folder))
        return sft_sample(parts, source=self.name, sample_id=own_id(record, "id", sample_id),
                          locator=locator)


class CauldronSource(_SftSource):
    """`cauldron` (Docmatix too): parquet; units are row groups."""

    PARTS = staticmethod(cauldron_parts)

    def units(self) -> list[str]:
        return parquet_units(expand(self.spec.uri), self.counter)

    def read(self, unit: str) -> Iterator[Sample | Reject]:
        stem, path, folder = file_stem(unit), unit.split("#", 1)[0], base_dir(unit)
        for row, record in parquet_rows(unit, self.counter):
            locator = f"{path}#row={row}"
            yield self.guard(locator, lambda: self.record_sample(
                record, f"{stem}-{row}", locator, folder))


class _JsonSftSource(_SftSource):
    """JSON array or JSON lines files (plain, .gz, .zst); units are files."""

    def units(self) -> list[str]:
        return expand(self.spec.uri)

    def read(self, unit: str) -> Iterator[Sample | Reject]:
        stem, folder = file_stem(unit), base_dir(unit)
        for position, record in json_records(unit, self.counter):
            locator = f"{unit}#{position}"
            if isinstance(record, RecordRejected):
                yield self.reject(locator, record.reason, record.message)
                continue
            sample_id = f"{stem}-{position.split('=', 1)[1]}"
            yield self.guard(locator, lambda: self.record_sample(record, sample_id, locator,
                                                                 folder))


class LlavaSource(_JsonSftSource):
    """`llava` (ShareGPT4V, InternVL-style image lists, text-only ShareGPT entries)."""

    PARTS = staticmethod(llava_parts)


class ChatMessagesSource(_JsonSftSource):
    """`chat-messages`: `{"messages": [{role, content}], "images"?: [...]}`."""

    PARTS = staticmethod(chat_parts)
