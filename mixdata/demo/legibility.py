"""An objective measure of whether the demo's OCR codes can be read at a stage's resolution.

The demo claims its codes are legible in the high-res stages' 64 px tiles and not in the
pre-training stage's single 64 px view. `code_reader_accuracy` measures that without a
model. It draws codes whose digits are all one digit ("777"), processes each image with the
stage's image policy exactly as a build does (`mixdata.image.process`), cuts the views the
loader gives the model (`cut_tiles`), and identifies the digit of held-out drawings by their
nearest neighbour among reference drawings.

The reader is told where the first digit is (`content.digit_boxes`). It looks in the view
that holds the digit's centre at the finest scale the policy offers (a tile when the image is
tiled; the one view otherwise), inverts it so ink is positive, crops a fixed window around
the ink's centroid and normalises it to unit length. Centring removes the generator's position
jitter, so what is left is what the pixels say about the digit. Accuracy 1.0 means every
digit is told apart; 0.1 is chance. A trained model could do somewhat better than a template
matcher at low resolution, but not where a digit is a few blurred pixels whose shape depends
more on where it fell on the pixel grid than on which digit it is.
"""
from __future__ import annotations

import math

import numpy as np

from ..image import ImagePlan, ImagePolicy, cut_tiles, process
from . import content
from .files import png_bytes


def code_views(label: list[content.CodeRender],
               policy: ImagePolicy) -> tuple[np.ndarray, ImagePlan]:
    """The views [V, H, W, 3] `policy` makes of the label drawing `label`, and its plan."""
    processed = process(png_bytes(content.draw_code(*label)), policy)
    return cut_tiles(processed.data, processed.plan), processed.plan


def code_window(views: np.ndarray, plan: ImagePlan, box: tuple[int, int, int, int],
                source_width: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The view holding the centre of `box` (source pixels) at the finest scale, as grey
    levels, and the box in that view's pixels."""
    scale = plan.resized_size[0] / source_width
    ox, oy = plan.offset
    x0, y0, x1, y1 = (v * scale for v in box)
    x0, x1, y0, y1 = x0 + ox, x1 + ox, y0 + oy, y1 + oy
    index = 0
    if plan.num_views > 1:
        col = min(plan.cols - 1, int((x0 + x1) / 2 // plan.tile))
        row = min(plan.rows - 1, int((y0 + y1) / 2 // plan.tile))
        index = row * plan.cols + col + (plan.global_view == "before")
        x0, x1, y0, y1 = (x0 - col * plan.tile, x1 - col * plan.tile,
                          y0 - row * plan.tile, y1 - row * plan.tile)
    return views[index].astype(np.float64).mean(axis=-1), (x0, y0, x1, y1)


def code_patch(grey: np.ndarray, box: tuple[float, float, float, float],
               size: tuple[int, int]) -> np.ndarray:
    """Ink of the window `box` (2 px margin), re-cut as `size` (w, h) around its centroid,
    flattened to unit length."""
    x0, y0, x1, y1 = box
    left, top = max(0, math.floor(x0) - 2), max(0, math.floor(y0) - 2)
    window = grey[top:math.ceil(y1) + 2, left:math.ceil(x1) + 2]
    ink = np.clip(np.median(grey) - window, 0, None)
    total = ink.sum()
    if total == 0:
        return np.zeros(size[0] * size[1])
    ys, xs = np.indices(ink.shape)
    cy, cx = (ink * ys).sum() / total, (ink * xs).sum() / total
    w, h = size
    padded = np.pad(ink, ((h, h), (w, w)))
    top, left = round(cy) + h - h // 2, round(cx) + w - w // 2
    patch = padded[top:top + h, left:left + w].ravel()
    return patch / np.linalg.norm(patch)


def code_reader_accuracy(policy: ImagePolicy, *, references: int = 20, trials: int = 20,
                         seed: int = 0) -> float:
    """Nearest-neighbour identification rate of the 10 digits in codes of one repeated
    digit, drawn as the demo draws codes and seen through `policy`."""
    rng = np.random.default_rng(seed)
    width = content.CODE_SIZE[0]
    glyph = [max(content.font(content.CODE_FONT).getbbox(d)[i] for d in content.DIGITS)
             for i in (2, 3)]

    def patches(count: int) -> tuple[np.ndarray, np.ndarray]:
        rows, labels = [], []
        for digit in range(10):
            for _ in range(count):
                label = content.code_label(content.DIGITS[digit] * content.CODE_LENGTH, rng)
                views, plan = code_views(label, policy)
                scale = plan.resized_size[0] / width
                size = (math.ceil(glyph[0] * scale) + 2, math.ceil(glyph[1] * scale) + 2)
                grey, box = code_window(views, plan, content.digit_boxes(label[0])[0], width)
                rows.append(code_patch(grey, box, size))
                labels.append(digit)
        return np.stack(rows), np.asarray(labels)

    known, known_labels = patches(references)
    probe, probe_labels = patches(trials)
    distances = ((probe[:, None, :] - known[None, :, :]) ** 2).sum(-1)
    guesses = known_labels[distances.argmin(axis=1)]
    return float((guesses == probe_labels).mean())
