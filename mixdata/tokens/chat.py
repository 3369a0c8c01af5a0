"""Rendering one Sample in a model's own dialect: the ids its transformers processor gives (pure).

A document is first a prompt string, then one tokenization of it, as the processor does:
- SFT: the sample's parts become chat messages (consecutive parts of one role are one
  message; text parts of a message are joined by "\\n"; an image joins the open user message,
  else opens one, which user text right after it joins: templates place images in user
  messages, never in system or assistant ones). The tokenizer's
  Jinja chat template renders them (`render_jinja_template`, what `apply_chat_template` calls),
  and each image placeholder it writes is replaced by the family's expansion (`families`).
  Tokens get the post-processor's specials unless the prompt starts with the BOS token, as
  `processor.apply_chat_template(..., tokenize=True)` does.
- Other kinds: text parts joined by "\\n", each image as the family's placeholder expanded in
  place, then the EOS token (unless the post-processor adds one); tokenized with the
  post-processor's specials, as `processor(text=...)` does.

Loss: an SFT document supervises the assistant replies and their end-of-turn token: the
template's `{% generation %}` spans where it has them; otherwise each reply is found by
rendering the conversation up to it (with the generation prompt) and up to its end, and runs
from its text to the end of its turn, trailing whitespace excluded. A token overlapping a
supervised span is supervised; image tokens never are. A reply that cannot be located is a
`RecordRejected("sft_spans")`, as is a document that would be all masked or all supervised.
Other kinds supervise their text and EOS under the same `loss` modes as mixdata's dialect.

Source text never makes a control token: text spelling one (a special token, a token of the
chat template, a family image token) is encoded as plain text, exactly as transformers'
`apply_chat_template(..., sanitize_control_tokens=True)` encodes it.
"""
from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

from ..errors import MixdataError, RecordRejected
from ..sample import ImagePart, Sample, TextPart
from .documents import CAPTION_KINDS, ImageSlot, RenderedDoc
from .families import expand, plain_wrap
from .hf import GENERATION_TAG, MARK_START, REPLY_PROBE, ModelTokenizer


@dataclass
class Prompt:
    """A prompt string (with markers around source text that spells control tokens) and its
    character spans: `images[i]` is the expansion of the i-th image, `supervised` the text
    whose tokens the loss covers."""

    text: str
    images: list[tuple[int, int]] = field(default_factory=list)
    supervised: list[tuple[int, int]] = field(default_factory=list)
    add_special_tokens: bool = True
    suffix_supervised: bool = False  # the post-processor's closing tokens (an EOS it adds)


def family_params(tok: ModelTokenizer, tile: int, tokens_per_tile: int) -> dict:
    """What `families.expand` needs beyond the plan: placeholders per view, and llava-next's
    vision patch size and extra tokens (from processor_config.json, else from the recipe's
    tokens per tile, e.g. 576 for 336 px tiles of 14 px patches)."""
    config = tok.processor_config
    params = {"image_seq_len": tokens_per_tile}
    if tok.family == "llava-next":
        patch = config.get("patch_size")
        if patch is None:
            side = round(tokens_per_tile ** 0.5)
            if side * side != tokens_per_tile or tile % side:
                raise MixdataError(f"llava-next needs image_tokens_per_tile = (tile / patch)^2; "
                                   f"{tokens_per_tile} does not divide a {tile} px tile")
            patch = tile // side
        default = config.get("vision_feature_select_strategy") == "default"
        params.update(patch_size=int(patch),
                      extra_tokens=int(config.get("num_additional_image_tokens", 0)) - default)
    return params


