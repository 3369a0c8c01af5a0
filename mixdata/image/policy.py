"""The image policy of a recipe stage: which preset plans the geometry, and its parameters.

Parameters left as None take the reference model's value for the chosen preset (see
`mixdata.image.presets.DEFAULTS`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

from ..config import Invalid
from .presets import DEFAULTS

Preset = Literal["none", "idefics3", "mm15", "internvl", "llava-next", "qwen2vl"]
PRESETS: tuple[str, ...] = ("none", "idefics3", "mm15", "internvl", "llava-next", "qwen2vl")
# Keys every preset takes; the others belong to the presets whose DEFAULTS name them.
COMMON_KEYS = ("pixel_cap", "max_aspect", "encode", "quality", "mean", "std")
GEOMETRY_KEYS = frozenset(k for params in DEFAULTS.values() for k in params)


@dataclass(frozen=True, kw_only=True)
class ImagePolicy:
    preset: Preset = "none"
    # preset "none"
    resize: Literal["aspect", "naive", "letterbox", "crop"] = "aspect"
    max_side: int | None = None
    min_side: int | None = None
    upscale: bool | None = None          # None: the preset's reference behaviour
    # tiling presets
    longest_edge: int | None = None      # idefics3
    tile: int | None = None              # idefics3, mm15, internvl, llava-next
    min_tiles: int | None = None         # mm15, internvl
    max_tiles: int | None = None         # mm15, internvl
    pinpoints: list[list[int]] | None = None  # llava-next grid pinpoints in pixels [[w, h], ...]
    max_images_to_split: int | None = None    # mm15: do not split samples with this many images
    min_pixels: int | None = None        # qwen2vl
    max_pixels: int | None = None        # qwen2vl
    patch: int | None = None             # qwen2vl rounding unit
    filter: Literal["lanczos", "bicubic", "bilinear", "box"] | None = None
    # decoding safety
    pixel_cap: int = 89_478_485          # header pixels above this are rejected as a bomb
    max_aspect: float = 20.0             # extreme strips are rejected before decoding
    # output encoding
    encode: Literal["jpeg", "png", "webp"] = "jpeg"
    quality: int = 92
    # normalisation the loader applies on the device
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def _check_preset_keys(self) -> None:
        """A geometry key the chosen preset does not use is an error, not silently ignored."""
        takes = DEFAULTS.get(self.preset, {})
        for f in fields(self):
            if f.name in GEOMETRY_KEYS and f.name not in takes \
                    and getattr(self, f.name) != f.default:
                raise Invalid(f.name, getattr(self, f.name),
                              f"no {f.name} for preset {self.preset!r}, which takes "
                              + ", ".join(takes) + " (and " + ", ".join(COMMON_KEYS) + ")")

    def to_json(self) -> dict:
        """The policy as plain JSON (tuples as lists), as the manifest records it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def __post_init__(self) -> None:
        self._check_preset_keys()
        for name in ("max_side", "min_side", "longest_edge", "tile", "min_tiles", "max_tiles",
                     "min_pixels", "max_pixels", "patch", "pixel_cap"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise Invalid(name, value, "a positive integer")
        if self.min_tiles and self.max_tiles and self.min_tiles > self.max_tiles:
            raise Invalid("min_tiles", self.min_tiles, f"at most max_tiles ({self.max_tiles})")
        if not 1 <= self.quality <= 100:
            raise Invalid("quality", self.quality, "an integer from 1 to 100")
        if self.max_aspect < 1:
            raise Invalid("max_aspect", self.max_aspect, "a ratio of at least 1")
