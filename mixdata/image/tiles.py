"""The tile cutter the loader uses: processed image bytes + plan -> uint8 views.

The views are crops of the one processed image (padded into its canvas), and the global view
is the processed image resized to tile x tile, never the source. The loader decodes once
(`decode_processed`) and writes the views straight into its batch (`tiles_into`), so the
pixels are copied once between the decoder and the batch.
"""
from __future__ import annotations

import io

import numpy as np
import simplejpeg
from PIL import Image

from .planning import ImagePlan
from .processing import RESAMPLE

# The global view is the processed image shrunk 2-4x per side, which costs a third of a
# decode through Pillow. torch's uint8 antialiased resize is vectorised, reads the decoded
# array in place and (through its `out` overload) writes the view in place: bilinear gives
# Pillow's bilinear exactly, bicubic Pillow's bicubic to one grey level. Lanczos, which torch
# lacks, is served by bicubic (0.6 grey levels of mean difference on photos); box stays with
# Pillow.
TORCH_FILTERS = {"bilinear": "bilinear", "bicubic": "bicubic", "lanczos": "bicubic"}
JPEG_MAGIC = b"\xff\xd8"
# what `process` writes; CMYK/YCCK convert differently from Pillow, so Pillow keeps them
SIMPLEJPEG_COLORSPACES = ("YCbCr", "Gray")


def check_size(width: int, height: int, plan: ImagePlan) -> None:
    if (width, height) != tuple(plan.resized_size):
        raise ValueError(f"processed image is {width}x{height}, the plan says "
                         f"{plan.resized_size[0]}x{plan.resized_size[1]}")


def _jpeg_header(data: bytes) -> tuple[int, int, str] | None:
    """(width, height, colorspace) of a JPEG header simplejpeg reads, else None (not a JPEG,
    or one for Pillow to read or to explain)."""
    if data[:2] != JPEG_MAGIC:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return width, height, colorspace


def processed_size(data: bytes) -> tuple[int, int]:
    """(width, height) of processed image bytes from the header alone; ValueError or OSError
    when there is no readable header."""
    header = _jpeg_header(data)
    return header[:2] if header else Image.open(io.BytesIO(data)).size


def decode_processed(data: bytes, plan: ImagePlan) -> np.ndarray:
    """RGB uint8 [H, W, 3] of processed image bytes (as written by `process`).

    JPEG goes through libjpeg-turbo straight into the array (simplejpeg, the same pixels as
    Pillow); anything else, or a JPEG it cannot take, through Pillow. The size is checked on
    the header, before decoding: ValueError when it is not the plan's.
    """
    header = _jpeg_header(data)
    if header and header[2] in SIMPLEJPEG_COLORSPACES:
        check_size(header[0], header[1], plan)
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError:
            pass  # Pillow below gives the real error, or reads it after all
    image = Image.open(io.BytesIO(data))
    check_size(*image.size, plan)
    image.load()
    return _writable_rgb(image)


def _writable_rgb(image: Image.Image) -> np.ndarray:
    """The RGB array of a decoded image, writable (torch.from_numpy warns on read-only)."""
    pixels = np.empty((image.height, image.width, 3), np.uint8)
    pixels[:] = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    return pixels


def view_shape(plan: ImagePlan) -> tuple[int, int, int, int]:
    """Shape of the plan's views: [num_views, T, T, 3], or [1, H, W, 3] for one whole view."""
    if plan.num_views == 1:
        width, height = plan.canvas_size
        return (1, height, width, 3)
    return (plan.num_views, plan.tile, plan.tile, 3)


def _place_on_canvas(pixels: np.ndarray, plan: ImagePlan, out: np.ndarray) -> None:
    out[:] = plan.fill
    x, y = plan.offset
    out[y:y + pixels.shape[0], x:x + pixels.shape[1]] = pixels


def tiles_into(pixels: np.ndarray, plan: ImagePlan, out: np.ndarray) -> None:
    """Write the views of RGB `pixels` [H, W, 3] (the processed image) into `out`, an array of
    `view_shape(plan)`, in layout order: tiles row-major, the global view before or after
    them. An untiled plan has one view, the whole canvas."""
    check_size(pixels.shape[1], pixels.shape[0], plan)
    if plan.num_views == 1:
        if plan.padded:
            _place_on_canvas(pixels, plan, out[0])
        else:
            out[0] = pixels
        return
    canvas = pixels
    if plan.padded:
        width, height = plan.canvas_size
        canvas = np.empty((height, width, 3), np.uint8)
        _place_on_canvas(pixels, plan, canvas)
    side, rows, cols = plan.tile, plan.rows, plan.cols
    first = 1 if plan.global_view == "before" else 0
    grid = out[first:first + rows * cols].reshape(rows, cols, side, side, 3)
    # one copy: (rows*T, cols*T, 3) seen as (rows, T, cols, T, 3), swapped into place
    grid[:] = canvas.reshape(rows, side, cols, side, 3).transpose(0, 2, 1, 3, 4)
    if plan.global_view != "none":
        global_view(pixels, plan, out[0 if first else -1])


def global_view(pixels: np.ndarray, plan: ImagePlan, out: np.ndarray) -> None:
    """Write the processed image `pixels` [H, W, 3] resized to [T, T, 3] into `out`."""
    side, mode = plan.tile, TORCH_FILTERS.get(plan.filter)
    if mode is None:
        small = Image.fromarray(pixels).resize((side, side), RESAMPLE[plan.filter])
        out[:] = np.asarray(small)
        return
    import torch  # the loader has it loaded; build workers never come here

    image = torch.from_numpy(pixels).permute(2, 0, 1)[None]  # channels-last, no copy
    target = torch.from_numpy(out).permute(2, 0, 1)[None]
    resize = getattr(torch.ops.aten, f"_upsample_{mode}2d_aa", None)
    try:
        resize.out(image, [side, side], False, None, None, out=target)
    except (AttributeError, RuntimeError, TypeError):  # a torch without that overload
        from torch.nn.functional import interpolate
        target.copy_(interpolate(image, size=(side, side), mode=mode, antialias=True))


def tiles_from_image(image: Image.Image, plan: ImagePlan) -> np.ndarray:
    """uint8 views of `view_shape(plan)` of a decoded processed image (see `tiles_into`)."""
    pixels = _writable_rgb(image)
    views = np.empty(view_shape(plan), np.uint8)
    tiles_into(pixels, plan, views)
    return views


def cut_tiles(data: bytes, plan: ImagePlan, out: np.ndarray | None = None) -> np.ndarray:
    """Decode processed image bytes and cut their views (see `tiles_into`) into `out`, or a
    new array. Raises ValueError when the bytes do not match the plan's size, ValueError or
    OSError when they do not decode."""
    if out is None:
        out = np.empty(view_shape(plan), np.uint8)
    tiles_into(decode_processed(data, plan), plan, out)
    return out
