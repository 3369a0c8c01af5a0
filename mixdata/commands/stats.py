"""`mixdata stats DIR`: the build summary table, read back from a manifest."""
from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    parser = sub.add_parser(
        "stats", help="print the summary of a built stage from its manifest",
        description="Read DIR/manifest.json (a shard folder, a manifest path or an fsspec URL) "
                    "and print per-source shares realised against target, records read / "
                    "written / rejected / unused, epochs, packing efficiency and rejects by "
                    "reason.")
    parser.add_argument("dir", help="shard folder, manifest.json path or URL")
    parser.add_argument("--json", action="store_true",
                        help="print the manifest's accounting as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..building.report import summary_table
    from ..manifest import read_manifest

    manifest = read_manifest(args.dir)
    if args.json:
        keys = ("stage", "sources", "packing", "mixture", "shards", "run")
        data = manifest.to_json()
        print(json.dumps({k: data[k] for k in keys}, indent=1, sort_keys=True))
    else:
        print(summary_table(manifest))
    return 0
