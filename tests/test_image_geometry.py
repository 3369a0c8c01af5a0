"""Geometry tables: every preset over the same sizes, checked against the formulas of
docs/images.md, a few hand-worked rows, and (when installed) transformers' Idefics3 processor."""
import math

import pytest

from mixdata.image import DEFAULTS, plan

# 1xN and Nx1 strips, tiny, huge and square images, and sizes just past tile boundaries.
SIZES = [
    (1, 1), (1, 2), (2, 1), (1, 20), (20, 1), (1, 5000), (5000, 1), (7, 3000), (3000, 7),
    (2, 3), (16, 16), (27, 29), (100, 100), (301, 299), (333, 777), (364, 364), (365, 364),
    (640, 480), (480, 640), (800, 600), (729, 1456), (1275, 1650), (1456, 1092), (1456, 1456),
    (1457, 1093), (1920, 1080), (1080, 1920), (2048, 2048), (2550, 3300), (4000, 3000),
    (3000, 4000), (4096, 4096), (5000, 2100), (12000, 9000), (60000, 40000), (100000, 100000),
]
PRESETS = list(DEFAULTS)


def check_common(p, width, height):
    """What every plan promises: content inside the canvas, tiles covering the canvas."""
    cw, ch = p.canvas_size
    x, y = p.offset
    assert p.resized_size[0] >= 1 and p.resized_size[1] >= 1
    assert x + p.resized_size[0] <= cw and y + p.resized_size[1] <= ch
    if p.num_views == 1:
        assert (p.rows, p.cols, p.global_view) == (1, 1, "none")
        assert cw % p.tile == 0 and ch % p.tile == 0
    else:
        assert (cw, ch) == (p.cols * p.tile, p.rows * p.tile)
    assert p.num_views == p.rows * p.cols + (p.global_view != "none")


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_preset_plans_every_size(preset, size):
    p = plan(*size, preset)
    check_common(p, *size)
    assert p.preset == preset and p.filter == DEFAULTS[preset]["filter"]


@pytest.mark.parametrize("width,height", SIZES)
def test_none_scales_longest_side_without_upscaling(width, height):
    p = plan(width, height, "none")
    side = DEFAULTS["none"]["max_side"]
    long, short = max(width, height), min(width, height)
    if long <= side:
        expected = (width, height)
    else:
        scaled = max(1, round(short * side / long))
        expected = (side, scaled) if width >= height else (scaled, side)
    assert p.resized_size == expected
    assert p.canvas_size == (side, side) and p.offset == (0, 0) and p.tile == side


def test_none_resize_modes():
    aspect = plan(1000, 500, "none", max_side=100)
    assert aspect.resized_size == (100, 50) and aspect.offset == (0, 0)
    box = plan(1000, 500, "none", max_side=100, resize="letterbox")
    assert box.resized_size == (100, 50) and box.offset == (0, 25)
    naive = plan(1000, 500, "none", max_side=100, resize="naive")
    assert naive.resized_size == (100, 100)
    crop = plan(1000, 500, "none", max_side=100, resize="crop")
    assert crop.resized_size == (100, 100) and crop.source_box == (250, 0, 750, 500)
    small = plan(40, 30, "none", max_side=100, resize="naive")
    assert small.resized_size == (40, 30)  # no upscale unless asked
    assert plan(40, 30, "none", max_side=100, upscale=True).resized_size == (100, 75)
    assert plan(1000, 100, "none", max_side=100, min_side=20).resized_size == (100, 20)


def idefics3_formula(width, height, longest, tile):
    """images.md: longest edge to `longest`, short side int(long/aspect) made even (at least 1),
    capped at 4096, then each side rounded up to the tile; one tile means no grid."""
    long, short = max(width, height), min(width, height)
    short = int(longest * short / long)
    short = max(1, short + short % 2)
    long = longest
    if long > 4096:
        short, long = max(1, int(short * 4096 / long)), 4096
    short_tiles, long_tiles = max(1, math.ceil(short / tile)), math.ceil(long / tile)
    rows, cols = (short_tiles, long_tiles) if width >= height else (long_tiles, short_tiles)
    return rows, cols


@pytest.mark.parametrize("longest,tile", [(1456, 364), (2048, 512), (1536, 384), (364, 364)])
@pytest.mark.parametrize("width,height", SIZES)
def test_idefics3_grid_follows_the_formula(width, height, longest, tile):
    p = plan(width, height, "idefics3", longest_edge=longest, tile=tile)
    rows, cols = idefics3_formula(width, height, longest, tile)
    if rows * cols == 1:
        assert p.num_views == 1 and p.resized_size == (tile, tile)
    else:
        assert (p.rows, p.cols, p.global_view) == (rows, cols, "after")
        assert p.resized_size == p.canvas_size == (cols * tile, rows * tile)


@pytest.mark.parametrize("size,grid,resized", [
    ((4000, 3000), (3, 4), (1456, 1092)), ((3000, 4000), (4, 3), (1092, 1456)),
    ((100, 100), (4, 4), (1456, 1456)), ((1920, 1080), (3, 4), (1456, 1092)),
    ((1, 5000), (4, 1), (364, 1456)),
])
def test_idefics3_hand_worked(size, grid, resized):
    p = plan(*size, "idefics3")
    assert (p.rows, p.cols) == grid and p.resized_size == resized
    assert p.num_views == grid[0] * grid[1] + 1


def mm15_candidates(mn, mx):
    return [(r, c) for r in range(1, mx + 1) for c in range(1, mx + 1) if mn <= r * c <= mx]


