"""`mixdata train RECIPE`: train the bundled VLM on every stage of a recipe."""
from __future__ import annotations

import argparse
import os


def register(sub) -> None:
    parser = sub.add_parser(
        "train", help="train the bundled VLM on a recipe's stages",
        description="Train the bundled vision-language model on the recipe's stages in order "
                    "(pretrain -> high-res -> SFT in the demo). Missing shards are built "
                    "first. Each stage starts from the final weights of the stage trained "
                    "before it, writes one JSON line of metrics per step to RUN/metrics.jsonl, "
                    "checkpoints to RUN/<stage>/checkpoint.pt, and is evaluated on the "
                    "held-out split at its end (RUN/eval.json, whose table says which stage "
                    "each one started from). RUN/run.json records the recipe, the seed and "
                    "the stages trained. Multi-GPU: torchrun --nproc_per_node N -m mixdata.cli "
                    "train RECIPE.",
        epilog="Ablation, e.g. what the demo's two high-res stages add: mixdata train "
               "recipes/demo.yaml --out runs/demo-no-highres --skip read --skip highres "
               "--reuse runs/demo (SFT then starts "
               "from pretrain, and pretrain is copied from runs/demo instead of retrained).")
    parser.add_argument("recipe", help="path to a recipe YAML file")
    parser.add_argument("--stage", default="all",
                        help="stage name to train, or 'all' (default); with --skip, the stage "
                             "starts from the last stage before it that is not skipped")
    parser.add_argument("--skip", action="append", default=[], metavar="STAGE",
                        help="leave this stage out (repeatable): the next stage starts from "
                             "the last one trained before it; run.json and the eval table "
                             "say so")
    parser.add_argument("--out", default=None, help="run folder (default runs/<recipe name>)")
    parser.add_argument("--seed", type=int, default=None,
                        help="training seed (initialisation, data order); default train.seed, "
                             "else the recipe's seed")
    parser.add_argument("--stage-seed", action="append", default=[], metavar="STAGE=N",
                        help="this stage's seed instead of --seed's (repeatable); with --reuse, "
                             "e.g. --stage-seed sft=2 retrains only SFT from the same high-res "
                             "weights")
    parser.add_argument("--reuse", metavar="RUN", default=None,
                        help="copy, instead of training, each stage that run folder RUN "
                             "finished with the same recipe, seeds and stages up to it")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA when available, else CPU")
    parser.add_argument("--resume", action="store_true",
                        help="continue a run: finished stages are kept, an unfinished one "
                             "resumes exactly from its checkpoint")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="worker processes for building missing shards")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def parse_stage_seeds(items: list[str]) -> dict[str, int]:
    """`["sft=2"]` -> {"sft": 2}; MixdataError naming a malformed item."""
    from ..errors import MixdataError

    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name] = int(value)
        except ValueError:
            raise MixdataError(f"--stage-seed {item!r}: expected STAGE=N with an integer N, "
                               "e.g. --stage-seed sft=2") from None
    return out


def run(args: argparse.Namespace) -> int:
    from ..recipe import load_recipe
    from ..train.run import train_recipe

    recipe = load_recipe(args.recipe)
    folder = train_recipe(recipe, stage=args.stage, skip=tuple(args.skip), out=args.out,
                          device=args.device, resume=args.resume, progress=not args.quiet,
                          workers=args.workers, seed=args.seed,
                          stage_seed=parse_stage_seeds(args.stage_seed), reuse=args.reuse)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only the first rank reports
        print(f"run folder: {folder}")
    return 0
