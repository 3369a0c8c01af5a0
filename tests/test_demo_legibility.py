"""The demo's OCR codes are legible at the high-res stages' tile size and not at the
pre-training size: measured by a template reader on the views the recipe's own image
policies produce (`mixdata.demo.legibility`), not by eye."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mixdata.demo import content
from mixdata.demo.legibility import code_reader_accuracy, code_views, code_window
from mixdata.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def policies():
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml")
    return {name: stage.image for name, stage in recipe.stages.items()}


def test_codes_are_read_in_tiles_and_not_in_the_pretraining_view(policies):
    tiles = [code_reader_accuracy(policies[s], seed=seed) for s in ("highres", "sft")
             for seed in (0, 1)]
    pretrain = [code_reader_accuracy(policies["pretrain"], seed=seed) for seed in (0, 1)]
    assert min(tiles) >= 0.95   # every digit told apart (chance 0.1)
    assert max(pretrain) <= 0.3  # a 4-digit code: at most 0.3 ** 4 < 1% read whole
    assert code_reader_accuracy(policies["pretrain"], seed=0) == pretrain[0]  # deterministic


def test_each_tile_row_holds_a_copy_of_the_code_and_it_shrinks_4x_in_pretraining(policies):
    label = content.code_label("4071", np.random.default_rng(0))
    assert [r.code for r in label] == ["4071"] * 16
    assert [(r.tile, r.row) for r in label] == [(t, r) for t in range(4) for r in range(4)]
    views, plan = code_views(label, policies["highres"])
    assert (plan.rows, plan.cols, plan.global_view) == (1, 4, "after")
    assert plan.resized_size == content.CODE_SIZE  # not rescaled: one source px per view px
    for render in label:
        for box in content.digit_boxes(render):
            grey, (x0, y0, x1, y1) = code_window(views, plan, box, content.CODE_SIZE[0])
            assert np.array_equal(grey, views[render.tile].astype(float).mean(axis=-1))
            assert (x1 - x0, y1 - y0) == (box[2] - box[0], box[3] - box[1])
    for tile in range(4):
        for row in range(4):  # ink in every token row of every tile
            assert views[tile, 16 * row:16 * (row + 1)].min() < 100
    for stage in ("read", "highres", "sft"):  # the same views in every high-res stage
        again, _ = code_views(label, policies[stage])
        assert np.array_equal(again, views)
    small, plan = code_views(label, policies["pretrain"])
    assert small.shape == (1, 64, 64, 3) and plan.resized_size == (64, 16)


def test_each_digit_is_inside_its_box_and_its_cell():
    jitter_x, jitter_y = content.CODE_JITTER
    render = content.CodeRender("1830", ((-jitter_x, -jitter_y), (0, jitter_y),
                                         (jitter_x, jitter_y), (jitter_x, -jitter_y)))
    pixels = np.asarray(content.draw_code(render)).mean(axis=-1)
    boxes = content.digit_boxes(render)
    for index, (x0, y0, x1, y1) in enumerate(boxes):
        centre = index * content.CODE_CELL + content.CODE_CELL // 2
        assert abs((x0 + x1) / 2 - centre) <= jitter_x + 1
        left = max(0, x0 - 1)
        ink = np.argwhere(pixels[:, left:x1 + 1] < 128) + np.array([0, left])
        assert len(ink) > 10
        assert ink[:, 1].min() >= x0 - 1 and ink[:, 1].max() <= x1
        assert ink[:, 0].min() >= y0 - 1 and ink[:, 0].max() <= y1 and y0 >= 0
    assert boxes[-1][2] <= content.CODE_TILE and boxes[0][0] >= 0  # all in the first tile
    assert (pixels[:, content.CODE_TILE:] > 200).all()


def test_one_glyph_is_one_image_token_of_the_tiny_model():
    """Every digit's ink, at every extreme of its jitter and in every token row of the tile,
    lies inside one image token's cell of the tiny model (patch x pixel shuffle px square):
    the layout that makes the codes learnable in a few dozen steps (tools/reading_probe.py)."""
    from mixdata.train.model import PRESETS

    tiny = PRESETS["tiny"]
    token = tiny.vision.patch * tiny.connector.factor
    assert token == content.CODE_CELL and content.CODE_ROWS * token == content.CODE_TILE
    jitter_x, jitter_y = content.CODE_JITTER
    for digit in content.DIGITS:
        for shift in ((-jitter_x, -jitter_y), (jitter_x, jitter_y), (-jitter_x, jitter_y),
                      (jitter_x, -jitter_y)):
            for row in range(content.CODE_ROWS):
                for index in range(content.CODE_LENGTH):   # the digit alone, in cell `index`
                    code = "".join(digit if i == index else " "
                                   for i in range(content.CODE_LENGTH))
                    render = content.CodeRender(code, (shift,) * content.CODE_LENGTH, row=row)
                    grey = np.asarray(content.draw_code(render)).mean(axis=-1)
                    ink = np.argwhere(grey < 128)
                    cells = {(int(y) // token, int(x) // token) for y, x in ink}
                    assert len(ink) > 10 and cells == {(row, index)}, (digit, shift, row, index)


def test_pasted_glyphs_are_the_pixels_pillow_draws_for_the_text():
    rng = np.random.default_rng(5)
    label = content.random_code_label(rng)
    drawn = Image.new("RGB", content.CODE_SIZE, content.PAPER)
    pen = ImageDraw.Draw(drawn)
    face = content.font(content.CODE_FONT)
    for render in label:
        for digit, box in zip(render.code, content.digit_boxes(render)):
            x0, y0, _, _ = face.getbbox(digit)
            pen.text((box[0] - x0, box[1] - y0), digit, fill=content.CODE_INK, font=face)
    assert content.draw_code(*label).tobytes() == drawn.tobytes()
