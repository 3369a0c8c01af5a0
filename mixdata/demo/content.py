"""What the demo corpus talks about: coloured-shape scenes, a small vocabulary, rendered words.

Everything here is a pure function of its arguments and a `numpy.random.Generator`, so the
corpus is reproducible. The content is deliberately small and regular, so that a tiny VLM
trained for minutes on a CPU can learn it and its eval scores mean something:
- scenes: 1-3 shapes (6 colours x 4 shapes) at distinct positions on a 64x64 canvas;
- text: short sentences from a ~50-word vocabulary that also names the colours and shapes;
- rendered words: ~10 px high, readable only when an image is kept near full resolution.

Held-out eval content is chosen by a hash of a scene's (or rendering's) key, so training
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
_PLACE = {"left": "on the left", "right": "on the right", "top": "at the top",
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
# Words an OCR question may ask for: long enough to need reading, short enough to fit.
OCR_WORDS = tuple(w for w in VOCABULARY if 3 <= len(w) <= 8)

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
        return f"a {self.colour} {self.shape} {_PLACE[self.position]}"


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
        place = _PLACE[item.position]
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


TEXT_SIZE = 10  # px: readable at full resolution, a blur once an image is halved


def render_lines(lines: list[str], size: tuple[int, int], rng: np.random.Generator,
                 font_size: int = TEXT_SIZE) -> Image.Image:
    """Dark text lines on a light background, at a random left margin and top offset."""
    image = Image.new("RGB", size, (250, 250, 245))
    draw = ImageDraw.Draw(image)
    typeface = font(font_size)
    widest = max(draw.textlength(line, font=typeface) for line in lines)
    line_height = font_size + 4
    x = int(rng.integers(2, max(3, size[0] - int(widest) - 2)))
    y = int(rng.integers(2, max(3, size[1] - line_height * len(lines) - 2)))
    ink = tuple(int(v) for v in rng.integers(0, 60, size=3))
    for row, line in enumerate(lines):
        draw.text((x, y + row * line_height), line, fill=ink, font=typeface)
    return image


OCR_SIZE = (128, 64)  # kept at full size by the SFT policy, halved by the pretrain policy


@dataclass(frozen=True)
class WordRender:
    """Where and how a word is drawn for an OCR question; its key decides the split."""

    word: str
    column: int  # left margin bucket, 0..7
    row: int     # top offset bucket, 0..3

    @property
    def key(self) -> str:
        return f"ocr:{self.word}@{self.column},{self.row}"


def random_word_render(rng: np.random.Generator, *, for_eval: bool = False) -> WordRender:
    while True:
        render = WordRender(pick(rng, OCR_WORDS), int(rng.integers(8)), int(rng.integers(4)))
        if held_out(render.key) == for_eval:
            return render


def draw_word(render: WordRender) -> Image.Image:
    image = Image.new("RGB", OCR_SIZE, (250, 250, 245))
    draw = ImageDraw.Draw(image)
    typeface = font(TEXT_SIZE)
    room = OCR_SIZE[0] - int(draw.textlength(render.word, font=typeface)) - 4
    x = 2 + room * render.column // 7
    y = 4 + (OCR_SIZE[1] - TEXT_SIZE - 12) * render.row // 3
    draw.text((x, y), render.word, fill=(20, 20, 20), font=typeface)
    return image
