"""The image step of a build: bytes -> checked, oriented, RGB, resized once, encoded.

`process` is the pure core the build calls per image; `decode_planned` is the same path up to
the resized PIL image, which the benchmark and the tile cutter share.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

from PIL import Image

from .decode import JPEG_FORMATS, draft_jpeg, load_oriented, open_image, read_header, to_rgb
from .planning import ImagePlan, plan_for
from .policy import ImagePolicy

RESAMPLE = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC,
            "bilinear": Image.Resampling.BILINEAR, "box": Image.Resampling.BOX}
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
# Pillow first shrinks by an integer factor with a box filter while the remaining scale is
# above this gap; at 3 the result is visually the same as the plain filter, and faster.
REDUCING_GAP = 3.0


@dataclass(frozen=True)
class ProcessedImage:
    """Encoded processed image (`ext`: jpg, png or webp), its plan, and what happened to it
    (`meta`: source size and format, orientation, draft factor, animation, colour handling)."""

    data: bytes
    ext: str
    plan: ImagePlan
    meta: dict = field(default_factory=dict)


def needed_pixels(plan: ImagePlan, size: tuple[int, int]) -> tuple[int, int]:
    """Source pixels the resize needs, so a JPEG draft never goes below the target."""
    x0, y0, x1, y1 = plan.source_box or (0, 0, *size)
    scale = max(plan.resized_size[0] / (x1 - x0), plan.resized_size[1] / (y1 - y0))
    return math.ceil(size[0] * scale), math.ceil(size[1] * scale)


def _scaled_box(plan: ImagePlan, source: tuple[int, int], decoded: tuple[int, int]):
    if plan.source_box is None:
        return None
    sx, sy = decoded[0] / source[0], decoded[1] / source[1]
    x0, y0, x1, y1 = plan.source_box
    return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)


def decode_planned(data: bytes, policy: ImagePolicy, images_in_sample: int = 1):
    """Decode `data` and resize it once to its plan.

    Returns (image, plan, meta): `image` is RGB or L at `plan.resized_size`. Raises
    RecordRejected (image_empty, image_format, image_bomb, image_aspect, image_truncated).
    """
    source = open_image(data)
    header = read_header(source, pixel_cap=policy.pixel_cap, max_aspect=policy.max_aspect)
    size = header.oriented_size
    plan = plan_for(*size, policy, images_in_sample)
    meta = {"source_size": list(size), "format": header.format}
    if header.orientation != 1:
        meta["orientation"] = header.orientation
    draft = draft_jpeg(source, header, needed_pixels(plan, size))
    if draft > 1:
        meta["draft"] = draft
    image = load_oriented(source, meta)
    if draft == 1 and image.size != size:  # an EXIF block the header did not show
        size = image.size
        meta["source_size"] = list(size)
        plan = plan_for(*size, policy, images_in_sample)
    image = to_rgb(image, meta)
    box = _scaled_box(plan, size, image.size)
    if image.size != plan.resized_size or box is not None:
        image = image.resize(plan.resized_size, RESAMPLE[plan.filter], box=box,
                             reducing_gap=REDUCING_GAP)
    elif image is source and header.format in JPEG_FORMATS and header.orientation == 1:
        meta["unchanged"] = True  # decoded as is: the original bytes can be kept
    return image, plan, meta


def encode(image: Image.Image, policy: ImagePolicy) -> bytes:
    """JPEG at policy.quality by default; PNG and WebP are lossless."""
    out = io.BytesIO()
    if policy.encode == "jpeg":
        image.save(out, "JPEG", quality=policy.quality)
    elif policy.encode == "png":
        image.save(out, "PNG")
    else:
        image.save(out, "WEBP", lossless=True)
    return out.getvalue()


def process(data: bytes, policy: ImagePolicy, images_in_sample: int = 1) -> ProcessedImage:
    """Bytes -> ProcessedImage at the plan's size. A JPEG that needs no resize, rotation or
    mode change keeps its original bytes (after a full decode proved them intact)."""
    image, plan, meta = decode_planned(data, policy, images_in_sample)
    if meta.pop("unchanged", False) and policy.encode == "jpeg":
        meta["passthrough"] = True
        return ProcessedImage(data=data, ext="jpg", plan=plan, meta=meta)
    return ProcessedImage(data=encode(image, policy), ext=EXTENSIONS[policy.encode], plan=plan,
                          meta=meta)
