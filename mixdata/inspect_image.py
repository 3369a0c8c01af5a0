"""One packed sequence drawn as a picture (Pillow only), and its text helpers.

`draw_sequence(seq, tokenizer, seq_len)` returns a `Picture`: a PIL image with, top to bottom,
- a header line (tokens, documents, images, supervised tokens);
- the token strip: one cell per position of the `seq_len` slots, `STRIP_COLUMNS` per row,
  coloured by what the position holds (see `token_kinds`): document text in alternating
  greys, supervised targets green, each image's placeholders in its own colour and its layout
  tokens (markers, newlines) in a darker shade, padding near-white; a black bar and a label
  `dN` mark where each document starts;
- every image's views in their grid (tiles row-major, the global view beside them), each
  labelled with the marker token that precedes it in the stream (`<row_1_col_2>`,
  `<global-img>`) and framed in the image's colour;
- each document's source, id, decoded text (shortened) and supervised spans;
- a legend.

`Picture.cell(t)` is the pixel box of position t in the strip, so tests can check colours.
`sequence_html` writes the same content as one self-contained HTML page.
"""
from __future__ import annotations

import base64
import html
import io
import re
import textwrap
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .image import ImagePlan, cut_tiles

STRIP_COLUMNS = 64       # token cells per strip row
CELL = 12                # px per token cell, a 1 px gap included
LABEL = 11               # px above each strip row for document labels
MARGIN = 16
GAP = 10                 # between sections and between images
VIEW_GAP = 4
VIEW_LABEL = 13          # px above each view for its marker
TEXT_SIZE = 12
LINE = 15                # px per line of text
BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
BOUNDARY = (0, 0, 0)
PADDING = (238, 238, 238)
SUPERVISED = (44, 160, 44)
DOC_TEXT = ((200, 200, 200), (160, 160, 160))   # alternating per document
IMAGE_COLOURS = ((31, 119, 180), (255, 127, 14), (148, 103, 189), (214, 39, 40),
                 (23, 190, 207), (227, 119, 194), (188, 189, 34), (140, 86, 75))
MAX_TEXT_LINES = 3       # decoded text lines shown per document
MAX_LOSS_SPANS = 3       # supervised spans listed per document

_RUN = re.compile(r"(?:<image>){2,}")


def compact(text: str) -> str:
    """Runs of `<image>` placeholders as `<image>xN`."""
    return _RUN.sub(lambda m: f"<image>x{len(m.group(0)) // len('<image>')}", text)


def clip(text: str, width: int) -> str:
    """`text` cut to `width` characters with a note of what was cut (0: never cut)."""
    if not width or len(text) <= width:
        return text
    return text[:width] + f"... (+{len(text) - width} chars)"


