"""An objective measure of whether the demo's OCR glyphs can be read at a stage's resolution.

The demo claims that its codes are legible in the high-res stage's 64 px tiles and not in
the pre-training stage's single 64 px view. `glyph_reader_accuracy` measures that without a
model: it renders labels whose characters are all one glyph, processes them with the
stage's image policy exactly as a build does (`mixdata.image.process`), cuts the views the
loader would give the model (`cut_tiles`), and identifies the glyph of held-out renders by
their nearest neighbour among reference renders.

The reader works on the first character of each label. Its patch is the view holding that
character (at the tile scale the first tile; in an untiled view the whole view), inverted so
ink is positive, cropped around its ink centroid to the glyph's size at that scale and
normalised to unit length. Centring removes the generator's position jitter, so what is left
is what the pixels say about the glyph. Accuracy 1.0 means every glyph is told apart;
1 / len(alphabet) is chance. A trained model could do somewhat better than this template
matcher at low resolution, but not where the glyph is a few blurred pixels whose shape
depends more on where it fell on the pixel grid than on which character it is.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from ..image import ImagePolicy, cut_tiles, process
from .files import png_bytes

Render = Callable[[str, np.random.Generator], Image.Image]


def glyph_patch(views: np.ndarray, plan, scale: float, glyph_px: int,
                length: int) -> np.ndarray:
    """The first character's ink patch from a label's views [V, H, W, 3], flattened.

    `scale` is view pixels per label pixel; `glyph_px` the glyph box side in label pixels.
    When one view holds the whole label, only the label's content (not the padding) and its
    first 1/`length` is searched, so the first character is the one found."""
    grey = views[0].astype(np.float64).mean(axis=-1)
    if views.shape[0] == 1:
        (x, y), (w, h) = plan.offset, plan.resized_size
        grey = grey[y:y + h, x:x + max(1, w // length)]
    ink = np.clip(np.median(grey) - grey, 0, None)
    total = ink.sum()
    if total == 0:
        return np.zeros(1)
    ys, xs = np.indices(ink.shape)
    cy, cx = (ink * ys).sum() / total, (ink * xs).sum() / total
    half = max(1, int(np.ceil(glyph_px * scale / 2)) + 1)
    padded = np.pad(ink, half)
    top, left = round(cy), round(cx)
    patch = padded[top:top + 2 * half, left:left + 2 * half].ravel()
    norm = np.linalg.norm(patch)
    return patch / norm if norm else patch


def policy_views(image: Image.Image, policy: ImagePolicy):
    """The views `policy` makes of `image` (through the real image step), its plan, and
    the scale of the processed image in its pixels per source pixel."""
    processed = process(png_bytes(image), policy)
    views = cut_tiles(processed.data, processed.plan)
    return views, processed.plan, processed.plan.resized_size[0] / image.width


def glyph_reader_accuracy(render: Render, alphabet: str, length: int, policy: ImagePolicy,
                          *, glyph_px: int, references: int = 20, trials: int = 20,
                          seed: int = 0) -> float:
    """Nearest-neighbour identification rate of `alphabet`'s glyphs in labels drawn by
    `render` (text of `length` copies of one glyph) and seen through `policy`."""
    rng = np.random.default_rng(seed)

    def patches(count: int) -> tuple[np.ndarray, np.ndarray]:
        rows, labels = [], []
        for index, glyph in enumerate(alphabet):
            for _ in range(count):
                views, plan, scale = policy_views(render(glyph * length, rng), policy)
                rows.append(glyph_patch(views, plan, scale, glyph_px, length))
                labels.append(index)
        return np.stack(rows), np.asarray(labels)

    known, known_labels = patches(references)
    probe, probe_labels = patches(trials)
    distances = ((probe[:, None, :] - known[None, :, :]) ** 2).sum(-1)
    guesses = known_labels[distances.argmin(axis=1)]
    return float((guesses == probe_labels).mean())
