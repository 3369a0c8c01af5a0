"""`mixdata eval RUN_DIR [RUN_DIR ...]`: evaluate training runs' stages, or compare runs."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    parser = sub.add_parser(
        "eval", help="evaluate training runs' stages on the held-out split, or compare runs",
        description="Load each finished stage's weights from RUN_DIR (RUN_DIR/<stage>/final.pt), "
                    "evaluate VQA accuracy (with chance, and by question kind where the "
                    "split's rows name one: the demo's colour, shape, position, count), OCR "
                    "exact match and token accuracy (the share of answer tokens read right), "
                    "caption loss "
                    "(with the true images and with the images shuffled among the captions) on "
                    "the held-out split with that stage's image policy, print a table and save "
                    "it to RUN_DIR/eval.json. With several run folders, also print them side "
                    "by side after each one's last stage (and the difference of two).")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="folders written by `mixdata train`")
    parser.add_argument("--stage", default="all", help="stage to evaluate, or 'all' (default)")
    parser.add_argument("--saved", action="store_true",
                        help="evaluate nothing: print the tables saved in RUN_DIR/eval.json")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..train.report import compare_runs, evaluate_run, print_table

    for run_dir in args.run_dirs:
        if not args.saved:
            evaluate_run(run_dir, stage=args.stage, device=args.device)
        print_table(run_dir)
    if len(args.run_dirs) > 1:
        print(compare_runs(args.run_dirs))
    return 0
