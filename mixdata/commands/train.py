"""`mixdata train RECIPE`: train the bundled VLM on every stage of a recipe."""
from __future__ import annotations

import argparse
import os


def register(sub) -> None:
    parser = sub.add_parser(
        "train", help="train the bundled VLM on a recipe's stages",
        description="Train the bundled vision-language model on the recipe's stages in order "
                    "(pretrain -> high-res -> SFT in the demo). Missing shards are built "
                    "first. Each stage starts from the previous stage's final weights, writes "
                    "one JSON line of metrics per step to RUN/metrics.jsonl, checkpoints to "
                    "RUN/<stage>/checkpoint.pt, and is evaluated on the held-out split at its "
                    "end (RUN/eval.json). Multi-GPU: torchrun --nproc_per_node N -m mixdata.cli "
                    "train RECIPE.")
    parser.add_argument("recipe", help="path to a recipe YAML file")
    parser.add_argument("--stage", default="all", help="stage name to train, or 'all' (default)")
    parser.add_argument("--out", default=None, help="run folder (default runs/<recipe name>)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA when available, else CPU")
    parser.add_argument("--resume", action="store_true",
                        help="continue a run: finished stages are kept, an unfinished one "
                             "resumes exactly from its checkpoint")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="worker processes for building missing shards")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..recipe import load_recipe
    from ..train.run import train_recipe

    recipe = load_recipe(args.recipe)
    folder = train_recipe(recipe, stage=args.stage, out=args.out, device=args.device,
                          resume=args.resume, progress=not args.quiet, workers=args.workers)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only the first rank reports
        print(f"run folder: {folder}")
    return 0