@pytest.mark.parametrize("width,height", SIZES)
def test_mm15_picks_least_padding_or_least_loss(width, height):
    tile = DEFAULTS["mm15"]["tile"]
    p = plan(width, height, "mm15")
    chosen = (p.rows, p.cols) if p.num_views > 1 else (1, 1)

    def scale(g):
        return min(g[1] * tile / width, g[0] * tile / height)

    grids = mm15_candidates(4, 9)
    assert chosen in grids
    fitting = [g for g in grids if scale(g) >= 1]
    if fitting:  # least padding: with no upscale, the smallest canvas that holds the image
        assert chosen in fitting
        assert chosen[0] * chosen[1] == min(g[0] * g[1] for g in fitting)
        assert p.resized_size == (width, height)
    else:
        assert scale(chosen) == max(scale(g) for g in grids)
    assert p.global_view == "after"


def test_mm15_does_not_split_three_images():
    p = plan(4000, 3000, "mm15", images_in_sample=3)
    assert p.num_views == 1 and p.resized_size == (672, 504)
    assert plan(4000, 3000, "mm15", images_in_sample=2).num_views == 10


@pytest.mark.parametrize("width,height", SIZES)
def test_internvl_picks_closest_ratio(width, height):
    tile = DEFAULTS["internvl"]["tile"]
    p = plan(width, height, "internvl")
    rows, cols = (p.rows, p.cols)
    best = min(abs(width / height - i / j) for i in range(1, 13) for j in range(1, 13) if i * j <= 12)
    assert abs(width / height - cols / rows) == best
    assert p.resized_size == p.canvas_size == (cols * tile, rows * tile)
    assert p.global_view == ("after" if rows * cols > 1 else "none")


@pytest.mark.parametrize("side,grid", [(600, (1, 1)), (800, (2, 2)), (1000, (3, 3))])
def test_internvl_tie_prefers_larger_grid_for_large_images(side, grid):
    p = plan(side, side, "internvl")
    assert (p.rows, p.cols) == grid


@pytest.mark.parametrize("width,height", SIZES)
def test_llava_next_maximises_effective_resolution(width, height):
    pins = DEFAULTS["llava-next"]["pinpoints"]
    p = plan(width, height, "llava-next")

    def effective(pin):
        s = min(pin[0] / width, pin[1] / height)
        return min(int(width * s) * int(height * s), width * height)

    assert effective(p.canvas_size) == max(effective(pin) for pin in pins)
    w, h = p.resized_size
    cw, ch = p.canvas_size
    assert w == cw or h == ch  # fitted: one side touches the pinpoint
    assert p.offset == ((cw - w) // 2, (ch - h) // 2)
    assert p.global_view == "before" and p.rows * p.tile == ch and p.cols * p.tile == cw


def test_llava_next_hand_worked():
    p = plan(4000, 3000, "llava-next")
    assert p.canvas_size == (672, 672) and (p.rows, p.cols) == (2, 2)
    assert p.resized_size[0] == 672 and p.num_views == 5


@pytest.mark.parametrize("width,height", SIZES)
def test_qwen2vl_rounds_to_28_within_pixel_bounds(width, height):
    d = DEFAULTS["qwen2vl"]
    p = plan(width, height, "qwen2vl")
    w, h = p.canvas_size
    assert w % 28 == 0 and h % 28 == 0 and p.resized_size == (w, h)
    assert w * h <= d["max_pixels"]
    if min(width, height) >= 28:
        assert w * h >= d["min_pixels"]
    if d["min_pixels"] <= round(width / 28) * round(height / 28) * 784 <= d["max_pixels"] \
            and min(width, height) >= 14:
        assert (w, h) == (round(width / 28) * 28, round(height / 28) * 28)
    assert p.view_tokens == (w // 28) * (h // 28) and p.num_views == 1


def test_qwen2vl_hand_worked():
    assert plan(4000, 3000, "qwen2vl").resized_size == (1148, 840)
    assert plan(100, 100, "qwen2vl").resized_size == (112, 112)


@pytest.mark.parametrize("preset,params", [
    ("none", {"max_side": 0}), ("idefics3", {"tile": -1}), ("mm15", {"min_tiles": 5, "max_tiles": 4}),
    ("llava-next", {"pinpoints": [[500, 336]]}), ("none", {"resize": "stretch"}),
    ("internvl", {"longest_edge": 10}), ("qwen2vl", {"filter": "nearest"}),
])
def test_bad_parameters_are_errors(preset, params):
    with pytest.raises(ValueError):
        plan(100, 100, preset, **params)


# --- transformers' Idefics3ImageProcessor, when it is installed -----------------------------

HF_SIZES = [(1, 1), (5, 300), (364, 364), (365, 200), (640, 480), (480, 640), (1000, 999),
            (1456, 1092), (1457, 1093), (2000, 700), (700, 2000), (1275, 1650)]


@pytest.mark.parametrize("longest,tile", [(1456, 364), (2048, 512)])
def test_idefics3_matches_transformers(longest, tile):
    transformers = pytest.importorskip("transformers")
    np = pytest.importorskip("numpy")
    from PIL import Image
    cls = getattr(transformers, "Idefics3ImageProcessorPil", None) or \
        transformers.Idefics3ImageProcessor
    hf = cls(size={"longest_edge": longest}, max_image_size={"longest_edge": tile},
             do_image_splitting=True)
    for width, height in HF_SIZES + SIZES[:12]:
        p = plan(width, height, "idefics3", longest_edge=longest, tile=tile)
        image = Image.fromarray(np.zeros((height, width, 3), np.uint8))
        out = hf(images=[image], return_row_col_info=True, return_tensors="np")
        views = out["pixel_values"].shape[1]
        hf_grid = (out["rows"][0][0], out["cols"][0][0])
        ours = (0, 0) if p.num_views == 1 else (p.rows, p.cols)  # HF reports no grid as 0x0
        assert (ours, p.num_views) == (hf_grid, views), (width, height)
