"""One generated file per decoding pitfall (docs/images.md), each giving the documented result."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from mixdata.errors import RecordRejected
from mixdata.image import ImagePolicy, probe, process
from mixdata.image.processing import decode_planned

LOSSLESS = ImagePolicy(preset="none", max_side=4096, encode="png")


def encoded(image, fmt, **options):
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def decoded(data, policy=LOSSLESS):
    image, plan, meta = decode_planned(data, policy)
    return np.asarray(image.convert("RGB")).astype(int), plan, meta


def rejected(data, policy=LOSSLESS):
    with pytest.raises(RecordRejected) as info:
        process(data, policy)
    return info.value.reason


# --- EXIF orientation ---------------------------------------------------------------------

# Displayed image: 60x40, red top-left quadrant, the rest blue. For each orientation the
# stored pixels are the displayed ones put through the inverse of the orientation's transpose.
T = Image.Transpose
STORE = {1: None, 2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM,
         5: T.TRANSPOSE, 6: T.ROTATE_90, 7: T.TRANSVERSE, 8: T.ROTATE_270}


def displayed(width=60, height=40):
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:] = (0, 0, 255)
    pixels[: height // 2, : width // 2] = (255, 0, 0)
    return Image.fromarray(pixels)


def oriented_jpeg(orientation, width=60, height=40):
    image = displayed(width, height)
    if STORE[orientation] is not None:
        image = image.transpose(STORE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(image, "JPEG", quality=95, exif=exif.tobytes())


def assert_red_top_left(pixels):
    height, width, _ = pixels.shape
    assert pixels[height // 4, width // 4, 0] > 200 and pixels[height // 4, width // 4, 2] < 60
    assert pixels[3 * height // 4, 3 * width // 4, 2] > 200
    assert pixels[height // 4, 3 * width // 4, 2] > 200


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    data = oriented_jpeg(orientation)
    assert probe(data) == (60, 40, "JPEG")
    pixels, plan, meta = decoded(data)
    assert pixels.shape == (40, 60, 3) and plan.resized_size == (60, 40)
    assert_red_top_left(pixels)
    assert meta.get("orientation", 1) == orientation


@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_jpeg_draft_request_swaps_for_rotated_images(orientation):
    data = oriented_jpeg(orientation, width=1600, height=1200)
    pixels, _plan, meta = decoded(data, ImagePolicy(preset="none", max_side=400))
    # 1/4 gives exactly 400x300; an unswapped request (400, 300) against the stored 1200x1600
    # of orientations 6 and 8 would only allow 1/2
    assert meta["draft"] == 4
    assert pixels.shape == (300, 400, 3)
    assert_red_top_left(pixels)


# --- modes --------------------------------------------------------------------------------

def cmyk_profile() -> bytes:
    """A minimal ICC v2 CMYK printer profile (lut8 AToB0 into Lab) that maps pure cyan to
    red, so its use is unmistakable next to Pillow's naive conversion."""
    def lab(l_star, a, b):
        return bytes([round(l_star * 255 / 100), a + 128, b + 128])
    clut = b""
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    clut += (lab(0, 0, 0) if k else lab(54, 80, 67) if c
                             else lab(50, 0, 0) if m or y else lab(100, 0, 0))
    identity = bytes(range(256))
    matrix = b"".join(struct.pack(">i", 65536 if i % 4 == 0 else 0) for i in range(9))
    lut = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + matrix + identity * 4 + clut + identity * 3
    text = b"mixdata test CMYK\x00"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)
    wtpt = b"XYZ " + bytes(4) + struct.pack(">iii", 63190, 65536, 54061)
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"A2B0", lut)]
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for sig, data in tags:
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data + bytes(-len(data) % 4)
    size = offset + len(body)
    header = (struct.pack(">I", size) + bytes(4) + struct.pack(">I", 0x02100000) + b"prtr"
              + b"CMYK" + b"Lab " + bytes(12) + b"acsp" + bytes(24) + struct.pack(">I", 0)
              + struct.pack(">iii", 63190, 65536, 54061) + bytes(48))
    return header + struct.pack(">I", len(tags)) + table + body


def cyan_cmyk():
    return Image.new("CMYK", (32, 32), (255, 0, 0, 0))


