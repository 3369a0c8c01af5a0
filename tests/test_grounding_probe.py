"""tools/grounding_probe.py reads the demo's captions as the generator writes them."""
import importlib.util
import itertools
from pathlib import Path

from mixdata.demo import content

TOOL = Path(__file__).resolve().parents[1] / "tools" / "grounding_probe.py"
spec = importlib.util.spec_from_file_location("grounding_probe", TOOL)
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


def test_every_one_shape_caption_round_trips_and_two_shape_ones_are_skipped():
    for rank, colour, shape in itertools.product(range(len(content.POSITIONS)), content.COLOURS,
                                                 content.SHAPES):
        caption = content.describe((content.Item(position_rank=rank, colour=colour,
                                                 shape=shape),))
        truth = probe.one_shape(caption)
        assert probe.caption_of(truth) == caption
        assert all(truth[a] in values for a, values in probe.VALUES.items())
    pair = tuple(content.Item(position_rank=r, colour="red", shape="circle") for r in (0, 1))
    assert probe.one_shape(content.describe(pair)) is None


def test_training_renders_are_new_images_of_training_split_one_shape_scenes():
    import io

    from PIL import Image

    place = {phrase: name for name, phrase in content.PLACE_PHRASES.items()}
    renders = probe.training_renders(12)
    assert len(renders) == 12
    for image, truth in renders:
        rank = content.POSITIONS.index(place[truth["position"]])
        scene = (content.Item(position_rank=rank, colour=truth["colour"], shape=truth["shape"]),)
        assert not content.held_out(content.scene_key(scene))
        assert Image.open(io.BytesIO(image)).size == (content.SCENE_SIDE, content.SCENE_SIDE)
    assert len({probe.caption_of(truth) for _, truth in renders}) > 1


def test_report_of_an_empty_set_says_so_instead_of_dividing_by_zero(capsys):
    probe.report(model=None, setup=None, title="0 captions", rows=[])
    assert "nothing to score" in capsys.readouterr().out