def _spans_to_tokens(offsets: np.ndarray, spans) -> np.ndarray:
    """bool [n]: tokens overlapping any span; zero-width tokens (added specials) never do."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    hit = np.zeros(len(offsets), bool)
    for start, end in spans:
        hit |= (starts < end) & (ends > start) & (ends > starts)
    return hit


def _image_slot(offsets: np.ndarray, span: tuple[int, int]) -> tuple[int, int]:
    """(first, end) tokens of an image expansion, which must start and end on token bounds."""
    index = np.flatnonzero(_spans_to_tokens(offsets, [span]))
    if (not len(index) or offsets[index[0], 0] != span[0] or offsets[index[-1], 1] != span[1]
            or index[-1] - index[0] + 1 != len(index)):
        raise RecordRejected("image_span", "an image's placeholder tokens merge with the text "
                             "around them in this tokenizer")
    return int(index[0]), int(index[-1]) + 1


def encode(tok: ModelTokenizer, prompt: Prompt, plans, image_indices) -> RenderedDoc:
    """Tokenize `prompt` and map its character spans to a loss mask and image slots."""
    ids, offsets = tok.encode_prompt(prompt.text, prompt.add_special_tokens)
    loss = _spans_to_tokens(offsets, prompt.supervised)
    if prompt.add_special_tokens and prompt.suffix_supervised and tok.suffix_ids:
        loss[len(ids) - len(tok.suffix_ids):] = True
    slots = []
    for index, span in zip(image_indices, prompt.images):
        first, end = _image_slot(offsets, span)
        loss[first:end] = False
        slots.append(ImageSlot(index=index, start=first, length=end - first,
                               views=int(plans[index].num_views)))
    return RenderedDoc(ids=ids.astype(np.int32), loss=loss.astype(np.uint8), images=slots)


# --- plain documents ------------------------------------------------------------------------

def plain_prompt(tok: ModelTokenizer, parts, plans, params, *, supervised: bool,
                 eos_supervised: bool) -> Prompt:
    """Text parts joined by "\\n", images expanded in place, then EOS (see module docstring)."""
    prompt, images, previous_text = Prompt(text=""), iter(plans), False
    before, after = plain_wrap(tok.family, tok.spellings)
    for part in parts:
        if isinstance(part, TextPart):
            piece = ("\n" if previous_text else "") + tok.mark(part.text)
            if supervised:
                prompt.supervised.append((len(prompt.text), len(prompt.text) + len(piece)))
            prompt.text += piece
        else:
            prompt.text += before
            start = len(prompt.text)
            prompt.text += expand(tok.family, next(images), tok.spellings, params)
            prompt.images.append((start, len(prompt.text)))
            prompt.text += after
        previous_text = isinstance(part, TextPart)
    eos = tok.hf.eos_token
    if eos and tok.eos_id not in tok.suffix_ids:
        if eos_supervised:
            prompt.supervised.append((len(prompt.text), len(prompt.text) + len(eos)))
        prompt.text += eos
    prompt.suffix_supervised = eos_supervised
    return prompt


# --- chat -----------------------------------------------------------------------------------

def messages_of(tok: ModelTokenizer, parts) -> list[dict]:
    """The chat messages of SFT parts (see module docstring), with source text marked."""
    messages, role = [], None
    for part in parts:
        # chat templates place images in user messages: an image joins the open user
        # message, or opens one (which the user text after it then joins)
        wanted = part.role if isinstance(part, TextPart) else "user"
        if wanted != role:
            messages.append({"role": wanted, "content": []})
            role = wanted
        content = messages[-1]["content"]
        if isinstance(part, ImagePart):
            content.append({"type": "image"})
        elif content and content[-1]["type"] == "text":
            content[-1]["text"] += "\n" + tok.mark(part.text)
        else:
            content.append({"type": "text", "text": tok.mark(part.text)})
    return messages


def render_chat(tok: ModelTokenizer, messages: list[dict], *, generation_prompt: bool = False,
                spans: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """The template's text for `messages`, and its generation spans when asked for."""
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        texts, indices = render_jinja_template(
            conversations=[messages], chat_template=tok.chat_template,
            return_assistant_tokens_mask=spans, add_generation_prompt=generation_prompt,
            **tok.hf.special_tokens_map)
    except Exception as err:  # noqa: BLE001 - jinja and the template's raise_exception
        raise RecordRejected("chat_template", f"the chat template fails on this "
                             f"conversation: {type(err).__name__}: {err}") from None
    return texts[0], [tuple(s) for s in (indices[0] if spans else [])]


