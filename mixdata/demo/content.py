"""What the demo corpus talks about: coloured-shape scenes, a small vocabulary, digit codes.

Everything here is a pure function of its arguments and a `numpy.random.Generator`, so the
corpus is reproducible. The content is deliberately small and regular, so that a tiny VLM
trained for minutes on a CPU can learn it and its eval scores mean something:
- scenes: 1-3 shapes (6 colours x 4 shapes) at distinct positions on a 64x64 canvas;
- text: short sentences from a ~50-word vocabulary that also names the colours and shapes;
- codes: four digits ~14 px high in each row of each 64 px of a 256 px label, readable only when
  the label is kept at full resolution (a high-res stage's tiles), not in the pre-training
  view.

Held-out eval content is chosen by a hash of a scene's (or code's) key, so training
generators can skip it and the eval generator can draw only from it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (230, 200, 30), "purple": (140, 60, 180), "orange": (240, 130, 30)}
SHAPES = ("circle", "square", "triangle", "diamond")
POSITIONS = ("left", "center", "right", "top", "bottom")
NUMBERS = ("one", "two", "three")
PLACE_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
                 "bottom": "at the bottom", "center": "in the center"}
_CENTRES = {"left": (14, 32), "center": (32, 32), "right": (50, 32), "top": (32, 13),
            "bottom": (32, 51)}

NOUNS = ("cat", "dog", "bird", "fish", "tree", "house", "river", "book", "lamp", "door",
         "hill", "boat", "cup", "moon", "garden")
ADJECTIVES = ("big", "small", "old", "new", "quiet", "bright", "dark", "warm", "happy")
VERBS = ("sees", "likes", "finds", "holds", "paints", "draws")
PREPOSITIONS = ("near", "under", "behind", "beside")
VOCABULARY = tuple(sorted(set(COLOURS) | set(SHAPES) | set(POSITIONS) | set(NOUNS)
                          | set(ADJECTIVES) | set(VERBS) | set(PREPOSITIONS) | {"the", "a"}))

SCENE_SIDE = 64
HELD_OUT_SHARE = 1 / 8


@dataclass(frozen=True, order=True)
class Item:
    """One shape of a scene. Ordered by position so a scene's description is canonical."""

    position_rank: int
    colour: str
    shape: str

    @property
    def position(self) -> str:
        return POSITIONS[self.position_rank]

    @property
    def phrase(self) -> str:
        return f"a {self.colour} {self.shape} {PLACE_PHRASES[self.position]}"


Scene = tuple[Item, ...]


def held_out(key: str) -> bool:
    """Whether content with this key belongs to the eval split (never to training files).

    A hash rather than Python's `hash`, which is salted per process."""
    digest = hashlib.sha256(key.encode()).digest()
    return digest[0] < 256 * HELD_OUT_SHARE


def scene_key(scene: Scene) -> str:
    return "+".join(f"{i.colour}-{i.shape}-{i.position}" for i in scene)


def describe(scene: Scene) -> str:
    """'a red circle on the left and a blue square at the top.'"""
    return " and ".join(item.phrase for item in scene) + "."


def random_scene(rng: np.random.Generator, shapes: int, *, for_eval: bool = False) -> Scene:
    """A scene of `shapes` shapes at distinct positions, from the training or the eval split."""
    while True:
        ranks = sorted(rng.choice(len(POSITIONS), size=shapes, replace=False).tolist())
        scene = tuple(Item(position_rank=r, colour=str(rng.choice(list(COLOURS))),
                           shape=str(rng.choice(SHAPES))) for r in ranks)
        if held_out(scene_key(scene)) == for_eval:
            return scene


