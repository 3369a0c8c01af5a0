"""Caption and OCR samples as one-turn conversations (a source's `prompt:`).

LLaVA's first stage feeds image-caption pairs to the model as chat turns: the user turn holds
the image and an instruction, the assistant turn the caption. A model then answers in the
same place it will answer questions later. For OCR data this matters even more: a small model
learns to read text at a fixed distance from the image, so reading learned as `<image> text`
does not carry over to answers that come after a question.
"""
from __future__ import annotations

from ..errors import RecordRejected
from ..sample import ImagePart, Sample, TextPart

PROMPTABLE_KINDS = ("caption", "ocr")


def as_conversation(sample: Sample, prompt: str) -> Sample:
    """`sample` as an SFT turn pair: user = its images, then `prompt`; assistant = its text.

    Text parts are joined by newlines in their order. Raises RecordRejected `no_content`
    for a sample without text (nothing to answer)."""
    if sample.kind not in PROMPTABLE_KINDS:
        raise ValueError(f"a prompt turns caption or ocr samples into turns, not {sample.kind!r}")
    answer = "\n".join(p.text for p in sample.parts if isinstance(p, TextPart) and p.text)
    if not answer:
        raise RecordRejected("no_content", "no text to put in the assistant turn")
    images = [p for p in sample.parts if isinstance(p, ImagePart)]
    parts = (*images, TextPart(text=prompt, role="user"), TextPart(text=answer, role="assistant"))
    return Sample(id=sample.id, source=sample.source, kind="sft", parts=parts,
                  meta={**sample.meta, "prompted_from": sample.kind})