def _reply_start(tok, messages, k: int, turn: str, head: int) -> int:
    """Where reply `k`'s text starts in `turn` (its rendering), at or after `head`.

    The text found once after the head is the reply. Found several times (a header such as
    "Assistant:" that the generation prompt does not write, holding the reply's letters), the
    template is rendered once more with a probe in place of the reply: the probe's position
    is where the template writes reply text, which must then be the reply.
    """
    text = "\n".join(c["text"] for c in messages[k]["content"] if c["type"] == "text")
    needles = [n for n in dict.fromkeys((text, text.strip())) if n]
    for needle in needles:
        if turn.count(needle, head) == 1:
            return turn.find(needle, head)
    probed = [*messages[:k], {"role": "assistant", "content": [
        {"type": "text", "text": REPLY_PROBE}]}]
    start = render_chat(tok, probed)[0].find(REPLY_PROBE)
    if start >= head and any(turn.startswith(n, start) for n in needles):
        return start
    raise RecordRejected("sft_spans", f"the chat template does not write reply {k} as it "
                         "is; its tokens cannot be found")


def _reply_span(tok: ModelTokenizer, messages, k: int, full: str) -> tuple[int, int]:
    """Characters of reply `k` in `full`: its text to the end of its turn (see docstring)."""
    turn, _ = render_chat(tok, messages[:k + 1])
    head = render_chat(tok, messages[:k], generation_prompt=True)[0] if k else ""
    if not turn.startswith(head):  # a generation prompt other than the reply's own header
        head = render_chat(tok, messages[:k])[0]
    if not turn.startswith(head) or not full.startswith(turn):
        raise RecordRejected("sft_spans", f"the chat template renders message {k} differently "
                             "once more messages follow, so its reply cannot be located")
    start = _reply_start(tok, messages, k, turn, len(head))
    end = len(turn.rstrip())
    if end <= start:
        raise RecordRejected("sft_spans", f"reply {k} is empty once rendered")
    return start, end


def _expand_images(tok, rendered: str, plans, params, spans) -> Prompt:
    """Replace each image placeholder the template wrote (not one in source text: those are
    marked) by its expansion, shifting the supervised spans with the text."""
    token = re.escape(tok.spellings["image"])
    found = list(re.finditer(f"(?<!{MARK_START}){token}", rendered))
    if len(found) != len(plans):
        raise RecordRejected("chat_template", f"the chat template wrote {len(found)} image "
                             f"placeholders for {len(plans)} images")
    prompt, last, ends, gained = Prompt(text=""), 0, [], [0]
    for match, plan in zip(found, plans):
        prompt.text += rendered[last:match.start()]
        replacement = expand(tok.family, plan, tok.spellings, params)
        prompt.images.append((len(prompt.text), len(prompt.text) + len(replacement)))
        prompt.text += replacement
        last = match.end()
        ends.append(match.end())
        gained.append(gained[-1] + len(replacement) - len(match.group(0)))
    prompt.text += rendered[last:]
    # a position moves by what the placeholders ending at or before it gained
    prompt.supervised = [(a + gained[bisect_right(ends, a)], b + gained[bisect_right(ends, b)])
                         for a, b in spans]
    return prompt


