"""`mixdata validate RECIPE`: check a recipe and print its resolved plan."""
from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    parser = sub.add_parser(
        "validate", help="check a recipe and print its resolved plan",
        description="Parse and validate a recipe, its train: section included, then print "
                    "every stage's resolved plan: budget, image policy and normalised mixture "
                    "shares (alpha entries resolved), and the trainer's model and stages. With "
                    "an HF tokenizer folder it also checks the recipe's image settings against "
                    "the folder's processor configs (a local folder only: nothing is fetched; a "
                    "remote one is checked when a stage is built). Nothing is read or built. "
                    "Exits 0 when valid and 2 when the recipe is invalid, with a message naming "
                    "the file, the key path, what was found and what was expected.")
    parser.add_argument("recipe", help="path to a recipe YAML file")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(run=run)


def plan_of(recipe, train) -> dict:
    stages = {}
    for name, stage in recipe.stages.items():
        image = {k: v for k, v in vars(stage.image).items() if v is not None}
        budget = {stage.budget.unit: stage.budget.amount} if stage.budget else None
        stages[name] = {
            "budget": budget or "all data, no repeats",
            "seq_len": recipe.stage_seq_len(name),
            "weight_by": stage.weight_by,
            "image": {k: image[k] for k in ("preset", "max_side", "longest_edge", "tile",
                                            "min_tiles", "max_tiles") if k in image},
            "shares": {src: round(share, 6) for src, share in stage.shares().items()},
            "train": _train_of(train.stage(name)),
        }
    return {"recipe": recipe.name, "seed": recipe.seed, "tokenizer": recipe.tokenizer,
            "dialect": recipe.family or "mixdata", "add_tokens": recipe.add_tokens,
            "seq_len": recipe.seq_len, "image_tokens_per_tile": recipe.image_tokens_per_tile,
            "sources": {n: {"format": s.format, "uri": s.uri} for n, s in recipe.sources.items()},
            "model": train.model_label, "stages": stages}


def _train_of(spec) -> dict:
    budget = "one pass" if spec.budget is None else \
        {k: v for k, v in (("steps", spec.budget.steps), ("tokens", spec.budget.tokens)) if v}
    return {"trainable": vars(spec.trainable), "budget": budget}


def run(args: argparse.Namespace) -> int:
    from ..recipe import load_recipe
    from ..tokens.dialect import check_dialect
    from ..train.config import parse_train

    recipe = load_recipe(args.recipe)
    note = check_dialect(recipe, fetch=False)
    plan = plan_of(recipe, parse_train(recipe))
    if args.json:
        print(json.dumps({**plan, "note": note} if note else plan, indent=2))
        return 0
    print(f"recipe {plan['recipe']}: valid  (seed {plan['seed']}, tokenizer {plan['tokenizer']}, "
          f"seq_len {plan['seq_len']}, {plan['image_tokens_per_tile']} tokens/tile)")
    if recipe.family:
        print(f"dialect: {recipe.family} (the model's own tokens, chat template and image "
              f"layout{'; may add missing image tokens' if recipe.add_tokens else ''})")
    if note:
        print(f"note: {note}")
    print(f"sources: {len(plan['sources'])}")
    for name, src in plan["sources"].items():
        print(f"  {name:<20} {src['format']:<16} {src['uri']}")
    for name, stage in plan["stages"].items():
        image = ", ".join(f"{k}={v}" for k, v in stage["image"].items())
        print(f"stage {name}: budget {stage['budget']}, seq_len {stage['seq_len']}, "
              f"weight_by {stage['weight_by']}, image [{image}]")
        for src, share in stage["shares"].items():
            print(f"  {src:<20} {share * 100:6.2f}%")
        trainable = ", ".join(f"{k} {v}" for k, v in stage["train"]["trainable"].items())
        print(f"  train: {trainable}; budget {stage['train']['budget']}")
    print(f"train: model {plan['model']}")
    return 0