def draw_scene(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """Render a scene on a light background; small jitter so no two renders are identical."""
    shade = int(rng.integers(235, 256))
    image = Image.new("RGB", (SCENE_SIDE, SCENE_SIDE), (shade, shade, shade))
    draw = ImageDraw.Draw(image)
    for item in scene:
        cx, cy = (c + int(rng.integers(-1, 2)) for c in _CENTRES[item.position])
        r = int(rng.integers(7, 10))
        fill = COLOURS[item.colour]
        if item.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif item.shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif item.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    return image


@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    choices: tuple[str, ...]
    category: str  # colour, shape, position or count


def questions(scene: Scene) -> list[Question]:
    """Every unambiguous one-word question about a scene."""
    out = [Question("How many shapes are there?", NUMBERS[len(scene) - 1], NUMBERS, "count")]
    for item in scene:
        place = PLACE_PHRASES[item.position]
        out.append(Question(f"What colour is the shape {place}?", item.colour,
                            tuple(COLOURS), "colour"))
        out.append(Question(f"What shape is {place}?", item.shape, SHAPES, "shape"))
        twins = [i for i in scene if (i.colour, i.shape) == (item.colour, item.shape)]
        if len(twins) == 1:
            out.append(Question(f"Where is the {item.colour} {item.shape}?", item.position,
                                POSITIONS, "position"))
    return out


def pick(rng: np.random.Generator, options) -> str:
    return str(options[int(rng.integers(len(options)))])


def sentence(rng: np.random.Generator) -> str:
    """A short English-like sentence from the vocabulary (never a scene description)."""
    noun, other = pick(rng, NOUNS), pick(rng, NOUNS)
    adjective, verb = pick(rng, ADJECTIVES), pick(rng, VERBS)
    colour, shape = pick(rng, list(COLOURS)), pick(rng, SHAPES)
    templates = (f"the {adjective} {noun} {verb} the {other}.",
                 f"the {noun} {verb} a {colour} {shape}.",
                 f"a {adjective} {noun} is {pick(rng, PREPOSITIONS)} the {other}.",
                 f"the {colour} {noun} {verb} the {adjective} {other}.")
    return templates[int(rng.integers(len(templates)))]


def paragraph(rng: np.random.Generator, sentences: int) -> str:
    return " ".join(sentence(rng) for _ in range(sentences))


@cache
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font: the same glyphs on every machine, no system font needed."""
    return ImageFont.load_default(size=size)


# OCR codes: 4-digit codes, the demo's reading task, printed in every token row of each 64 px
# tile of a 256 x 64 label (a 16 px cell per digit; `code_label`): 16 copies. The high-res
# stages keep the label at its size, so each digit (~12 x 14 px) is sharp; pre-training's one
# 64 px view shrinks the label 4x (each digit ~3 x 4 px, a blur). `mixdata.demo.legibility`
# measures both.
# Each digit sits in one 16 x 16 px cell, which is exactly what one image token of the tiny
# model sees (patch 8, pixel shuffle 2): one glyph, one token. A digit straddling two tokens,
# as when the code was centred on the tile (y 32), left the model at chance for 600 high-res
# steps. How many tokens carry a digit sets how soon a fresh model starts to read
# (tools/reading_probe.py, 300 steps): one copy in the first tile, not by step 300; a copy
# per tile (in its second row), ~200-275 steps; a copy in every row, 50-75 steps in each seed.
DIGITS = "0123456789"
CODE_LENGTH = 4
CODE_CELL = 16    # px per digit: one image token's width
CODE_TILE = 64    # copies of the code per tile of this size: one per token row
CODE_ROW = 8      # y of the first row's digit centres: the middle of a tile's first token row
CODE_ROWS = CODE_TILE // CODE_CELL
CODE_SIZE = (4 * CODE_TILE, CODE_TILE)
CODE_FONT = 20
CODE_JITTER = (2, 1)   # px a digit's centre moves from its cell's centre, each way (x, y)
CODE_INK = (20, 20, 20)
PAPER = (250, 250, 245)


@dataclass(frozen=True)
class CodeRender:
    """A code and where each digit's centre sits, as (dx, dy) from its cell's centre.

    Its key is the code alone, so a held-out code appears in no training image at all: the
    eval can only be passed by reading."""

    code: str
    shifts: tuple[tuple[int, int], ...]
    tile: int = 0  # which 64 px tile of the label holds it
    row: int = 0   # which token row of the tile

    @property
    def key(self) -> str:
        return f"code:{self.code}"


def random_code(rng: np.random.Generator, *, for_eval: bool = False) -> str:
    while True:
        code = "".join(pick(rng, DIGITS) for _ in range(CODE_LENGTH))
        if held_out(f"code:{code}") == for_eval:
            return code


def code_render(code: str, rng: np.random.Generator, tile: int = 0, row: int = 0) -> CodeRender:
    """`code` in row `row` of tile `tile`, each digit at a random shift."""
    x = rng.integers(-CODE_JITTER[0], CODE_JITTER[0] + 1, size=len(code))
    y = rng.integers(-CODE_JITTER[1], CODE_JITTER[1] + 1, size=len(code))
    return CodeRender(code, tuple((int(a), int(b)) for a, b in zip(x, y)), tile, row)


def digit_boxes(render: CodeRender) -> list[tuple[int, int, int, int]]:
    """Each digit's ink box (x0, y0, x1, y1) in image pixels, and where it is drawn from."""
    out = []
    for index, (digit, (dx, dy)) in enumerate(zip(render.code, render.shifts)):
        x0, y0, x1, y1 = font(CODE_FONT).getbbox(digit)
        left = render.tile * CODE_TILE + index * CODE_CELL + CODE_CELL // 2 + dx - (x0 + x1) // 2
        top = CODE_ROW + render.row * CODE_CELL + dy - (y0 + y1) // 2
        out.append((left + x0, top + y0, left + x1, top + y1))
    return out


def draw_code(*renders: CodeRender) -> Image.Image:
    """A label holding each of `renders` (a code per row of a tile at most)."""
    image = Image.new("RGB", CODE_SIZE, PAPER)
    for render in renders:
        for digit, box in zip(render.code, digit_boxes(render)):
            image.paste(CODE_INK, box[:2], _glyph(digit))
    return image


@cache
def _glyph(digit: str) -> Image.Image:
    # The digit's coverage mask, drawn once: pasting it with the ink gives the same pixels as
    # drawing the text at an integer position, at a third of the time (a label is 64 digits).
    x0, y0, x1, y1 = font(CODE_FONT).getbbox(digit)
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(mask).text((-x0, -y0), digit, fill=255, font=font(CODE_FONT))
    return mask


def code_label(code: str, rng: np.random.Generator, rows: int = CODE_ROWS) -> list[CodeRender]:
    """`code` printed in the first `rows` token rows of every 64 px tile of the label, each copy
    with its own jitter, tile by tile.

    The more of the label's 80 image tokens (four tiles and the global view) carry a digit,
    the sooner a fresh model finds them (the comment above `DIGITS`)."""
    return [code_render(code, rng, tile, row) for tile in range(CODE_SIZE[0] // CODE_TILE)
            for row in range(rows)]


def random_code_label(rng: np.random.Generator, *, for_eval: bool = False) -> list[CodeRender]:
    return code_label(random_code(rng, for_eval=for_eval), rng)