def chat_prompt(tok: ModelTokenizer, parts, plans, params) -> Prompt:
    """The chat template's prompt for SFT parts, with its reply spans (see module docstring)."""
    if not tok.chat_template:
        raise MixdataError(f"tokenizer {tok.spec!r} has no chat template (chat_template.jinja, "
                           "chat_template.json or tokenizer_config.json); SFT samples need one")
    messages = messages_of(tok, parts)
    if GENERATION_TAG.search(tok.chat_template):
        rendered, spans = render_chat(tok, messages, spans=True)
    else:
        rendered, _ = render_chat(tok, messages)
        spans = [_reply_span(tok, messages, k, rendered)
                 for k, m in enumerate(messages) if m["role"] == "assistant"]
    prompt = _expand_images(tok, rendered, plans, params, spans)
    bos = tok.hf.bos_token
    prompt.add_special_tokens = not (bos and rendered.startswith(bos))
    return prompt


def render_model(sample: Sample, plans, tok: ModelTokenizer, *, tokens_per_tile: int,
                 seq_len: int, loss: str, on_overflow: str) -> list[RenderedDoc]:
    """`mixdata.tokens.rendering` for a model tokenizer (see the module docstrings)."""
    params = family_params(tok, plans[0].tile, tokens_per_tile) if plans else {}
    sft = sample.kind == "sft"
    supervised = loss == "all" or sample.kind in CAPTION_KINDS

    def document(parts, closed: bool = True) -> RenderedDoc:
        used = sum(isinstance(p, ImagePart) for p in parts)
        if sft:
            prompt = chat_prompt(tok, parts, plans[:used], params)
        else:
            prompt = plain_prompt(tok, parts, plans[:used], params, supervised=supervised,
                                  eos_supervised=supervised and closed)
        return encode(tok, prompt, plans, range(used))

    doc = document(sample.parts)
    if sft:
        _check_mask(sample, doc)
    if len(doc.ids) <= seq_len:
        return [doc]
    if not doc.images:
        return _chunks(doc, len(tok.prefix_ids) if _has_prefix(tok, doc) else 0, seq_len)
    if on_overflow == "reject":
        raise RecordRejected("too_long", f"sample {sample.id!r}: {len(doc.ids)} tokens with "
                             f"images exceed seq_len {seq_len}")
    for k in range(len(sample.parts) - 1, 0, -1):
        try:
            part = document(sample.parts[:k], closed=False)
        except RecordRejected:  # e.g. a template that refuses a conversation cut there
            continue
        if len(part.ids) <= seq_len and part.loss.any():
            if sft:
                _check_mask(sample, part)
            return [part]
    raise RecordRejected("too_long", f"sample {sample.id!r}: {len(doc.ids)} tokens with images "
                         f"exceed seq_len {seq_len} and no prefix of parts that fits has a "
                         "supervised token")


def _has_prefix(tok: ModelTokenizer, doc: RenderedDoc) -> bool:
    head = doc.ids[:len(tok.prefix_ids)].tolist()
    return bool(tok.prefix_ids) and head == tok.prefix_ids


def _check_mask(sample: Sample, doc: RenderedDoc) -> None:
    supervised = int(doc.loss.sum())
    if supervised == 0 or supervised == len(doc.loss):
        state = "no token" if supervised == 0 else "every token"
        raise RecordRejected("sft_spans", f"sample {sample.id!r}: the loss would cover "
                             f"{state}; the assistant replies were not found apart")


def _chunks(doc: RenderedDoc, prefix: int, seq_len: int) -> list[RenderedDoc]:
    """Cut an image-free document into chunks of <= seq_len, each opened by its first
    `prefix` tokens (the post-processor's BOS), as mixdata's dialect does with `<s>`."""
    head_ids, head_loss = doc.ids[:prefix], doc.loss[:prefix]
    body = seq_len - prefix
    out = []
    for start in range(prefix, len(doc.ids), body):
        ids = np.concatenate([head_ids, doc.ids[start:start + body]]).astype(np.int32)
        loss = np.concatenate([head_loss, doc.loss[start:start + body]]).astype(np.uint8)
        out.append(RenderedDoc(ids=ids, loss=loss, images=[]))
    return out
