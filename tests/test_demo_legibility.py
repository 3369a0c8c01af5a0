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


def test_code_images_get_tiles_at_full_size_and_one_halved_view_in_pretraining(policies):
    render = content.code_render("407", np.random.default_rng(0))
    views, plan = code_views(render, policies["highres"])
    assert (plan.rows, plan.cols, plan.global_view) == (1, 2, "after")
    assert plan.resized_size == content.CODE_SIZE  # not rescaled: one source px per view px
    grey, box = code_window(views, plan, content.code_box(render), content.CODE_SIZE[0])
    assert grey.shape == (64, 64) and box[3] - box[1] == pytest.approx(
        content.code_box(render)[3] - content.code_box(render)[1])
    for stage in ("highres", "sft"):  # the same views in both high-res stages
        again, _ = code_views(render, policies[stage])
        assert np.array_equal(again, views)
    small, plan = code_views(render, policies["pretrain"])
    assert small.shape == (1, 64, 64, 3) and plan.resized_size == (64, 32)


def test_the_code_is_where_code_box_says(policies):
    render = content.CodeRender("123", tile=1, x=10, y=20)
    pixels = np.asarray(content.draw_code(render)).mean(axis=-1)
    x0, y0, x1, y1 = content.code_box(render)
    ink = np.argwhere(pixels < 128)
    assert ink[:, 1].min() >= x0 - 1 and ink[:, 1].max() <= x1 and x0 >= content.CODE_TILE
    assert ink[:, 0].min() >= y0 - 1 and ink[:, 0].max() <= y1
    max_x, _ = content.code_room("888")
    assert max_x + content.font(content.CODE_FONT).getbbox("888")[2] <= content.CODE_TILE
