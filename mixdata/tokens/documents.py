"""What rendering gives: a document's ids, loss mask and image slots (both dialects)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CAPTION_KINDS = ("caption", "ocr")  # kinds whose text is supervised under loss="captions"


@dataclass(frozen=True)
class ImageSlot:
    """Where image `index` (its position in `sample.images`) sits in a rendered document.

    `start`/`length` span all of its layout tokens (markers, placeholders and newlines);
    `views` is `plan.num_views`. The span holds `image_token_count(plan, tokens_per_tile)`
    `<image>` placeholders: `views * tokens_per_tile`, except for qwen2vl's one view.
    """

    index: int
    start: int
    length: int
    views: int


@dataclass(frozen=True, eq=False)
class RenderedDoc:
    """One document: `ids` int32 [n], `loss` uint8 [n] (1 = supervised), its image slots."""

    ids: np.ndarray
    loss: np.ndarray
    images: list[ImageSlot]
