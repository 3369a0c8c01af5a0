"""process -> bytes -> cut_tiles end to end, the JPEG fast paths, and the token layouts."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from mixdata.config import parse
from mixdata.errors import RecipeError
from mixdata.image import (
    ImagePlan,
    ImagePolicy,
    cut_tiles,
    layout,
    plan,
    plan_for,
    process,
    special_tokens,
)
from mixdata.image.placeholders import MAX_GRID


def photo_like(width, height, seed=0):
    """Smooth gradients plus mild noise: compresses and resizes like a photo."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xs / width * 200, ys / height * 200, (xs + ys) / (width + height) * 255], -1)
    noisy = base + rng.normal(0, 6, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def jpeg(image, quality=90):
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def test_jpeg_that_needs_no_change_keeps_its_bytes():
    data = jpeg(photo_like(300, 200))
    result = process(data, ImagePolicy(preset="none", max_side=384))
    assert result.data == data and result.ext == "jpg" and result.meta["passthrough"]
    assert result.plan.resized_size == (300, 200)
    # asked for lossless output: re-encoded, not passed through
    png = process(data, ImagePolicy(preset="none", max_side=384, encode="png"))
    assert png.ext == "png" and png.data != data and "passthrough" not in png.meta


def test_truncated_jpeg_is_not_passed_through():
    data = jpeg(photo_like(300, 200))
    with pytest.raises(Exception) as info:
        process(data[: len(data) * 2 // 3], ImagePolicy(preset="none", max_side=384))
    assert getattr(info.value, "reason", None) == "image_truncated"


@pytest.mark.parametrize("encode,ext", [("jpeg", "jpg"), ("png", "png"), ("webp", "webp")])
def test_output_is_encoded_at_the_plan_size(encode, ext):
    result = process(jpeg(photo_like(900, 600)), ImagePolicy(preset="none", max_side=300,
                                                             encode=encode))
    assert result.ext == ext and result.plan.resized_size == (300, 200)
    image = Image.open(io.BytesIO(result.data))
    assert image.size == (300, 200) and image.format == {"jpg": "JPEG"}.get(ext, ext.upper())


def test_draft_decode_stays_close_to_a_full_decode():
    source = photo_like(1600, 1200)
    policy = ImagePolicy(preset="idefics3", longest_edge=384, tile=128, encode="png")
    data = jpeg(source, quality=95)
    result = process(data, policy)
    assert result.meta["draft"] == 2  # 384x384 (stretched to the grid) needs 1/2, not 1/4
    full = Image.open(io.BytesIO(data)).resize(result.plan.resized_size, Image.Resampling.LANCZOS)
    ours = np.asarray(Image.open(io.BytesIO(result.data))).astype(float)
    assert np.abs(ours - np.asarray(full)).mean() < 2.0  # about one grey level


def test_cut_tiles_crops_the_processed_image_and_resizes_the_global_view():
    policy = ImagePolicy(preset="idefics3", longest_edge=256, tile=128, encode="png")
    result = process(jpeg(photo_like(500, 300)), policy)
    plan_ = result.plan
    assert (plan_.rows, plan_.cols, plan_.num_views) == (2, 2, 5)
    views = cut_tiles(result.data, ImagePlan.from_json(json.loads(json.dumps(plan_.to_json()))))
    processed = Image.open(io.BytesIO(result.data)).convert("RGB")
    pixels = np.asarray(processed)
    assert views.shape == (5, 128, 128, 3) and views.dtype == np.uint8
    assert np.array_equal(views[1], pixels[0:128, 128:256])
    assert np.array_equal(views[2], pixels[128:256, 0:128])
    # lanczos is served by torch's antialiased bicubic (see tiles.TORCH_FILTERS)
    overview = np.asarray(processed.resize((128, 128), Image.Resampling.BICUBIC))
    assert np.abs(views[4].astype(int) - overview).max() <= 1


def test_none_pads_bottom_right_with_the_mean_colour():
    policy = ImagePolicy(preset="none", max_side=64, encode="png", mean=(0.2, 0.4, 0.6))
    result = process(jpeg(photo_like(128, 64)), policy)
    views = cut_tiles(result.data, result.plan)
    assert views.shape == (1, 64, 64, 3) and result.plan.resized_size == (64, 32)
    assert (views[0, 32:] == (51, 102, 153)).all()
    assert not (views[0, :32] == (51, 102, 153)).all()


def test_qwen2vl_returns_one_view_of_its_own_size():
    result = process(jpeg(photo_like(500, 300)), ImagePolicy(preset="qwen2vl"))
    views = cut_tiles(result.data, result.plan)
    assert views.shape == (1, 308, 504, 3)
    assert layout(result.plan, 64).count("<image>") == (308 // 28) * (504 // 28)


def test_cut_tiles_refuses_bytes_of_another_size():
    result = process(jpeg(photo_like(500, 300)), ImagePolicy(preset="none", max_side=128))
    other = plan(600, 300, "none", max_side=128)
    with pytest.raises(ValueError, match="plan says"):
        cut_tiles(result.data, other)


def test_idefics3_layout_matches_the_reference_prompt():
    p = plan(700, 300, "idefics3", longest_edge=728, tile=364)
    assert (p.rows, p.cols) == (1, 2)
    a, img = "<fake_token_around_image>", "<image>"
    assert layout(p, 2) == [a, "<row_1_col_1>", img, img, a, "<row_1_col_2>", img, img, "\n",
                            "\n", a, "<global-img>", img, img, a]
    single = plan(100, 100, "idefics3", longest_edge=364, tile=364)
    assert layout(single, 1) == [a, "<global-img>", img, a]


def test_wrapped_layouts_put_the_global_view_where_the_family_does():
    llava = layout(plan(4000, 3000, "llava-next"), 1)
    assert llava[:3] == ["<img>", "<global-img>", "<image>"] and llava[-1] == "</img>"
    internvl = layout(plan(1000, 500, "internvl", max_tiles=2), 1)
    assert internvl == ["<img>", "<row_1_col_1>", "<image>", "<row_1_col_2>", "<image>", "\n",
                        "<global-img>", "<image>", "</img>"]
    assert layout(plan(50, 50, "none"), 2) == ["<img>", "<global-img>", "<image>", "<image>",
                                               "</img>"]


def test_special_tokens_cover_grids_up_to_the_limit():
    names = set(special_tokens())
    assert len(names) == len(special_tokens())
    big = plan(MAX_GRID * 10, MAX_GRID * 10, "internvl", tile=10, min_tiles=MAX_GRID ** 2,
               max_tiles=MAX_GRID ** 2)
    assert (big.rows, big.cols) == (MAX_GRID, MAX_GRID)
    assert set(layout(big, 1)) <= names | {"\n"}
    too_big = plan(1, 2000, "idefics3", tile=64, longest_edge=64 * (MAX_GRID + 1))
    with pytest.raises(ValueError, match="markers"):
        layout(too_big, 1)


def test_plan_for_reads_the_policy_and_the_images_in_the_sample():
    policy = parse(ImagePolicy, {"preset": "mm15", "tile": 336, "max_tiles": 4, "min_tiles": 1})
    assert plan_for(1000, 700, policy).num_views == 5
    assert plan_for(1000, 700, policy, images_in_sample=3).num_views == 1
    assert policy.upscale is None  # the preset's reference behaviour
    with pytest.raises(RecipeError, match="upscale"):
        parse(ImagePolicy, {"upscale": "yes"})
    with pytest.raises(ValueError, match="takes no parameter"):
        plan(10, 10, "qwen2vl", tile=4)