def test_cmyk_with_profile_converts_through_it():
    profile = cmyk_profile()
    ImageCms.ImageCmsProfile(io.BytesIO(profile))  # the profile itself is valid
    pixels, _, meta = decoded(encoded(cyan_cmyk(), "JPEG", quality=95, icc_profile=profile))
    assert meta["colour"] == "cmyk-icc"
    r, g, b = pixels[16, 16]
    assert r > 200 and g < 90 and b < 90  # red, as the profile says


def test_cmyk_without_profile_converts_naively():
    pixels, _, meta = decoded(encoded(cyan_cmyk(), "JPEG", quality=95))
    assert meta["colour"] == "cmyk-naive"
    r, g, b = pixels[16, 16]
    assert r < 30 and g > 225 and b > 225  # cyan


def test_palette_transparency_goes_over_white():
    image = Image.new("P", (20, 10), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (10, 0, 20, 10))
    pixels, _, meta = decoded(encoded(image, "PNG", transparency=0))
    assert meta["mode"] == "P"
    assert (pixels[5, 2] == (255, 255, 255)).all() and (pixels[5, 15] == (255, 0, 0)).all()


def test_la_goes_over_white():
    image = Image.new("LA", (20, 10), (40, 255))
    image.paste((40, 0), (0, 0, 10, 10))
    pixels, _, _ = decoded(encoded(image, "PNG"))
    assert (pixels[5, 2] == 255).all() and (pixels[5, 15] == 40).all()


def test_rgba_goes_over_white():
    image = Image.new("RGBA", (20, 10), (0, 0, 255, 128))
    image.paste((0, 0, 0, 0), (0, 0, 10, 10))
    pixels, _, _ = decoded(encoded(image, "PNG"))
    assert (pixels[5, 2] == 255).all()
    assert abs(pixels[5, 15, 0] - 127) <= 1 and pixels[5, 15, 2] == 255


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 255, 0x8000, 0xFFFF]], np.uint16).repeat(4, 0)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    pixels, _, meta = decoded(encoded(image, "PNG"))
    assert meta["mode"].startswith("I")
    assert list(pixels[0, :, 0]) == [0, 0, 128, 255]


def test_animated_gif_takes_first_frame_and_says_so():
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    pixels, _, meta = decoded(data)
    assert meta["animated"] is True and meta["frames"] == 3
    assert pixels[8, 8, 0] > 200 and pixels[8, 8, 1] < 50


# --- rejects ------------------------------------------------------------------------------

def photo(width=64, height=48):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width, height) -> bytes:
    """A PNG that claims a size in its header and holds almost no pixel data: the first bytes
    of a compressed first row, then the file ends."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    start = zlib.compress(bytes(1 + 3 * min(width, 1000)))[:8]
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", start)


def test_truncated_jpeg_is_rejected():
    data = encoded(photo(), "JPEG")
    assert rejected(data[: len(data) // 2]) == "image_truncated"


def test_header_claiming_100k_square_is_a_bomb():
    assert rejected(png_header(100_000, 100_000)) == "image_bomb"


def test_pixel_cap_comes_from_the_policy_and_is_checked_before_decoding():
    # the header holds no pixel data: decoding it would give image_truncated, not image_bomb
    assert rejected(png_header(200, 200), ImagePolicy(pixel_cap=30_000)) == "image_bomb"
    assert rejected(png_header(200, 200)) == "image_truncated"


def test_strip_is_rejected_for_its_aspect_before_decoding():
    strip = Image.new("RGB", (1, 5000), (9, 9, 9))
    assert rejected(encoded(strip, "PNG")) == "image_aspect"
    assert rejected(png_header(1, 5000)) == "image_aspect"
    assert process(encoded(strip, "PNG"), ImagePolicy(max_aspect=5000)).plan.num_views == 1


@pytest.mark.parametrize("data,reason", [(b"", "image_empty"), (b"GIF89a-not-really", "image_format"),
                                         (b"hello world" * 10, "image_format")])
def test_unknown_or_empty_input_is_rejected(data, reason):
    assert rejected(data) == reason
    with pytest.raises(RecordRejected):
        probe(data)
