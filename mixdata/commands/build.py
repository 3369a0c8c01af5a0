"""`mixdata build RECIPE`: build packed, weighted WebDataset shards for one or all stages."""
from __future__ import annotations

import argparse
import json
import os


def register(sub) -> None:
    parser = sub.add_parser(
        "build", help="build packed WebDataset shards from a recipe",
        description="Build the shards of one stage (or all stages) of a recipe in three phases: "
                    "prepare every needed source unit in parallel (cached under "
                    "OUT/.prepare, so re-runs and re-mixes skip finished units), plan the exact "
                    "mixture and packing from lengths alone, and write shards atomically. "
                    "Prints a summary table: shares realised against target, packing "
                    "efficiency, rejects and unused records by reason. Damaged input units and "
                    "malformed records are counted rejects (rejects.jsonl), never a crash; a "
                    "source rejecting more than its max_reject_ratio (default 0.5) stops the "
                    "build, and every build checks read = written + rejected + unused per "
                    "source. Output per stage: shard-*.tar, manifest.json, rejects.jsonl, "
                    "timings.json.")
    parser.add_argument("recipe", help="path to a recipe YAML file")
    parser.add_argument("--stage", default="all",
                        help="stage name to build, or 'all' (default) for every stage in order")
    parser.add_argument("--out", default=None,
                        help="output folder (default shards/<recipe>/<stage>; with --stage all, "
                             "a parent folder that gets one sub-folder per stage)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="worker processes for the prepare, plan and write phases "
                             "(default: min(4, CPU count)); with --engine ray and no "
                             "--address, the CPUs of the private Ray instance; ignored on an "
                             "existing cluster, which uses all its CPUs. The local pool "
                             "starts only for a stage whose work, estimated from its first "
                             "units, comes to a few seconds on one core, so a small build "
                             "never pays for it. Output is identical for any value")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="where tasks run: 'local' (default), a process pool on this "
                             "machine; 'ray', one Ray task per source unit, plan chunk and "
                             "shard, retried by Ray when its worker or node dies (needs "
                             "pip install 'mixdata[ray]'). Output is byte-identical for "
                             "both; the manifest's run.task_retries counts tasks re-run")
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="with --engine ray: the existing Ray cluster to run on, as "
                             "HOST:PORT printed by 'ray start --head', or 'auto' for the "
                             "cluster started on this machine or named by $RAY_ADDRESS. "
                             "Every node must see the output folder at the same path and "
                             "have mixdata installed. Without it, a private Ray instance on "
                             "127.0.0.1 starts and stops with the build")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first rejected record or damaged unit, naming it "
                             "(default: rejects are counted, and a build stops only when a "
                             "source rejects more than its max_reject_ratio)")
    parser.add_argument("--json", action="store_true", help="print the manifests as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..building import build_stage
    from ..building.engines import open_engine
    from ..building.report import summary_table
    from ..manifest import read_manifest
    from ..recipe import load_recipe

    recipe = load_recipe(args.recipe)
    stages = list(recipe.stages) if args.stage == "all" else [args.stage]
    engine = open_engine(args.engine, args.workers, address=args.address)  # one for all stages
    try:
        for stage in stages:
            out = None
            if args.out:
                out = Path(args.out) / stage if args.stage == "all" else Path(args.out)
            folder = build_stage(recipe, stage, out=out, workers=args.workers,
                                 progress=not args.quiet, strict=args.strict, engine=engine)
            manifest = read_manifest(folder)
            if args.json:
                print(json.dumps(manifest.to_json(), indent=1, sort_keys=True))
            else:
                print(summary_table(manifest))
                print(f"wrote {folder}")
    finally:
        engine.close()
    return 0
