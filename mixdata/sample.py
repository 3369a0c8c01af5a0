"""The canonical Sample every source adapter yields and every later step consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["interleaved", "caption", "ocr", "text", "sft"]
Role = Literal["system", "user", "assistant"]
KINDS: tuple[str, ...] = ("interleaved", "caption", "ocr", "text", "sft")
ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True, kw_only=True)
class TextPart:
    """A run of text. `role` is set for SFT samples only; only assistant text is supervised."""

    text: str
    role: Role | None = None


@dataclass(frozen=True, kw_only=True)
class ImagePart:
    """An image kept undecoded until the image step.

    Exactly one of `data` (encoded bytes) or `ref` (a path or URL to resolve later) is set.
    `meta` carries what the source knows without decoding (alt text, original size, ...).
    """

    data: bytes | None = None
    ref: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.data is None) == (self.ref is None):
            raise ValueError("ImagePart needs exactly one of data or ref")


Part = TextPart | ImagePart


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One training document: ordered text and image parts from one source record.

    `id` is stable and unique within `source` (the recipe's source name).
    """

    id: str
    source: str
    kind: Kind
    parts: tuple[Part, ...]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown sample kind {self.kind!r}; expected one of {KINDS}")
        for part in self.parts:
            if isinstance(part, TextPart) and part.role is not None and part.role not in ROLES:
                raise ValueError(f"unknown role {part.role!r}; expected one of {ROLES}")

    @property
    def images(self) -> list[ImagePart]:
        return [p for p in self.parts if isinstance(p, ImagePart)]

    @property
    def texts(self) -> list[TextPart]:
        return [p for p in self.parts if isinstance(p, TextPart)]

    def text(self, sep: str = "\n") -> str:
        """All text parts joined: what text filters and dedup look at."""
        return sep.join(p.text for p in self.texts)
