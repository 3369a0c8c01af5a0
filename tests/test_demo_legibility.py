"""The demo's OCR codes are legible at the high-res stages' tile size and not at the
pre-training size: measured by a template reader on the views the recipe's own image
policies produce (`mixdata.demo.legibility`), not by eye."""
from pathlib import Path

import numpy as np
import pytest

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
    assert max(pretrain) <= 0.4  # a 3-digit code: at most 0.4 ** 3 = 6% read whole
    assert code_reader_accuracy(policies["pretrain"], seed=0) == pretrain[0]  # deterministic


def test_code_images_get_a_tile_per_digit_and_one_small_view_in_pretraining(policies):
    render = content.code_render("407", np.random.default_rng(0))
    views, plan = code_views(render, policies["highres"])
    assert (plan.rows, plan.cols, plan.global_view) == (1, content.CODE_LENGTH, "after")
    assert plan.resized_size == content.CODE_SIZE  # not rescaled: one source px per view px
    for index, box in enumerate(content.digit_boxes(render)):
        grey, (x0, y0, x1, y1) = code_window(views, plan, box, content.CODE_SIZE[0])
        assert np.array_equal(grey, views[index].astype(float).mean(axis=-1))  # its own tile
        assert (x1 - x0, y1 - y0) == (box[2] - box[0], box[3] - box[1])
    for stage in ("highres", "sft"):  # the same views in both high-res stages
        again, _ = code_views(render, policies[stage])
        assert np.array_equal(again, views)
    small, plan = code_views(render, policies["pretrain"])
    assert small.shape == (1, 64, 64, 3) and plan.resized_size == (64, 21)


def test_each_digit_is_inside_its_box_and_its_cell():
    render = content.CodeRender("183", ((-8, -8), (0, 3), (8, 8)))
    pixels = np.asarray(content.draw_code(render)).mean(axis=-1)
    for index, (x0, y0, x1, y1) in enumerate(content.digit_boxes(render)):
        cell = pixels[:, index * content.CODE_CELL:(index + 1) * content.CODE_CELL]
        ink = np.argwhere(cell < 128) + np.array([0, index * content.CODE_CELL])
        assert len(ink) > 10
        assert x0 >= index * content.CODE_CELL and x1 <= (index + 1) * content.CODE_CELL
        assert ink[:, 1].min() >= x0 - 1 and ink[:, 1].max() <= x1
        assert ink[:, 0].min() >= y0 - 1 and ink[:, 0].max() <= y1 and y0 >= 0
        assert y1 <= content.CODE_CELL
