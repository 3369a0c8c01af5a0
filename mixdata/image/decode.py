"""Safe decoding: every check that needs only the header runs before any pixel is decoded.

Pillow's global limits (MAX_IMAGE_PIXELS, LOAD_TRUNCATED_IMAGES) are never changed: the pixel
cap is the recipe's, checked here, and Pillow's own hard limit (2 x MAX_IMAGE_PIXELS at open)
also reads as `image_bomb`. Every failure is a `RecordRejected` with one of the reasons
`image_empty`, `image_format`, `image_bomb`, `image_aspect`, `image_truncated`.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from ..errors import RecordRejected

JPEG_FORMATS = ("JPEG", "MPO")
WHITE = (255, 255, 255)
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that exchange width and height


@dataclass(frozen=True)
class Header:
    """What the file's header says: stored size, format, mode and EXIF orientation."""

    width: int
    height: int
    format: str
    mode: str
    orientation: int = 1

    @property
    def swaps(self) -> bool:
        return self.orientation in _SWAPPING_ORIENTATIONS

    @property
    def oriented_size(self) -> tuple[int, int]:
        """(width, height) as displayed, after the EXIF transpose."""
        return (self.height, self.width) if self.swaps else (self.width, self.height)


def open_image(data: bytes) -> Image.Image:
    """Open lazily (header only). Raises RecordRejected for empty, unknown or bomb input."""
    if not data:
        raise RecordRejected("image_empty", "the image has no bytes")
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise RecordRejected("image_bomb", f"refused by Pillow's own limit: {err}") from None
    except UnidentifiedImageError:
        raise RecordRejected("image_format", "not an image format Pillow can identify") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise RecordRejected("image_format", f"unreadable header: {err}") from None


def _orientation(image: Image.Image) -> int:
    """EXIF orientation from the header. PNG's getexif() would decode the whole image to look
    for a late eXIf chunk, so for PNG only an eXIf seen while reading the header counts."""
    try:
        if image.format == "PNG":
            exif = Image.Exif()
            if image.info.get("exif"):
                exif.load(image.info["exif"])
        else:
            exif = image.getexif()
        value = exif.get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block only loses the orientation
        return 1
    return value if value in range(1, 9) else 1


def read_header(image: Image.Image, *, pixel_cap: int, max_aspect: float) -> Header:
    """Check size, pixel cap and aspect ratio from the header; nothing is decoded."""
    width, height = image.size
    if width <= 0 or height <= 0:
        raise RecordRejected("image_empty", f"the header says {width}x{height} pixels")
    if width * height > pixel_cap:
        raise RecordRejected("image_bomb", f"{width}x{height} = {width * height} pixels is above "
                                           f"the pixel cap of {pixel_cap}")
    aspect = max(width, height) / min(width, height)
    if aspect > max_aspect:
        raise RecordRejected("image_aspect", f"{width}x{height} has aspect ratio {aspect:.1f}, "
                                             f"above max_aspect {max_aspect}")
    return Header(width, height, image.format or "", image.mode, _orientation(image))


def probe(data: bytes) -> tuple[int, int, str]:
    """(width, height, format) from the header only, width and height as displayed (after
    the EXIF orientation). Raises RecordRejected when the header cannot be read."""
    image = open_image(data)
    width, height = image.size
    if width <= 0 or height <= 0:
        raise RecordRejected("image_empty", f"the header says {width}x{height} pixels")
    header = Header(width, height, image.format or "", image.mode, _orientation(image))
    return (*header.oriented_size, header.format)


def draft_jpeg(image: Image.Image, header: Header, needed: tuple[int, int]) -> int:
    """Let the JPEG decoder scale by 1/2, 1/4 or 1/8 while keeping at least `needed` pixels
    (displayed orientation). Returns the reduction factor (1 when no draft applies)."""
    if header.format not in JPEG_FORMATS:
        return 1
    need_w, need_h = (needed[1], needed[0]) if header.swaps else needed  # stored frame
    if 2 * need_w > header.width or 2 * need_h > header.height:
        return 1  # the decoder can only halve; less than 2x smaller gains nothing
    image.draft(None, (max(1, need_w), max(1, need_h)))
    return max(1, round(header.width / image.size[0]))


def load_oriented(image: Image.Image, meta: dict) -> Image.Image:
    """Decode the pixels (first frame of an animation) and apply the EXIF orientation."""
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        meta["animated"], meta["frames"] = True, frames  # only frame 0 is kept
    try:
        image.load()
    except Image.DecompressionBombError as err:
        raise RecordRejected("image_bomb", str(err)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        text = str(err)
        if isinstance(err, EOFError) or "truncated" in text:
            raise RecordRejected("image_truncated", text or "unexpected end of data") from None
        if "too large" in text:  # Pillow's guard on decompressed chunk sizes
            raise RecordRejected("image_bomb", text) from None
        raise RecordRejected("image_format", f"cannot decode: {text}") from None
    ImageOps.exif_transpose(image, in_place=True)
    return image


@lru_cache(maxsize=1)
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _over_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")  # P and LA go through RGBA, so no palette is ever resized
    out = Image.new("RGB", rgba.size, WHITE)
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _sixteen_bit(image: Image.Image) -> Image.Image:
    """16/32-bit grey to 8 bits by shifting, never clipping: white stays white."""
    values = np.asarray(image)
    if image.mode.startswith("I;16"):
        shift = 8
    else:  # "I": 16-bit data unless values need more bits
        shift = max(8, int(max(int(values.max()), 0)).bit_length() - 8)
    return Image.fromarray((np.maximum(values, 0) >> shift).astype(np.uint8), "L")


def _cmyk(image: Image.Image, meta: dict) -> Image.Image:
    profile = image.info.get("icc_profile")
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            converted = ImageCms.profileToProfile(image, source, _srgb_profile(), outputMode="RGB")
            meta["colour"] = "cmyk-icc"
            return converted
        except (ImageCms.PyCMSError, OSError, ValueError) as err:
            meta["icc_error"] = str(err)
    meta["colour"] = "cmyk-naive"
    return image.convert("RGB")


def to_rgb(image: Image.Image, meta: dict) -> Image.Image:
    """Any decoded mode to RGB, or L for greyscale (kept: a third of the work and bytes)."""
    mode = image.mode
    if mode in ("RGB", "L") and "transparency" not in image.info:
        return image
    meta["mode"] = mode
    if mode in ("P", "PA", "LA", "La", "RGBA", "RGBa") or "transparency" in image.info:
        return _over_white(image)
    if mode.startswith("I;16") or mode == "I":
        return _sixteen_bit(image)
    if mode == "CMYK":
        return _cmyk(image, meta)
    if mode == "1":
        return image.convert("L")
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise RecordRejected("image_format", f"cannot convert mode {mode} to RGB: {err}") from None