def spans(mask) -> list[tuple[int, int]]:
    """Maximal [start, end) runs where mask is true."""
    out, start = [], None
    for i, flag in enumerate([*list(mask), 0]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            out.append((start, i))
            start = None
    return out


def doc_text(seq, tokenizer, start: int, end: int) -> str:
    """The decoded tokens [start, end), each image's whole layout (markers and
    placeholders) shown as `[image i: N tokens]`: its views are drawn beside."""
    parts, cursor = [], start
    for index, image in enumerate(seq.meta["images"]):
        a, b = image["span"]
        if start <= a < end:
            parts.append(tokenizer.decode(seq.tokens[cursor:a].tolist()))
            parts.append(f"[image {index}: {b - a} tokens]")
            cursor = b
    parts.append(tokenizer.decode(seq.tokens[cursor:end].tolist()))
    return compact("".join(parts))


def image_colour(index: int) -> tuple[int, int, int]:
    return IMAGE_COLOURS[index % len(IMAGE_COLOURS)]


def marker_colour(index: int) -> tuple[int, int, int]:
    return tuple(int(c * 0.55) for c in image_colour(index))


def token_kinds(seq, image_id: int, seq_len: int) -> list[tuple[str, int]]:
    """Per position of the `seq_len` slots: (kind, index), kind one of `padding`,
    `placeholder` / `marker` (index: the image), `supervised` / `text` (index: the document).
    A supervised position is one whose token is a loss target (`seq.loss` is 1)."""
    kinds: list[tuple[str, int]] = [("padding", -1)] * seq_len
    for doc, (start, end) in enumerate(zip(seq.docs[:-1], seq.docs[1:])):
        for t in range(int(start), int(end)):
            kinds[t] = ("supervised" if seq.loss[t] else "text", doc)
    for index, image in enumerate(seq.meta["images"]):
        start, end = image["span"]
        for t in range(start, end):
            kinds[t] = ("placeholder" if seq.tokens[t] == image_id else "marker", index)
    return kinds


def kind_colour(kind: str, index: int) -> tuple[int, int, int]:
    if kind == "padding":
        return PADDING
    if kind == "supervised":
        return SUPERVISED
    if kind == "text":
        return DOC_TEXT[index % 2]
    return image_colour(index) if kind == "placeholder" else marker_colour(index)


@cache
def font(size: int = TEXT_SIZE) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


@dataclass(frozen=True)
class ImageViews:
    """One image of the sequence: its views [V, T, T, 3] and the marker before each."""

    index: int
    doc: int
    plan: ImagePlan
    span: tuple[int, int]
    views: np.ndarray
    labels: list[str]


def image_views(seq, tokenizer) -> list[ImageViews]:
    """Cut every image's views as the loader does; label each view with the token that
    precedes its placeholder run in the stream."""
    out = []
    for index, (meta, (data, _ext)) in enumerate(zip(seq.meta["images"], seq.images)):
        plan = ImagePlan.from_json(meta["plan"])
        start, end = meta["span"]
        runs = spans(seq.tokens[start:end] == tokenizer.image_id)
        labels = [tokenizer.decode([int(seq.tokens[start + a - 1])]) if a else "?" for a, _ in runs]
        out.append(ImageViews(index, meta["doc"], plan, (start, end), cut_tiles(data, plan),
                              labels))
    return out


VIEW_SIDE = 128          # px a view is shown at, at most


def _view_side(tile: int) -> int:
    """An integer multiple of the tile (pixels stay sharp) up to VIEW_SIDE; larger tiles
    are shrunk to VIEW_SIDE."""
    return tile * (VIEW_SIDE // tile) if tile <= VIEW_SIDE else VIEW_SIDE


def _header(item: ImageViews) -> str:
    plan = item.plan
    w, h = plan.resized_size
    views = "1 view" if plan.num_views == 1 else \
        f"{plan.rows}x{plan.cols} tiles" + (" + global" if plan.global_view != "none" else "")
    return f"image {item.index} (doc {item.doc}): {w}x{h}, {views}, tokens " \
        f"[{item.span[0]}:{item.span[1]})"


def _grid_positions(item: ImageViews) -> tuple[list[tuple[int, int]], int, int]:
    """Top-left corner of each view inside the image's block, and the block's size."""
    plan, side = item.plan, _view_side(item.views.shape[1])
    step_x, step_y = side + VIEW_GAP, side + VIEW_LABEL + VIEW_GAP
    if plan.num_views == 1:
        return [(0, VIEW_LABEL)], side, side + VIEW_LABEL
    tiles = [(c * step_x, VIEW_LABEL + r * step_y) for r in range(plan.rows)
             for c in range(plan.cols)]
    if plan.global_view == "none":
        return tiles, plan.cols * step_x - VIEW_GAP, plan.rows * step_y - VIEW_GAP
    if plan.global_view == "before":
        tiles = [(x + step_x + GAP, y) for x, y in tiles]
        positions = [(0, VIEW_LABEL), *tiles]
    else:
        positions = [*tiles, (plan.cols * step_x + GAP, VIEW_LABEL)]
    return positions, (plan.cols + 1) * step_x + GAP - VIEW_GAP, plan.rows * step_y - VIEW_GAP


@dataclass
class Picture:
    """The drawn sequence; `cell(t)` is the (x0, y0, x1, y1) box of strip position t."""

    image: Image.Image
    strip_top: int

    def cell(self, t: int) -> tuple[int, int, int, int]:
        row, col = divmod(t, STRIP_COLUMNS)
        x0 = MARGIN + col * CELL
        y0 = self.strip_top + row * (CELL + LABEL) + LABEL
        return x0, y0, x0 + CELL - 2, y0 + CELL - 2

    def save(self, path) -> None:
        self.image.save(path, format="PNG", optimize=True)


def strip_height(seq_len: int) -> int:
    return -(-seq_len // STRIP_COLUMNS) * (CELL + LABEL)


def strip_width() -> int:
    return STRIP_COLUMNS * CELL - 1


def _doc_lines(seq, tokenizer, text_width: int, columns: int) -> list[tuple[int, str]]:
    """(document, line) pairs: a title, wrapped decoded text, then supervised spans."""
    lines = []
    for d, (start, end) in enumerate(zip(seq.docs[:-1], seq.docs[1:])):
        info = seq.meta["docs"][d]
        lines.append((d, f"doc {d} [{start}:{end}) source={info['source']} id={info['id']}"))
        text = clip(doc_text(seq, tokenizer, int(start), int(end)), text_width)
        wrapped = textwrap.wrap(text.replace("\n", "\\n"), columns) or [""]
        if len(wrapped) > MAX_TEXT_LINES:
            last = wrapped[MAX_TEXT_LINES - 1][:columns - 4] + " ..."
            wrapped = [*wrapped[:MAX_TEXT_LINES - 1], last]
        lines += [(d, "    " + w) for w in wrapped]
        loss = spans(seq.loss[start:end])
        for a, b in loss[:MAX_LOSS_SPANS]:
            said = clip(compact(tokenizer.decode(seq.tokens[start + a:start + b].tolist())), 60)
            lines.append((d, f"    loss [{start + a}:{start + b}): {said!r}"))
        if len(loss) > MAX_LOSS_SPANS:
            lines.append((d, f"    ... {len(loss) - MAX_LOSS_SPANS} more supervised spans"))
    return lines


LEGEND = (("text (alternating per document)", DOC_TEXT[0]), ("supervised", SUPERVISED),
          ("image placeholders (a colour per image)", IMAGE_COLOURS[0]),
          ("image markers, darker", marker_colour(0)),
          ("padding", PADDING), ("document start", BOUNDARY))


def _flow(items: list[ImageViews], width: int) -> tuple[list[tuple[int, int]], int]:
    """Image blocks left to right, wrapping at `width`; their offsets and total height."""
    offsets, x, y, row_height = [], 0, 0, 0
    for item in items:
        _, w, h = _grid_positions(item)
        w, h = max(w, int(font().getlength(_header(item)))), h + LINE
        if x and x + w > width:
            x, y, row_height = 0, y + row_height + GAP, 0
        offsets.append((x, y))
        x, row_height = x + w + GAP * 2, max(row_height, h)
    return offsets, y + row_height


def draw_sequence(seq, tokenizer, seq_len: int, *, title: str = "",
                  text_width: int = 400) -> Picture:
    """The picture of `seq` (a `PackedSequence`) as the module docstring lays it out."""
    items = image_views(seq, tokenizer)
    widest = max([_grid_positions(i)[1] for i in items] + [strip_width()])
    width = 2 * MARGIN + widest
    columns = max(40, widest // 7)
    doc_lines = _doc_lines(seq, tokenizer, text_width, columns)
    offsets, images_height = _flow(items, widest)
    strip_top = MARGIN + LINE + GAP
    images_top = strip_top + strip_height(seq_len) + GAP
    docs_top = images_top + images_height + GAP
    legend_top = docs_top + LINE * len(doc_lines) + GAP
    height = legend_top + LINE * 2 + MARGIN
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, MARGIN), title, fill=INK, font=font())
    picture = Picture(canvas, strip_top)
    _draw_strip(draw, picture, seq, tokenizer.image_id, seq_len)
    for item, (x, y) in zip(items, offsets):
        _draw_views(canvas, draw, item, MARGIN + x, images_top + y)
    for row, (doc, line) in enumerate(doc_lines):
        y = docs_top + row * LINE
        if not line.startswith(" "):
            draw.rectangle((MARGIN, y + 2, MARGIN + 9, y + 11), fill=DOC_TEXT[doc % 2])
        draw.text((MARGIN + 14, y), line, fill=INK, font=font())
    _draw_legend(draw, MARGIN, legend_top, width - 2 * MARGIN)
    return picture


def _draw_strip(draw, picture: Picture, seq, image_id: int, seq_len: int) -> None:
    for t, (kind, index) in enumerate(token_kinds(seq, image_id, seq_len)):
        draw.rectangle(picture.cell(t), fill=kind_colour(kind, index))
    for d, start in enumerate(seq.docs[:-1]):
        x0, y0, _, y1 = picture.cell(int(start))
        draw.rectangle((x0, y0 - 2, x0 + 1, y1 + 1), fill=BOUNDARY)
        draw.text((x0 + 3, y0 - LABEL), f"d{d}", fill=INK, font=font(9))


def _draw_views(canvas: Image.Image, draw, item: ImageViews, left: int, top: int) -> None:
    colour = image_colour(item.index)
    draw.text((left, top), _header(item), fill=colour, font=font())
    positions, _, _ = _grid_positions(item)
    side = _view_side(item.views.shape[1])
    for view, label, (x, y) in zip(item.views, item.labels, positions):
        x, y = left + x, top + LINE + y
        resample = Image.Resampling.NEAREST if side % view.shape[1] == 0 else Image.Resampling.BOX \
            if side < view.shape[1] else Image.Resampling.BILINEAR
        shown = Image.fromarray(view).resize((side, round(side * view.shape[0] / view.shape[1])),
                                             resample)
        canvas.paste(shown, (x, y))
        draw.rectangle((x - 1, y - 1, x + shown.width, y + shown.height), outline=colour, width=1)
        draw.text((x, y - VIEW_LABEL), label, fill=colour, font=font(10))


def _draw_legend(draw, left: int, top: int, width: int) -> None:
    x, y = left, top
    for label, colour in LEGEND:
        size = draw.textlength(label, font=font()) + 30
        if x + size > left + width:
            x, y = left, y + LINE
        draw.rectangle((x, y + 2, x + 10, y + 12), fill=colour)
        draw.text((x + 15, y), label, fill=INK, font=font())
        x += int(size)


def _png_data_uri(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def sequence_html(seq, tokenizer, seq_len: int, *, title: str = "") -> str:
    """The same content as one HTML page: hover a token cell to see the token it holds."""
    hexes = lambda c: "#{:02x}{:02x}{:02x}".format(*c)  # noqa: E731
    starts = {int(s) for s in seq.docs[:-1]}
    cells = []
    for t, (kind, index) in enumerate(token_kinds(seq, tokenizer.image_id, seq_len)):
        token = tokenizer.decode([int(seq.tokens[t])]) if t < len(seq.tokens) else "<pad>"
        edge = "border-left:2px solid #000;" if t in starts else ""
        cells.append(f'<span title="{t}: {html.escape(token)} ({kind})" '
                     f'style="background:{hexes(kind_colour(kind, index))};{edge}"></span>')
    blocks = []
    for item in image_views(seq, tokenizer):
        colour = hexes(image_colour(item.index))
        views = "".join(f'<figure><figcaption>{html.escape(label)}</figcaption>'
                        f'<img src="{_png_data_uri(view)}" style="border:1px solid {colour}">'
                        f'</figure>' for view, label in zip(item.views, item.labels))
        blocks.append(f'<div class="image" style="color:{colour}">image {item.index} '
                      f'(doc {item.doc}), grid {item.plan.rows}x{item.plan.cols}<div '
                      f'style="display:grid;grid-template-columns:repeat({item.plan.cols + 1},'
                      f'auto)">{views}</div></div>')
    docs = "\n".join(html.escape(line) for _, line in _doc_lines(seq, tokenizer, 0, 120))
    legend = "".join(f'<span class="key" style="background:{hexes(c)}"></span>{html.escape(n)} '
                     for n, c in LEGEND)
    return (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><style>"
            "body{font:13px sans-serif}.strip{display:grid;grid-template-columns:repeat("
            f"{STRIP_COLUMNS},11px);gap:1px}}.strip span{{height:11px}}img{{width:128px;"
            "image-rendering:pixelated}figure{margin:2px}.key{display:inline-block;width:10px;"
            "height:10px;margin:0 4px}</style>"
            f"<h3>{html.escape(title)}</h3><div class=strip>{''.join(cells)}</div>"
            f"{''.join(blocks)}<pre>{docs}</pre><p>{legend}</p>")
