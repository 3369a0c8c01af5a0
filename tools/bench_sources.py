#!/usr/bin/env python3
"""Source adapter throughput on the demo corpus, and PDF pages against PyMuPDF alone.

1. Records/s per adapter: a full `read` of every unit of every source of recipes/demo.yaml on
   the demo corpus at `--scale` (generated under $MIXDATA_CACHE on first use).
2. PDF pages/s: the pdfa-wds adapter (tar streaming, JSON annotations, render worker, JPEG)
   against PyMuPDF alone rendering the same pages and JPEG-encoding them, both with PyMuPDF's
   own encoder (`Pixmap.tobytes("jpeg")`) and with Pillow (what the adapter uses: the floor).
   Each side runs in this process; passes alternate and the best of `--repeat` counts. Pages
   come from the demo's pdfa tars (small 384x256 pt pages) and from generated US-Letter pages
   of dense text at 150 dpi (1275x1650 px), the size real documents have.

  PYTHONPATH=. .venv/bin/python tools/bench_sources.py --scale 8 --repeat 3
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(action) -> tuple[float, object]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def full_read(source) -> int:
    return sum(1 for unit in source.units() for _ in source.read(unit))


def adapter_rates(recipe, repeat: int) -> list[dict]:
    """Best-of-`repeat` records/s of a full read, per source."""
    from mixdata.sources import open_source

    rows = []
    for name, spec in recipe.sources.items():
        best, records = float("inf"), 0
        for _ in range(repeat):
            seconds, records = timed(lambda: full_read(open_source(spec)))
            best = min(best, seconds)
        rows.append({"source": name, "format": spec.format, "records": records,
                     "seconds": round(best, 3), "records_per_s": round(records / best, 1)})
        print(f"  {name:<16} {spec.format:<14} {records:>6} records  "
              f"{records / best:10.1f} rec/s", flush=True)
    return rows


def pdf_pages(spec) -> list[tuple[bytes, int]]:
    """(PDF bytes, page index) of every page the adapter yields, from the same tars."""
    from mixdata.sample import Sample
    from mixdata.sources import open_source
    from mixdata.sources.records import file_stem
    from mixdata.sources.tario import iter_tar_groups

    source = open_source(spec)
    pdfs, pages = {}, []
    for unit in source.units():
        for key, members, _ in iter_tar_groups(unit):
            if isinstance(members, dict):
                pdfs[f"{file_stem(unit)}-{key}"] = members.get("pdf")
        for item in source.read(unit):
            if isinstance(item, Sample):
                pages.append((pdfs[item.meta["doc"]], item.meta["page"]))
    return pages


def render_alone(pages, dpi: int, encoder: str) -> int:
    """PyMuPDF opens each document once and renders + encodes each page: the baseline."""
    import pymupdf

    from mixdata.sources.pdfrender import render_page

    done, doc, current = 0, None, None
    for data, index in pages:
        if data is not current:
            doc, current = pymupdf.open(stream=data, filetype="pdf"), data
        page = doc.load_page(index)
        if encoder == "pillow":
            render_page(page, dpi)
        else:
            page.get_pixmap(dpi=dpi).tobytes("jpeg", jpg_quality=90)
        done += 1
    return done


def letter_tar(folder: Path, docs: int, pages_per_doc: int = 3, seed: int = 0) -> Path:
    """A pdfa-wds tar of US-Letter pages of dense 10 pt text: a realistic page size (the demo's
    pages are 384x256 pt)."""
    import io
    import random
    import tarfile

    import pymupdf

    rng = random.Random(seed)
    words = ["the", "model", "reads", "pages", "of", "text", "data", "mixture", "token",
             "image", "with", "and", "a", "scale", "number", "report", "table", "figure"]
    with tarfile.open(folder / "letter-0000.tar", "w") as tar:
        for d in range(docs):
            doc, annotations = pymupdf.open(), []
            for _ in range(pages_per_doc):
                lines = [" ".join(rng.choice(words) for _ in range(14)) for _ in range(60)]
                doc.new_page(width=612, height=792).insert_text((54, 60), "\n".join(lines),
                                                                 fontsize=10)
                annotations.append({"lines": {"text": lines}})
            for name, data in ((f"{d:07d}.pdf", doc.tobytes()),
                               (f"{d:07d}.json", json.dumps({"pages": annotations}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return folder / "letter-0000.tar"


def pdf_comparison(spec, dpi: int, repeat: int, label: str) -> dict:
    from mixdata.sources import open_source

    spec = dataclasses.replace(spec, options=dataclasses.replace(spec.options, dpi=dpi))
    pages = pdf_pages(spec)
    full_read(open_source(spec))  # warm-up: starts the forkserver once for this process
    paths = {"adapter (pdfa-wds read)": lambda: full_read(open_source(spec)),
             "PyMuPDF render + Pillow JPEG (floor)": lambda: render_alone(pages, dpi, "pillow"),
             "PyMuPDF render + PyMuPDF JPEG": lambda: render_alone(pages, dpi, "pymupdf")}
    best = {name: float("inf") for name in paths}
    for _ in range(repeat):
        for name, action in paths.items():
            best[name] = min(best[name], timed(action)[0])
    rates = {name: round(len(pages) / seconds, 1) for name, seconds in best.items()}
    adapter, floor, alone = rates.values()
    result = {"pages_from": label, "dpi": dpi, "pages": len(pages), "pages_per_s": rates,
              "adapter_vs_floor": round(adapter / floor, 2),
              "adapter_vs_pymupdf_jpeg": round(adapter / alone, 2)}
    print(json.dumps(result, indent=2), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=8, help="demo corpus scale (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="passes; the best counts")
    parser.add_argument("--dpi", type=int, action="append",
                        help="PDF comparison dpi (repeatable; default 72 and 150)")
    parser.add_argument("--letters", type=int, default=20,
                        help="US-Letter documents (3 pages each) for the 150 dpi comparison")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    os.environ["MIXDATA_DEMO_SCALE"] = str(args.scale)  # demo:// URIs resolve at this scale
    from mixdata.demo.corpus import ensure_corpus
    from mixdata.recipe import load_recipe

    seconds, root = timed(lambda: ensure_corpus(scale=args.scale))
    print(f"demo corpus at scale {args.scale}: {root} ({seconds:.1f} s)", flush=True)
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml")
    print("records/s per adapter (full read, best of passes):")
    results = {"scale": args.scale, "adapters": adapter_rates(recipe, args.repeat), "pdf": []}
    demo_pdfa = recipe.sources["pdfa"]
    for dpi in args.dpi or [72, 150]:
        results["pdf"].append(pdf_comparison(demo_pdfa, dpi, args.repeat, "demo pdfa"))
    with tempfile.TemporaryDirectory() as folder:
        letters = dataclasses.replace(demo_pdfa, uri=str(letter_tar(Path(folder), args.letters)))
        results["pdf"].append(pdf_comparison(letters, 150, args.repeat, "US Letter, dense text"))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
