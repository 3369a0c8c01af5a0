"""Grid geometry of every preset: pure arithmetic on an image's (width, height), no pixels.

Each `geometry_<preset>` reproduces the rows, columns and resized size of its model family's
reference processor (see `docs/images.md` in the team docs). They all return a `Geometry`:

- `content` (w, h): the size the source is resized to, once;
- `canvas` (w, h): the padded image the views are cut from; the content sits at `offset`;
- `rows` x `cols` tiles of `tile` px, row-major, plus an optional global view.

`upscale=False` means the content is never larger than the source along either axis; where a
preset's grid needs more pixels, the canvas is padded instead of the image being stretched.
A plan with a single view (an untiled image) has rows = cols = 1 and no global view; that
view is the whole canvas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# The reference models' values; an ImagePolicy field left as None takes these.
DEFAULTS: dict[str, dict] = {
    # Prismatic-style single view at the SigLIP resolution.
    "none": {"resize": "aspect", "max_side": 384, "min_side": None, "upscale": False,
             "filter": "bicubic"},
    # Idefics3: 4 x 364 px longest edge, LANCZOS, always rescaled to the longest edge.
    "idefics3": {"longest_edge": 1456, "tile": 364, "upscale": True, "filter": "lanczos"},
    # MM1.5 SFT dynamic splitting: 4..9 sub-images of 672 px, not split at >= 3 images.
    "mm15": {"tile": 672, "min_tiles": 4, "max_tiles": 9, "max_images_to_split": 3,
             "upscale": False, "filter": "bicubic"},
    # InternVL 1.5/2 dynamic_preprocess: 1..12 tiles of 448 px, thumbnail last.
    "internvl": {"tile": 448, "min_tiles": 1, "max_tiles": 12, "upscale": True,
                 "filter": "bicubic"},
    # LLaVA-NeXT anyres, 336 px tiles; pinpoints as [w, h], in the reference's order.
    "llava-next": {"tile": 336, "upscale": True, "filter": "bicubic",
                   "pinpoints": ((672, 336), (336, 672), (672, 672), (336, 1008), (1008, 336))},
    # Qwen2-VL smart_resize: 28 px units, 56*56 .. 28*28*1280 pixels.
    "qwen2vl": {"patch": 28, "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280,
                "upscale": True, "filter": "bicubic"},
}

IDEFICS3_MAX_SIDE = 4096  # the reference's absolute cap after the longest-edge rescale


@dataclass(frozen=True)
class Geometry:
    content: tuple[int, int]
    canvas: tuple[int, int]
    rows: int
    cols: int
    tile: int
    global_view: str = "none"          # none | before | after
    offset: tuple[int, int] = (0, 0)
    source_box: tuple[float, float, float, float] | None = None  # crop of the source, if any
    view_tokens: int | None = None     # placeholders per view fixed by the geometry (qwen2vl)


def _no_upscale(size: tuple[int, int], width: int, height: int, upscale: bool) -> tuple[int, int]:
    """Clip the content to the source along each axis unless upscaling was asked for."""
    if upscale:
        return size
    return min(size[0], width), min(size[1], height)


def _single(content, canvas, tile, offset=(0, 0), **extra) -> Geometry:
    return Geometry(content=content, canvas=canvas, rows=1, cols=1, tile=tile, offset=offset,
                    **extra)


def _grid(content, rows, cols, tile, global_view, offset=(0, 0)) -> Geometry:
    if rows * cols == 1 and global_view == "after":
        return _single(content, (tile, tile), tile, offset)
    return Geometry(content=content, canvas=(cols * tile, rows * tile), rows=rows, cols=cols,
                    tile=tile, global_view=global_view, offset=offset)


def _positive(**values) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


# --- none ---------------------------------------------------------------------------------

def _scale_longest(width: int, height: int, side: int, upscale: bool) -> tuple[int, int]:
    if not upscale and max(width, height) <= side:
        return width, height
    if width >= height:
        return side, max(1, round(height * side / width))
    return max(1, round(width * side / height)), side


def geometry_none(width: int, height: int, *, resize: str, max_side: int, min_side: int | None,
                  upscale: bool) -> Geometry:
    """One max_side x max_side view; `resize` says how the image gets into it (Prismatic)."""
    side = max_side
    _positive(max_side=side)
    if resize in ("aspect", "letterbox"):
        w, h = _scale_longest(width, height, side, upscale)
        if min_side:  # raise the short side only, never past the view
            floor = min(min_side, side)
            w, h = (max(w, floor), h) if w < h else (w, max(h, floor))
        offset = ((side - w) // 2, (side - h) // 2) if resize == "letterbox" else (0, 0)
        return _single((w, h), (side, side), side, offset)
    if resize == "naive":
        return _single(_no_upscale((side, side), width, height, upscale), (side, side), side)
    if resize == "crop":
        scale = side / min(width, height)
        if not upscale:
            scale = min(scale, 1.0)
        box_w, box_h = min(width, side / scale), min(height, side / scale)
        x0, y0 = (width - box_w) / 2, (height - box_h) / 2
        content = (min(side, round(box_w * scale)), min(side, round(box_h * scale)))
        return _single(content, (side, side), side, source_box=(x0, y0, x0 + box_w, y0 + box_h))
    raise ValueError(f"resize must be aspect, naive, letterbox or crop, got {resize!r}")


# --- idefics3 -----------------------------------------------------------------------------

def _rescale_to_longest(width: int, height: int, longest: int) -> tuple[int, int]:
    """Longest side to `longest`, short side int(long / aspect) made even (reference step 1)."""
    aspect = width / height
    if width >= height:
        short = int(longest / aspect)
        return longest, max(1, short + short % 2)
    short = int(longest * aspect)
    return max(1, short + short % 2), longest


def _cap_longest(width: int, height: int, cap: int) -> tuple[int, int]:
    aspect = width / height
    if width >= height and width > cap:
        return cap, max(1, int(cap / aspect))
    if height > width and height > cap:
        return max(1, int(cap * aspect)), cap
    return width, height


def _round_up_to_tiles(width: int, height: int, tile: int) -> tuple[int, int]:
    """Long side up to a multiple of the tile, then the short side from it (reference step 2)."""
    aspect = width / height
    if width >= height:
        w = math.ceil(width / tile) * tile
        return w, max(tile, math.ceil(int(w / aspect) / tile) * tile)
    h = math.ceil(height / tile) * tile
    return max(tile, math.ceil(int(h * aspect) / tile) * tile), h


def geometry_idefics3(width: int, height: int, *, longest_edge: int, tile: int,
                      upscale: bool) -> Geometry:
    """Idefics3 / SmolVLM: rescale to the longest edge, round up to tiles, global view last."""
    _positive(longest_edge=longest_edge, tile=tile)
    longest = longest_edge if upscale else min(longest_edge, max(width, height))
    w, h = _cap_longest(*_rescale_to_longest(width, height, longest), IDEFICS3_MAX_SIDE)
    w, h = _round_up_to_tiles(w, h, tile)
    content = _no_upscale((w, h), width, height, upscale)
    return _grid(content, h // tile, w // tile, tile, "after")


# --- mm15 ---------------------------------------------------------------------------------

def _mm15_key(width: int, height: int, rows: int, cols: int, tile: int, upscale: bool):
    scale = min(cols * tile / width, rows * tile / height)
    used = scale if upscale else min(scale, 1.0)
    padding = rows * cols * tile * tile - round(width * used) * round(height * used)
    # equal padding (a small image in any 4-tile grid): the grid shaped most like the image
    shape = abs(math.log(cols * height / (rows * width)))
    if scale >= 1:  # holds the image without downscaling: least padding wins
        return (0, padding, shape, rows * cols)
    return (1, -scale, padding, shape, rows * cols)  # else the least resolution lost


def geometry_mm15(width: int, height: int, *, tile: int, min_tiles: int, max_tiles: int,
                  max_images_to_split: int, upscale: bool, images_in_sample: int = 1) -> Geometry:
    """MM1.5 dynamic splitting over grids with min_tiles <= rows*cols <= max_tiles."""
    _positive(tile=tile, min_tiles=min_tiles, max_tiles=max_tiles,
              max_images_to_split=max_images_to_split)
    if min_tiles > max_tiles:
        raise ValueError(f"min_tiles ({min_tiles}) is above max_tiles ({max_tiles})")
    if images_in_sample >= max_images_to_split:
        grids = [(1, 1)]
    else:
        grids = [(r, c) for r in range(1, max_tiles + 1) for c in range(1, max_tiles + 1)
                 if min_tiles <= r * c <= max_tiles]
    rows, cols = min(grids, key=lambda g: _mm15_key(width, height, *g, tile, upscale))
    scale = min(cols * tile / width, rows * tile / height)
    if not upscale:
        scale = min(scale, 1.0)
    content = (min(cols * tile, max(1, round(width * scale))),
               min(rows * tile, max(1, round(height * scale))))
    return _grid(content, rows, cols, tile, "after")


# --- internvl -----------------------------------------------------------------------------

def _internvl_ratio(width: int, height: int, tile: int, min_tiles: int, max_tiles: int):
    """(cols, rows) whose cols/rows is closest to W/H; ties go to the later grid when the
    image area exceeds half of it.

    This is transformers' GotOcr2 `get_optimal_tiled_canvas`, which InternVL's processor uses:
    candidates column-major ((1, 1), (1, 2), ...), stably sorted by tile count. InternVL's own
    `find_closest_aspect_ratio` sorts a set instead, whose order differs on ties.
    """
    candidates = [(i, j) for i in range(1, max_tiles + 1) for j in range(1, max_tiles + 1)
                  if min_tiles <= i * j <= max_tiles]
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for i, j in sorted(candidates, key=lambda r: r[0] * r[1]):
        diff = abs(aspect - i / j)
        if diff < best_diff:
            best, best_diff = (i, j), diff
        elif diff == best_diff and area > 0.5 * tile * tile * i * j:
            best = (i, j)
    return best


def geometry_internvl(width: int, height: int, *, tile: int, min_tiles: int, max_tiles: int,
                      upscale: bool) -> Geometry:
    """InternVL: stretch to the closest-ratio grid, tiles row-major, thumbnail last."""
    _positive(tile=tile, min_tiles=min_tiles, max_tiles=max_tiles)
    if min_tiles > max_tiles:
        raise ValueError(f"min_tiles ({min_tiles}) is above max_tiles ({max_tiles})")
    cols, rows = _internvl_ratio(width, height, tile, min_tiles, max_tiles)
    content = _no_upscale((cols * tile, rows * tile), width, height, upscale)
    return _grid(content, rows, cols, tile, "after")


# --- llava-next ---------------------------------------------------------------------------

def _best_pinpoint(width: int, height: int, pinpoints) -> tuple[int, int]:
    """Maximise min(w*s * h*s, w*h); on a tie, the least waste (select_best_resolution)."""
    best, best_effective, best_waste = None, 0, float("inf")
    for pin_w, pin_h in pinpoints:
        scale = min(pin_w / width, pin_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = pin_w * pin_h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (pin_w, pin_h), effective, waste
    return best


def geometry_llava_next(width: int, height: int, *, tile: int, pinpoints,
                        upscale: bool) -> Geometry:
    """LLaVA-NeXT anyres: fit into the best pinpoint, pad centred, base image first."""
    _positive(tile=tile)
    if not pinpoints or any(p <= 0 or p % tile for pin in pinpoints for p in pin):
        raise ValueError(f"pinpoints must be [w, h] pairs of positive multiples of tile ({tile})")
    pin_w, pin_h = _best_pinpoint(width, height, pinpoints)
    scale_w, scale_h = pin_w / width, pin_h / height
    if scale_w < scale_h:
        w, h = pin_w, min(math.ceil(height * scale_w), pin_h)
    else:
        w, h = min(math.ceil(width * scale_h), pin_w), pin_h
    w, h = _no_upscale((w, h), width, height, upscale)
    offset = ((pin_w - w) // 2, (pin_h - h) // 2)
    return Geometry(content=(w, h), canvas=(pin_w, pin_h), rows=pin_h // tile,
                    cols=pin_w // tile, tile=tile, global_view="before", offset=offset)


# --- qwen2vl ------------------------------------------------------------------------------

def geometry_qwen2vl(width: int, height: int, *, patch: int, min_pixels: int, max_pixels: int,
                     upscale: bool) -> Geometry:
    """Qwen2-VL smart_resize: sides multiples of `patch`, min_pixels <= h*w <= max_pixels.

    No tiles: one view of its own size, with (h / patch) * (w / patch) placeholders.
    """
    _positive(patch=patch, min_pixels=min_pixels, max_pixels=max_pixels)
    # a side under patch / 2 rounds to 0 here, as in the reference: the min_pixels branch
    # then scales both sides up together, which keeps the aspect ratio
    h = round(height / patch) * patch
    w = round(width / patch) * patch
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(patch, math.floor(height / beta / patch) * patch)
        w = max(patch, math.floor(width / beta / patch) * patch)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / patch) * patch
        w = math.ceil(width * beta / patch) * patch
    content = _no_upscale((w, h), width, height, upscale)
    return _single(content, (w, h), patch, view_tokens=(h // patch) * (w // patch))


GEOMETRY = {
    "none": geometry_none,
    "idefics3": geometry_idefics3,
    "mm15": geometry_mm15,
    "internvl": geometry_internvl,
    "llava-next": geometry_llava_next,
    "qwen2vl": geometry_qwen2vl,
}
