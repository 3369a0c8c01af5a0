"""`mixdata eval RUN_DIR`: evaluate every finished stage of a training run."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    parser = sub.add_parser(
        "eval", help="evaluate a training run's stages on the held-out split",
        description="Load each finished stage's weights from RUN_DIR (RUN_DIR/<stage>/final.pt), "
                    "evaluate VQA accuracy (with chance), OCR exact match and caption loss on "
                    "the held-out split with that stage's image policy, print a table and save "
                    "it to RUN_DIR/eval.json.")
    parser.add_argument("run_dir", help="a folder written by `mixdata train`")
    parser.add_argument("--stage", default="all", help="stage to evaluate, or 'all' (default)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..train.report import evaluate_run, print_table

    evaluate_run(args.run_dir, stage=args.stage, device=args.device)
    print_table(args.run_dir)
    return 0
