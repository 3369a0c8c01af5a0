"""The image plan: what one image becomes, decided from its size alone (nothing is decoded).

`plan(width, height, preset, **params)` is the pure geometry the build, the tokenizer and the
tests reason with; `plan_for(width, height, policy)` reads the parameters from a recipe's
`ImagePolicy`. Sizes are (width, height) of the image as displayed (after EXIF orientation).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

from .policy import PRESETS, ImagePolicy
from .presets import DEFAULTS, GEOMETRY, IDEFICS3_MAX_SIDE

FILTERS = ("lanczos", "bicubic", "bilinear", "box")


@dataclass(frozen=True)
class ImagePlan:
    """Geometry of one processed image and of the views the loader cuts from it.

    - `resized_size` (w, h): the processed image, the source resized once (from `source_box`
      when set, a crop of the source in its own pixels).
    - `canvas_size` (w, h): the processed image padded with `fill` (an RGB colour), placed at
      `offset`; the views are cut from the canvas.
    - `rows` x `cols` tiles of `tile` px, row-major, and a global view (`none|before|after`):
      the processed image resized to tile x tile with `filter`.
    - An untiled image has rows = cols = 1, no global view, and its one view is the whole
      canvas: tile x tile for every preset except qwen2vl, whose canvas is its own size (sides
      multiples of `tile`, the 28 px unit) with `view_tokens` placeholders.
    - `source_size` (w, h) of the image as displayed, kept only where the token count depends
      on it (llava-next: its processor counts the unpadded features from the original size,
      its `image_sizes`). It is left out of `to_json` when None, so plans of the other presets
      serialise as they always did.
    """

    preset: str
    resized_size: tuple[int, int]
    canvas_size: tuple[int, int]
    rows: int
    cols: int
    tile: int
    global_view: str = "none"
    offset: tuple[int, int] = (0, 0)
    source_box: tuple[float, float, float, float] | None = None
    fill: tuple[int, int, int] = (128, 128, 128)
    filter: str = "bicubic"
    view_tokens: int | None = None
    source_size: tuple[int, int] | None = None

    @property
    def num_tiles(self) -> int:
        return self.rows * self.cols

    @property
    def num_views(self) -> int:
        return self.num_tiles + (self.global_view != "none")

    @property
    def padded(self) -> bool:
        return self.canvas_size != self.resized_size or self.offset != (0, 0)

    def to_json(self) -> dict:
        """A plain JSON-able dict; derived counts are included for readers without mixdata."""
        out = asdict(self)
        for key in ("resized_size", "canvas_size", "offset", "fill", "source_box", "source_size"):
            out[key] = list(out[key]) if out[key] is not None else None
        if out["source_size"] is None:
            del out["source_size"]
        out["num_tiles"], out["num_views"] = self.num_tiles, self.num_views
        return out

    @classmethod
    def from_json(cls, data: dict) -> ImagePlan:
        fields = {k: v for k, v in data.items() if k not in ("num_tiles", "num_views")}
        for key in ("resized_size", "canvas_size", "offset", "fill", "source_box", "source_size"):
            if fields.get(key) is not None:
                fields[key] = tuple(fields[key])
        made = cls(**fields)
        for key in ("num_tiles", "num_views"):
            if key in data and data[key] != getattr(made, key):
                raise ValueError(f"plan JSON is inconsistent: {key}={data[key]} but the grid "
                                 f"gives {getattr(made, key)}")
        return made


def fill_colour(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """The uint8 colour that normalises to zero: padding then looks empty to the model."""
    return tuple(min(255, max(0, round(m * 255))) for m in mean)


def plan(width: int, height: int, preset: str, *, images_in_sample: int = 1,
         mean: tuple[float, float, float] = (0.5, 0.5, 0.5), **params) -> ImagePlan:
    """Plan one width x height image under `preset`; params left out (or None) take DEFAULTS.

    Raises ValueError for an unknown preset, an unknown parameter or an impossible value.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown image preset {preset!r}; expected one of {PRESETS}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    unknown = sorted(set(params) - set(DEFAULTS[preset]))
    if unknown:
        raise ValueError(f"preset {preset!r} takes no parameter {unknown[0]!r}; "
                         f"it takes {', '.join(DEFAULTS[preset])}")
    merged = {**DEFAULTS[preset], **{k: v for k, v in params.items() if v is not None}}
    resample = merged.pop("filter")
    if resample not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, got {resample!r}")
    if preset == "mm15":
        merged["images_in_sample"] = images_in_sample
    fill, source_size = fill_colour(mean), None
    if preset == "llava-next":
        merged["pinpoints"] = tuple(tuple(p) for p in merged["pinpoints"])
        # LLaVA-NeXT pads its anyres canvas with black, before normalisation (the reference
        # and transformers' processor alike), and counts tokens from the original size
        fill, source_size = (0, 0, 0), (width, height)
    geo = GEOMETRY[preset](width, height, **merged)
    return ImagePlan(preset=preset, resized_size=geo.content, canvas_size=geo.canvas,
                     rows=geo.rows, cols=geo.cols, tile=geo.tile, global_view=geo.global_view,
                     offset=geo.offset, source_box=geo.source_box, fill=fill,
                     filter=resample, view_tokens=geo.view_tokens, source_size=source_size)


def plan_for(width: int, height: int, policy: ImagePolicy, images_in_sample: int = 1) -> ImagePlan:
    """`plan` with the parameters of a recipe stage's image policy."""
    params = {name: getattr(policy, name) for name in DEFAULTS[policy.preset]}
    return plan(width, height, policy.preset, images_in_sample=images_in_sample,
                mean=policy.mean, **params)


class ViewLimits(NamedTuple):
    """What any image of a stage can become under its policy: the side of its square views
    (None when views vary in size, as qwen2vl's do), the largest grid, the most views (tiles
    plus global view) of one image, and where a global view goes."""

    tile: int | None
    max_rows: int
    max_cols: int
    max_views: int
    global_view: str


def view_limits(policy: ImagePolicy) -> ViewLimits:
    """The stage-wide geometry a consumer needs, from the policy's parameters alone."""
    params = {**DEFAULTS[policy.preset],
              **{k: getattr(policy, k) for k in DEFAULTS[policy.preset]
                 if getattr(policy, k) is not None}}
    preset = policy.preset
    if preset == "none":
        return ViewLimits(params["max_side"], 1, 1, 1, "none")
    if preset == "qwen2vl":
        return ViewLimits(None, 1, 1, 1, "none")
    tile = params["tile"]
    if preset == "idefics3":
        n = math.ceil(min(params["longest_edge"], IDEFICS3_MAX_SIDE) / tile)
        return ViewLimits(tile, n, n, n * n + 1, "after")
    if preset == "llava-next":
        pins = params["pinpoints"]
        return ViewLimits(tile, max(h for _, h in pins) // tile, max(w for w, _ in pins) // tile,
                          max(w * h for w, h in pins) // (tile * tile) + 1, "before")
    most = params["max_tiles"]  # mm15, internvl: a 1 x n grid at most, plus the overview
    return ViewLimits(tile, most, most, most + 1, "after")
