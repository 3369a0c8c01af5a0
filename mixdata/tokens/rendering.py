"""Rendering one Sample into token ids, a loss mask and image slots (pure).

Layout of every document: `<s>` parts `</s>`.
- Text parts are encoded as they are; two text parts in a row are joined by "\\n".
- An image part expands to `layout(plan, tokens_per_tile)` (view markers, `<image>`
  placeholders, "\\n" encoded as text). Image tokens are never supervised.
- SFT samples use a chat template: each turn is `<|role|>` content `<|end|>`. Images sit in
  the user or system turn open where they appear; an image before any text, or right after
  assistant text, goes into the turn of the next text part (a user turn if none follows).
  Loss covers the assistant text and the `<|end|>` closing it, nothing else.
- Other kinds: with `loss="all"` all text and the final `</s>` are supervised; with
  `loss="captions"` only caption and ocr samples are (their text and `</s>`).

Documents longer than `seq_len`:
- Without images they are cut into chunks of at most `seq_len` tokens. Every chunk starts
  with `<s>` (each chunk is packed and attended to as its own document, so it needs its own
  start anchor); only the last chunk ends with `</s>`, because only there the text really ends.
- With images, `on_overflow="trim"` keeps the longest prefix of parts that fits and still has a
  supervised token, closed by `<|end|>` (if a turn is open) and an unsupervised `</s>` (the
  document did not really end there). Otherwise `RecordRejected("too_long")`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate

import numpy as np

from ..errors import RecordRejected
from ..image import layout
from ..sample import Sample, TextPart
from .chat import render_model
from .documents import CAPTION_KINDS, ImageSlot, RenderedDoc
from .tokenizer import END, ROLE_TOKENS, Tokenizer

LOSS_MODES = ("all", "captions")
OVERFLOW_MODES = ("trim", "reject")


@dataclass
class _Span:
    """The tokens one part contributes, including the turn markers it opens or closes."""

    ids: list[int] = field(default_factory=list)
    loss: list[int] = field(default_factory=list)
    image: int | None = None   # index into sample.images
    image_start: int = 0       # offset of the image layout within the span
    views: int = 0

    def add(self, ids: list[int], supervised: bool) -> None:
        self.ids += ids
        self.loss += [int(supervised)] * len(ids)


class _Renderer:
    """Turns parts into spans; holds the per-call constants (ids of markers, newline)."""

    def __init__(self, tokenizer: Tokenizer, tokens_per_tile: int):
        self.tok, self.tokens_per_tile = tokenizer, tokens_per_tile
        self.newline = tokenizer.encode("\n")

    def image(self, span: _Span, index: int, plan) -> None:
        ids: list[int] = []
        for symbol in layout(plan, self.tokens_per_tile):
            if symbol == "\n":
                ids += self.newline
            else:
                ids.append(self.tok.special_id(symbol))
        span.image, span.image_start, span.views = index, len(span.ids), int(plan.num_views)
        span.add(ids, False)

    def plain(self, sample: Sample, plans, supervised: bool) -> tuple[list[_Span], list]:
        spans, images, previous_text = [], iter(enumerate(plans)), False
        for part in sample.parts:
            span = _Span()
            if isinstance(part, TextPart):
                text = "\n" + part.text if previous_text else part.text
                span.add(self.tok.encode(text), supervised)
            else:
                self.image(span, *next(images))
            previous_text = isinstance(part, TextPart)
            spans.append(span)
        return spans, [None] * (len(spans) + 1)

    def sft(self, sample: Sample, plans) -> tuple[list[_Span], list]:
        """Chat spans, and the role of the turn left open after each prefix of spans."""
        spans, images, open_roles = [], iter(enumerate(plans)), [None]
        role, previous_text = None, False
        for i, part in enumerate(sample.parts):
            span = _Span()
            if isinstance(part, TextPart):
                wanted = part.role
            else:
                # Assistants do not emit images: one after an assistant turn opens the next.
                wanted = role if role not in (None, "assistant") else _part_role(sample, i)
            if wanted != role:
                if role is not None:
                    span.add([self.tok.special_id(END)], role == "assistant")
                span.add([self.tok.special_id(ROLE_TOKENS[wanted])], False)
                role, previous_text = wanted, False
            if isinstance(part, TextPart):
                text = "\n" + part.text if previous_text else part.text
                span.add(self.tok.encode(text), role == "assistant")
            else:
                self.image(span, *next(images))
            previous_text = isinstance(part, TextPart)
            spans.append(span)
            open_roles.append(role)
        return spans, open_roles


def _part_role(sample: Sample, start: int) -> str:
    """Role of the first text part at or after `start`; "user" when none follows."""
    for part in sample.parts[start:]:
        if isinstance(part, TextPart):
            return part.role
    return "user"


def _check(sample: Sample, plans, tokens_per_tile: int, seq_len: int, loss: str,
           on_overflow: str) -> None:
    if loss not in LOSS_MODES:
        raise ValueError(f"loss must be one of {LOSS_MODES}, got {loss!r}")
    if on_overflow not in OVERFLOW_MODES:
        raise ValueError(f"on_overflow must be one of {OVERFLOW_MODES}, got {on_overflow!r}")
    if seq_len < 2 or tokens_per_tile < 1:
        raise ValueError(f"need seq_len >= 2 and tokens_per_tile >= 1, got {seq_len}, "
                         f"{tokens_per_tile}")
    if len(plans) != len(sample.images):
        raise ValueError(f"sample {sample.id!r} has {len(sample.images)} images but "
                         f"{len(plans)} plans")
    if sample.kind == "sft":
        for part in sample.texts:
            if part.role not in ROLE_TOKENS:
                raise RecordRejected("sft_role", f"SFT text part without a role: {part.role!r}")


def _assemble(tok: Tokenizer, spans: list[_Span], closing: tuple[list, list]) -> RenderedDoc:
    ids, loss, slots = [tok.bos_id], [0], []
    for span in spans:
        if span.image is not None:
            length = len(span.ids) - span.image_start
            slots.append(ImageSlot(index=span.image, start=len(ids) + span.image_start,
                                   length=length, views=span.views))
        ids += span.ids
        loss += span.loss
    ids += closing[0]
    loss += closing[1]
    return RenderedDoc(ids=np.asarray(ids, np.int32), loss=np.asarray(loss, np.uint8),
                       images=slots)


def _closing(tok: Tokenizer, open_role: str | None, eos_supervised: bool) -> tuple[list, list]:
    ids, loss = [], []
    if open_role is not None:
        ids, loss = [tok.special_id(END)], [int(open_role == "assistant")]
    return [*ids, tok.eos_id], [*loss, int(eos_supervised)]


def _chunks(doc: RenderedDoc, bos_id: int, seq_len: int) -> list[RenderedDoc]:
    """Cut an image-free document into chunks of <= seq_len, each opened by `<s>`."""
    body = seq_len - 1
    out = []
    for start in range(1, len(doc.ids), body):
        ids = np.concatenate([[bos_id], doc.ids[start:start + body]]).astype(np.int32)
        loss = np.concatenate([[0], doc.loss[start:start + body]]).astype(np.uint8)
        out.append(RenderedDoc(ids=ids, loss=loss, images=[]))
    return out


def _trim(tok: Tokenizer, sample: Sample, spans: list[_Span], open_roles: list,
          seq_len: int, full_length: int) -> RenderedDoc:
    """The longest prefix of whole parts that fits and keeps a supervised token."""
    lengths = list(accumulate((len(s.ids) for s in spans), initial=1))
    supervised = list(accumulate((sum(s.loss) for s in spans), initial=0))
    for k in range(len(spans) - 1, 0, -1):
        closing = _closing(tok, open_roles[k], eos_supervised=False)
        if lengths[k] + len(closing[0]) > seq_len:
            continue
        if supervised[k] + sum(closing[1]) == 0:
            break  # shorter prefixes have no supervised token either
        return _assemble(tok, spans[:k], closing)
    raise RecordRejected("too_long", f"sample {sample.id!r}: {full_length} tokens with images "
                         f"exceed seq_len {seq_len} and no prefix of parts that fits has a "
                         "supervised token")


def render(sample: Sample, plans, tokenizer: Tokenizer, *, tokens_per_tile: int, seq_len: int,
           loss: str = "all", on_overflow: str = "trim") -> list[RenderedDoc]:
    """Render `sample` into documents of at most `seq_len` tokens each (see module docstring).

    `plans[i]` is the ImagePlan of `sample.images[i]`. Raises `RecordRejected("too_long")`
    for a document with images that cannot fit, and `RecordRejected("sft_role")` for SFT text
    without a role. A document without supervised tokens is returned as is.

    With a model tokenizer (`load_tokenizer` of an HF folder) the document is in that model's
    dialect instead: see `mixdata.tokens.chat`.
    """
    _check(sample, plans, tokens_per_tile, seq_len, loss, on_overflow)
    if getattr(tokenizer, "family", None) is not None:  # a model folder: its own dialect
        return render_model(sample, plans, tokenizer, tokens_per_tile=tokens_per_tile,
                            seq_len=seq_len, loss=loss, on_overflow=on_overflow)
    renderer = _Renderer(tokenizer, tokens_per_tile)
    if sample.kind == "sft":
        spans, open_roles = renderer.sft(sample, plans)
        eos_supervised = False
    else:
        eos_supervised = loss == "all" or sample.kind in CAPTION_KINDS
        spans, open_roles = renderer.plain(sample, plans, eos_supervised)
    doc = _assemble(tokenizer, spans, _closing(tokenizer, open_roles[-1], eos_supervised))
    if len(doc.ids) <= seq_len:
        return [doc]
    if not doc.images:
        return _chunks(doc, tokenizer.bos_id, seq_len)
    if on_overflow == "reject":
        raise RecordRejected("too_long", f"sample {sample.id!r}: {len(doc.ids)} tokens with "
                             f"images exceed seq_len {seq_len}")
    return [_trim(tokenizer, sample, spans, open_roles, seq_len, len(doc.ids))]
