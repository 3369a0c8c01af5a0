"""Which scene attributes a trained stage's image features hold, read by a linear probe.

`grounding_probe.py` asks whether the model *names* colour, shape and position in a caption.
This asks whether the features the LM is given carry them at all: one-shape scenes of the
training split are drawn anew, each is encoded once, and a softmax-regression probe per
attribute is fitted on most of them and scored on the rest, from two places:
- the vision tower's patch features (what the connector reads);
- the connector's image tokens (what the LM reads).

An attribute the probe reads but the caption probe does not is in the tokens and unused by
the LM; one the probe cannot read is lost before the LM.

The same probe of the model at the run's initial weights (its first stage's seed) is
printed first: random features of a 64 px render already hold much of what a linear probe
can read, so a stage's score means something only against that baseline.

    PYTHONPATH=. .venv/bin/python tools/feature_probe.py runs/demo --stage pretrain
"""
from __future__ import annotations

import numpy as np
import torch

from mixdata.demo import content
from mixdata.loading import normalize_pixels
from mixdata.train.config import parse_train
from mixdata.train.report import initial_seed, open_probe, stage_setup, untrained_model

RENDER_SEED = 3
TEST_SHARE = 0.2
ATTRIBUTES = {"colour": tuple(content.COLOURS), "shape": content.SHAPES,
              "position": content.POSITIONS}


def renders(count: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """[count, H, W, 3] uint8 renders of one-shape training scenes, and each attribute's
    class index per render."""
    rng = np.random.default_rng(RENDER_SEED)
    images, labels = [], {name: [] for name in ATTRIBUTES}
    for _ in range(count):
        item, = content.random_scene(rng, 1)
        images.append(np.asarray(content.draw_scene((item,), rng)))
        for name, values in ATTRIBUTES.items():
            labels[name].append(values.index(getattr(item, name)))
    return np.stack(images), {name: np.array(v) for name, v in labels.items()}


@torch.no_grad()
def features(model, setup, images: np.ndarray) -> dict[str, torch.Tensor]:
    """Each render's vision patch features and connector tokens, flattened per render."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    pixels = normalize_pixels(pixels, setup.policy.mean, setup.policy.std, setup.device)
    model.eval()
    patches = model.vision(pixels)
    tokens = model.connector(patches)
    return {"vision patches": patches.flatten(1).float(),
            "connector tokens": tokens.flatten(1).float()}


def linear_probe(x: torch.Tensor, y: np.ndarray, classes: int, *, steps: int = 300,
                 weight_decay: float = 1e-3) -> float:
    """Accuracy on the last TEST_SHARE of the rows of a softmax regression fitted (full-batch
    Adam, standardised inputs) on the others."""
    split = int(len(x) * (1 - TEST_SHARE))
    labels = torch.as_tensor(y, dtype=torch.long)
    mean, std = x[:split].mean(0), x[:split].std(0) + 1e-5
    x = (x - mean) / std
    torch.manual_seed(0)
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(x[:split] @ weight + bias, labels[:split])
        loss = loss + weight_decay * weight.pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = (x[split:] @ weight + bias).argmax(1)
    return float((predicted == labels[split:]).float().mean())


def main() -> None:
    args, recipe, tokenizer, model, _ = open_probe(__doc__.splitlines()[0], "pretrain", 1900,
                                                   "renders (80% fit, 20% scored)")
    images, labels = renders(args.limit)
    setup = stage_setup(recipe, tokenizer, args.stage)
    untrained = untrained_model(parse_train(recipe), tokenizer, seed=initial_seed(args.run))
    print(f"{args.limit} one-shape training renders, {TEST_SHARE:.0%} held back")
    for title, probed in (("untrained (initial weights)", untrained),
                          (f"{args.run}/{args.stage}", model)):
        print(title)
        for place, x in features(probed, setup, images).items():
            scores = "  ".join(f"{name} {linear_probe(x, labels[name], len(values)):.3f} "
                               f"(chance {1 / len(values):.3f})"
                               for name, values in ATTRIBUTES.items())
            print(f"  {place:<17} {scores}")


if __name__ == "__main__":
    main()
