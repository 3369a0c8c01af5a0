"""The loader's decode and cut: simplejpeg against Pillow, the fallbacks, the global view."""
import io

import numpy as np
import pytest
from PIL import Image
from test_image_process import jpeg, photo_like

from mixdata.image import ImagePolicy, plan, process
from mixdata.image.tiles import decode_processed, global_view, tiles_into, view_shape


def pillow_rgb(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("quality,subsampling", [(92, 2), (75, 0), (95, 1)])
def test_jpeg_decodes_to_exactly_pillows_pixels(quality, subsampling):
    out = io.BytesIO()
    photo_like(331, 197).save(out, "JPEG", quality=quality, subsampling=subsampling)
    data = out.getvalue()
    pixels = decode_processed(data, plan(331, 197, "none", max_side=331))
    assert pixels.shape == (197, 331, 3) and pixels.flags.writeable
    assert np.array_equal(pixels, pillow_rgb(data))


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grey_and_cmyk_jpegs_come_out_as_pillows_rgb(mode):
    data = jpeg(photo_like(64, 48).convert(mode))
    pixels = decode_processed(data, plan(64, 48, "none", max_side=64))
    assert pixels.shape == (48, 64, 3)
    assert np.array_equal(pixels, pillow_rgb(data))


def test_png_goes_through_pillow_and_is_writable():
    out = io.BytesIO()
    photo_like(40, 30).convert("RGBA").save(out, "PNG")
    pixels = decode_processed(out.getvalue(), plan(40, 30, "none", max_side=40))
    assert pixels.shape == (30, 40, 3) and pixels.flags.writeable


def test_size_is_checked_on_the_header_and_broken_bytes_raise():
    data = jpeg(photo_like(64, 48))
    with pytest.raises(ValueError, match="64x48, the plan says 48x64"):
        decode_processed(data[:len(data) // 2], plan(48, 64, "none", max_side=64))
    with pytest.raises((ValueError, OSError)):
        decode_processed(data[:len(data) // 2], plan(64, 48, "none", max_side=64))
    with pytest.raises((ValueError, OSError)):
        decode_processed(b"\xff\xd8garbage", plan(64, 48, "none", max_side=64))


@pytest.mark.parametrize("name,reference,tolerance", [
    ("bilinear", Image.Resampling.BILINEAR, 0), ("bicubic", Image.Resampling.BICUBIC, 1),
    ("lanczos", Image.Resampling.BICUBIC, 1), ("box", Image.Resampling.BOX, 0)])
def test_global_view_matches_pillows_filter(name, reference, tolerance):
    image = photo_like(512, 384, seed=3)
    p = plan(512, 384, "idefics3", longest_edge=512, tile=128, filter=name)
    pixels = np.array(image.resize(p.resized_size))
    out = np.zeros((128, 128, 3), np.uint8)
    global_view(pixels, p, out)
    expected = np.asarray(Image.fromarray(pixels).resize((128, 128), reference))
    assert np.abs(out.astype(int) - expected).max() <= tolerance


def test_tiles_into_fills_exactly_its_slice_of_a_batch():
    result = process(jpeg(photo_like(500, 300)),
                     ImagePolicy(preset="idefics3", longest_edge=256, tile=128))
    shape = view_shape(result.plan)
    batch = np.full((shape[0] + 2, *shape[1:]), 7, np.uint8)
    pixels = decode_processed(result.data, result.plan)
    tiles_into(pixels, result.plan, batch[1:-1])
    assert (batch[0] == 7).all() and (batch[-1] == 7).all()
    assert np.array_equal(batch[1], pixels[:128, :128])
    with pytest.raises(ValueError, match="plan says"):
        tiles_into(pixels[:, :128], result.plan, batch[1:-1])


def test_global_view_without_torchs_out_overload_gives_the_same_pixels(monkeypatch):
    import torch

    p = plan(512, 384, "idefics3", longest_edge=512, tile=128)
    pixels = np.array(photo_like(512, 384, seed=5).resize(p.resized_size))
    fast, fallback = np.zeros((128, 128, 3), np.uint8), np.zeros((128, 128, 3), np.uint8)
    global_view(pixels, p, fast)
    monkeypatch.setattr(torch.ops, "aten", object())
    global_view(pixels, p, fallback)
    assert np.array_equal(fast, fallback) and fast.any()
