"""Which scene attributes a trained stage of the demo sees: colour, shape and position.

For each held-out one-shape caption ("a red circle on the right."), the caption is scored
(teacher-forced log-likelihood, with its image) once per value of one attribute, the others
kept, and the attribute counts as seen when the true value scores best. Chance is one over
the number of values. No training format is assumed beyond pre-training's captions, so it
reads a pre-trained stage directly, where the SFT-format VQA eval cannot.

Held-out scenes are whole combinations that no training file holds (`content.held_out`): a
one-shape eval scene's colour, shape and position never appeared together in training. A
model that sees the colour and recalls which shapes and places went with it in training is
therefore *below* chance on shape and position, which this probe shows and caption loss
alone does not. So the probe also scores new renders of one-shape *training* scenes, where
recalling combinations can neither help nor hurt.

    PYTHONPATH=. .venv/bin/python tools/grounding_probe.py runs/demo --stage pretrain
"""
from __future__ import annotations

import numpy as np

from mixdata.demo import content
from mixdata.demo.files import png_bytes
from mixdata.train.evaluate import EvalSetup, read_split, render_example, score_docs
from mixdata.train.report import open_probe, stage_setup

RENDER_SEED = 7  # of the new training-split renders
VALUES = {"colour": tuple(content.COLOURS), "shape": content.SHAPES,
          "position": tuple(content.PLACE_PHRASES.values())}


def one_shape(caption: str) -> dict[str, str] | None:
    """{colour, shape, position phrase} of a one-shape caption, else None."""
    words = caption.rstrip(".").split(" ", 3)
    if " and " in caption or len(words) != 4 or words[0] != "a":
        return None
    return {"colour": words[1], "shape": words[2], "position": words[3]}


def caption_of(attributes: dict[str, str]) -> str:
    return f"a {attributes['colour']} {attributes['shape']} {attributes['position']}."


def attribute_accuracy(model, setup: EvalSetup, image: bytes, truth: dict[str, str],
                       attribute: str) -> bool:
    options = VALUES[attribute]
    captions = [caption_of({**truth, attribute: value}) for value in options]
    scores = score_docs(model, setup, [render_example(setup, image, [(c, None)], "caption")
                                       for c in captions])
    best = max(range(len(options)), key=lambda i: scores[i][0])
    return options[best] == truth[attribute]


def main() -> None:
    args, recipe, tokenizer, model, root = open_probe(
        __doc__.splitlines()[0], "pretrain", 150, "captions per set at most")
    rows = [(r, one_shape(r["caption"])) for r in read_split(root, "caption", None)]
    held = [((root / r["image"]).read_bytes(), truth) for r, truth in rows if truth][:args.limit]
    # captions are seen the way pre-training saw them
    setup = stage_setup(recipe, tokenizer, "pretrain")
    report(model, setup, f"{args.run}/{args.stage}: {len(held)} held-out one-shape captions",
           held)
    report(model, setup, f"{len(held)} new renders of one-shape training scenes",
           training_renders(len(held)))


def training_renders(count: int) -> list[tuple[bytes, dict[str, str]]]:
    """One-shape scenes of the training split, drawn anew: combinations training saw, in
    renders no file holds. Here recalling combinations cannot push an attribute below chance,
    so what stays at chance is not seen at all."""
    rng = np.random.default_rng(RENDER_SEED)
    scenes = [content.random_scene(rng, 1) for _ in range(count)]
    return [(png_bytes(content.draw_scene(s, rng)), one_shape(content.describe(s)))
            for s in scenes]


def report(model, setup: EvalSetup, title: str, rows) -> None:
    print(title)
    if not rows:
        print("  nothing to score: the eval split holds no one-shape captions")
        return
    for attribute, options in VALUES.items():
        seen = sum(attribute_accuracy(model, setup, image, truth, attribute)
                   for image, truth in rows)
        print(f"  {attribute:<9} {seen / len(rows):.3f}  (chance {1 / len(options):.3f})")


if __name__ == "__main__":
    main()
