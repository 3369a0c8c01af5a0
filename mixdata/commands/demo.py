"""`mixdata demo [--out DIR] [--scale N] [--force]`: write the synthetic demo corpus."""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path


def register(sub) -> None:
    parser = sub.add_parser(
        "demo", help="write the synthetic demo corpus",
        description="Write the deterministic synthetic demo corpus, in the real public formats "
                    "mixdata reads (OBELICS parquet, img2dataset tars, pdfa-eng-wds, raw PDFs, "
                    "RenderedText, FineWeb, Dolma, the_cauldron, LLaVA, chat messages) plus a "
                    "held-out eval split and MANIFEST.json (every file's size and sha256, and "
                    "the deliberately malformed records of each kind). The same scale always "
                    "gives byte-identical files. Recipes refer to the cached copy with demo:// "
                    "URIs, which generate it on first use, so running this is optional.")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="folder to write into: new or empty, or an earlier demo corpus "
                             "(default: the cache that demo:// URIs read, "
                             "$MIXDATA_CACHE/demo/v<VERSION>-scale<N>, cache default "
                             "~/.cache/mixdata)")
    parser.add_argument("--scale", metavar="N", type=float, default=None,
                        help="multiply every record count by N (fractions allowed; each kind "
                             "keeps at least a few records); default $MIXDATA_DEMO_SCALE or 1")
    parser.add_argument("--force", action="store_true",
                        help="regenerate even if the folder already holds a demo corpus of "
                             "this scale (replaces it; never deletes a folder that is not one)")
    parser.set_defaults(run=run)


def _print_progress(kind: str, report, seconds: float) -> None:
    broken = sum(report.malformed.values())
    print(f"  {kind:<18} {report.records:6d} records  {broken:2d} malformed  {seconds:5.2f} s",
          file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from ..demo import corpus
    from ..errors import MixdataError

    scale = corpus.default_scale() if args.scale is None else corpus.check_scale(args.scale)
    start = time.perf_counter()
    if args.out is None:
        root = corpus.cache_root(scale)
        if corpus.read_manifest(root) and not args.force:
            print(f"demo corpus (scale {scale:g}) already at {root}; --force regenerates it")
            return 0
        print(f"writing the demo corpus (scale {scale:g}) to {root}", file=sys.stderr)
        corpus.ensure_corpus(scale, force=args.force, progress=_print_progress)
    else:
        root = Path(args.out)
        existing = corpus.read_manifest(root)
        if existing and existing.get("scale") == scale and not args.force:
            print(f"demo corpus (scale {scale:g}) already at {root}; --force regenerates it")
            return 0
        if existing and not args.force:
            raise MixdataError(f"{root} holds a demo corpus of scale {existing.get('scale')}; "
                               "pass --force to replace it")
        if existing:
            shutil.rmtree(root)
        print(f"writing the demo corpus (scale {scale:g}) to {root}", file=sys.stderr)
        corpus.write_corpus(root, scale, progress=_print_progress)
    manifest = corpus.read_manifest(root)
    size = sum(f["size"] for f in manifest["files"].values())
    print(f"demo corpus: {len(manifest['files'])} files, {size / 1e6:.1f} MB in "
          f"{time.perf_counter() - start:.1f} s at {root}")
    return 0
