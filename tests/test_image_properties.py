"""Property tests of the pure cores: plans, tiles and token layouts."""
import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mixdata.image import (
    ImagePlan,
    image_token_count,
    layout,
    plan,
    special_tokens,
    tiles_from_image,
)
from mixdata.image.placeholders import GLOBAL, IMAGE

sizes = st.tuples(st.integers(1, 3000), st.integers(1, 3000))
small_sizes = st.tuples(st.integers(1, 400), st.integers(1, 400))


@st.composite
def preset_params(draw, small=False):
    """A preset with parameters, small enough (when asked) to cut real pixels quickly."""
    preset = draw(st.sampled_from(["none", "idefics3", "mm15", "internvl", "llava-next",
                                   "qwen2vl"]))
    tile = draw(st.sampled_from([16, 32, 48])) if small else draw(st.sampled_from([224, 364, 448]))
    upscale = draw(st.booleans())
    if preset == "none":
        params = {"max_side": tile, "resize": draw(st.sampled_from(["aspect", "naive",
                                                                    "letterbox", "crop"]))}
    elif preset == "idefics3":
        params = {"tile": tile, "longest_edge": tile * draw(st.integers(1, 4))}
    elif preset in ("mm15", "internvl"):
        low = draw(st.integers(1, 4))
        params = {"tile": tile, "min_tiles": low, "max_tiles": low + draw(st.integers(0, 8))}
    elif preset == "llava-next":
        pins = draw(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3)), min_size=1,
                             max_size=5))
        params = {"tile": tile, "pinpoints": [[c * tile, r * tile] for c, r in pins]}
    else:
        params = {"patch": 28 if not small else 14, "max_pixels": (tile * 4) ** 2,
                  "min_pixels": draw(st.sampled_from([56 * 56, 14 * 14]))}
    return preset, {**params, "upscale": upscale}


@settings(max_examples=300, deadline=None)
@given(sizes, preset_params())
def test_views_cover_the_canvas_exactly(size, preset_and_params):
    preset, params = preset_and_params
    p = plan(*size, preset, **params)
    (cw, ch), (w, h), (x, y) = p.canvas_size, p.resized_size, p.offset
    assert x >= 0 and y >= 0 and x + w <= cw and y + h <= ch
    if p.num_views == 1:
        assert cw % p.tile == 0 and ch % p.tile == 0
    else:
        assert (cw, ch) == (p.cols * p.tile, p.rows * p.tile)
    assert ImagePlan.from_json(json.loads(json.dumps(p.to_json()))) == p


@settings(max_examples=300, deadline=None)
@given(sizes, preset_params())
def test_nothing_is_upscaled_unless_asked(size, preset_and_params):
    preset, params = preset_and_params
    params["upscale"] = False
    p = plan(*size, preset, **params)
    width, height = size
    if p.source_box:  # a crop: the content is at most the cropped region
        x0, y0, x1, y1 = p.source_box
        width, height = x1 - x0, y1 - y0
    assert p.resized_size[0] <= width and p.resized_size[1] <= height


@settings(max_examples=300, deadline=None)
@given(sizes, preset_params(), st.integers(1, 200))
def test_token_count_matches_layout(size, preset_and_params, tokens_per_tile):
    preset, params = preset_and_params
    p = plan(*size, preset, **params)
    symbols = layout(p, tokens_per_tile)
    per_view = p.view_tokens or tokens_per_tile
    assert symbols.count(IMAGE) == image_token_count(p, tokens_per_tile) == p.num_views * per_view
    assert set(symbols) <= set(special_tokens()) | {"\n"}
    # every view is a marker followed by exactly its placeholders
    markers = [i for i, s in enumerate(symbols) if s == GLOBAL or s.startswith("<row_")]
    assert len(markers) == p.num_views
    for i in markers:
        run = symbols[i + 1:i + 1 + per_view]
        assert run == [IMAGE] * per_view and IMAGE not in symbols[i + 1 + per_view:i + 2 + per_view]
    assert symbols.count("\n") >= (p.rows if p.num_views > 1 else 0)


def coordinate_image(width, height):
    """Each pixel encodes its position, so any misplaced tile shows."""
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs % 251, ys % 251, (xs // 251 + 7 * (ys // 251)) % 256], -1)
    return Image.fromarray(pixels.astype(np.uint8))


@settings(max_examples=120, deadline=None)
@given(small_sizes, preset_params(small=True))
def test_tiles_are_the_canvas_cut_row_major(size, preset_and_params):
    preset, params = preset_and_params
    p = plan(*size, preset, **params)
    image = coordinate_image(*p.resized_size)
    views = tiles_from_image(image, p)
    (cw, ch), (x, y), t = p.canvas_size, p.offset, p.tile
    canvas = np.empty((ch, cw, 3), np.uint8)
    canvas[:] = p.fill
    canvas[y:y + image.height, x:x + image.width] = np.asarray(image)
    assert views.dtype == np.uint8 and views.shape[0] == p.num_views
    if p.num_views == 1:
        assert np.array_equal(views[0], canvas)
        return
    first = 1 if p.global_view == "before" else 0
    for k in range(p.num_tiles):
        r, c = divmod(k, p.cols)
        assert np.array_equal(views[first + k], canvas[r * t:(r + 1) * t, c * t:(c + 1) * t])
    overview = views[0] if first else views[-1]
    assert overview.shape == (t, t, 3)
