"""The `mixdata` command line. Thin: each subcommand lives in `mixdata/commands/<name>.py`."""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import MixdataError, RecipeError

COMMANDS = ("demo", "validate", "sources", "build", "stats", "inspect", "train", "eval")

DESCRIPTION = """\
mixdata turns multimodal corpora into weighted, packed WebDataset shards for training
vision-language models, streams them into PyTorch, and trains a small VLM on them.

Typical session:
  mixdata demo --out /tmp/demo          write the synthetic demo corpus
  mixdata validate recipes/demo.yaml    check a recipe and print its resolved mixture
  mixdata sources recipes/demo.yaml     peek at every source and count rejects
  mixdata build recipes/demo.yaml       build shards for every stage
  mixdata stats shards/demo/pretrain    realised shares, packing, rejects
  mixdata train recipes/demo.yaml       train the bundled VLM on every stage
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixdata", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mixdata {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"mixdata.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"mixdata.commands.{name}":
                raise
            continue  # command not built yet in this checkout
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except RecipeError as err:
        print(f"mixdata: invalid recipe: {err}", file=sys.stderr)
        return 2
    except MixdataError as err:
        print(f"mixdata: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mixdata: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
