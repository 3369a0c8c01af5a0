"""tools/feature_probe.py: its renders are labelled right, and its linear probe reads what a
feature holds and nothing more."""
import importlib.util
from pathlib import Path

import numpy as np
import torch

from mixdata.demo import content

TOOL = Path(__file__).resolve().parents[1] / "tools" / "feature_probe.py"
spec = importlib.util.spec_from_file_location("feature_probe", TOOL)
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


def test_renders_are_training_split_one_shape_scenes_with_their_labels():
    images, labels = probe.renders(40)
    assert images.shape == (40, content.SCENE_SIDE, content.SCENE_SIDE, 3)
    assert images.dtype == np.uint8
    for index in range(40):
        item = content.Item(position_rank=int(labels["position"][index]),
                            colour=tuple(content.COLOURS)[labels["colour"][index]],
                            shape=content.SHAPES[labels["shape"][index]])
        assert not content.held_out(content.scene_key((item,)))
        # the shape's colour is drawn at its place, so the labels belong to the picture
        cx, cy = content._CENTRES[item.position]
        assert tuple(images[index, cy, cx]) == content.COLOURS[item.colour]
    assert len(set(labels["shape"].tolist())) == len(content.SHAPES)


def test_linear_probe_reads_a_feature_that_holds_the_class_and_not_one_that_does_not():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 4, size=600)
    noise = torch.from_numpy(rng.normal(size=(600, 32))).float()
    holds = noise.clone()
    holds[:, :4] += 5 * torch.nn.functional.one_hot(torch.from_numpy(classes), 4).float()
    assert probe.linear_probe(holds, classes, 4) > 0.95
    assert probe.linear_probe(noise, classes, 4) < 0.4   # chance 0.25, 120 scored rows
