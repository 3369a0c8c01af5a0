"""Benchmark: mixdata's idefics3 image path against HF's Idefics3ImageProcessor and the floor.

Inputs, generated with fixed seeds: 12 MP photo-like JPEGs (smooth colour fields, gradients,
hard-edged shapes and sensor grain, quality 90) and PDF pages rendered to JPEG the way the
PDF adapters do (150 dpi). Paths compared in one run, bytes in, pixels out:

1. mixdata: decode (JPEG draft) -> plan -> one resize -> tiles + global view (uint8 views);
   also `process` + `cut_tiles` (the build's encode and the loader's decode in between);
2. HF: Idefics3ImageProcessor (longest_edge 1456, tiles 364, splitting on) from the decoded
   image, checked to produce the same grid; skipped with a message if transformers is absent;
3. the floor: JPEG decode with the same draft and one LANCZOS resize to the same size.

Usage: python tools/bench_images.py [--photos 6] [--pages 6] [--repeat 3]
transformers is not a mixdata dependency: run it from a venv that has it and sees mixdata
(BENCHMARKS.md gives the set-up).
"""
from __future__ import annotations

import argparse
import io
import platform
import time
from functools import partial

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from mixdata.image import ImagePolicy, cut_tiles, process, tiles_from_image
from mixdata.image.decode import Header, draft_jpeg, open_image
from mixdata.image.planning import plan_for
from mixdata.image.processing import RESAMPLE, decode_planned, needed_pixels

MIXDATA = "mixdata idefics3 (decode, plan, resize, tiles)"
FLOOR = "floor (draft decode + one resize)"
HF = "HF Idefics3ImageProcessor"


def photo_jpeg(seed: int, width: int = 4000, height: int = 3000) -> bytes:
    """A photo-like 12 MP JPEG: colour fields at several scales, a gradient, shapes, grain."""
    rng = np.random.default_rng(seed)
    layers = []
    for cells in (6, 40, 300):  # coarse blobs to fine texture
        noise = rng.integers(0, 256, (cells * 3 // 4, cells, 3), dtype=np.uint8)
        layers.append(Image.fromarray(noise).resize((width, height), Image.Resampling.BICUBIC))
    image = Image.blend(Image.blend(layers[0], layers[1], 0.35), layers[2], 0.15)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    image = Image.blend(image, Image.fromarray(ramp.astype(np.uint8)).convert("RGB"), 0.25)
    draw = ImageDraw.Draw(image)
    for _ in range(40):  # hard edges, as objects give
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(40, 900)), int(rng.integers(40, 900))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + w, y + h), fill=colour)
    grain = Image.merge("RGB", [Image.effect_noise((width, height), 10) for _ in range(3)])
    image = ImageChops.add(image, grain, 1.0, -128)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def page_jpegs(count: int, seed: int = 0, dpi: int = 150) -> list[bytes]:
    """Letter pages of running text, headings and rules, rendered like the PDF adapters do."""
    import pymupdf as fitz

    rng = np.random.default_rng(seed)
    words = ["data", "mixture", "vision", "token", "image", "page", "model", "train", "shard",
             "resolution", "the", "of", "and", "a", "to", "in", "is", "for", "with", "grid"]
    doc = fitz.open()
    for number in range(count):
        page = doc.new_page(width=612, height=792)
        page.insert_text((72, 80), f"Section {number + 1}: results", fontsize=18)
        page.draw_line((72, 90), (540, 90))
        text = " ".join(rng.choice(words, 900))
        page.insert_textbox(fitz.Rect(72, 110, 540, 720), text, fontsize=9)
    pages = []
    for page in doc:
        pix = page.get_pixmap(dpi=dpi)
        image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90)
        pages.append(out.getvalue())
    return pages


def mixdata_path(policy: ImagePolicy, data: bytes):
    image, plan, _ = decode_planned(data, policy)
    return tiles_from_image(image, plan)


def mixdata_build_and_load(policy: ImagePolicy, data: bytes):
    processed = process(data, policy)
    return cut_tiles(processed.data, processed.plan)


def floor_path(policy: ImagePolicy, data: bytes):
    """The least work that yields the same resized image: draft decode + one resize."""
    image = open_image(data)
    header = Header(*image.size, image.format, image.mode)
    plan = plan_for(*image.size, policy)
    draft_jpeg(image, header, needed_pixels(plan, image.size))
    return image.resize(plan.resized_size, RESAMPLE[plan.filter])


def hf_processor():
    try:
        from transformers import Idefics3ImageProcessor
    except ImportError:
        return None
    return Idefics3ImageProcessor(size={"longest_edge": 1456}, max_image_size={"longest_edge": 364},
                                  do_image_splitting=True)


def hf_path(processor):
    def run(data: bytes):
        image = Image.open(io.BytesIO(data)).convert("RGB")
        return processor(images=[image], return_tensors="np", return_row_col_info=True)
    return run


def check_same_grid(processor, policy: ImagePolicy, corpus: list[bytes]) -> None:
    for data in corpus:
        ours = mixdata_path(policy, data)
        theirs = hf_path(processor)(data)
        if theirs["pixel_values"].shape[1] != ours.shape[0]:
            raise SystemExit(f"grid mismatch: HF {theirs['pixel_values'].shape} vs {ours.shape}")


def images_per_second(paths: dict, corpus: list[bytes], repeat: int) -> dict[str, float]:
    """Best of `repeat` passes over the corpus per path, one image at a time. The paths take
    turns within each round, so load from other processes on the machine hits them alike."""
    best = {name: float("inf") for name in paths}
    for _ in range(repeat):
        for name, run in paths.items():
            start = time.perf_counter()
            for data in corpus:
                run(data)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: len(corpus) / seconds for name, seconds in best.items()}


def bench(name: str, corpus: list[bytes], policy: ImagePolicy, processor,
          repeat: int) -> list[str]:
    paths = {MIXDATA: partial(mixdata_path, policy),
             "mixdata process + cut_tiles (encode q92, decode)":
                 partial(mixdata_build_and_load, policy),
             FLOOR: partial(floor_path, policy)}
    if processor is not None:
        check_same_grid(processor, policy, corpus[:2])
        paths[HF] = hf_path(processor)
    rates = images_per_second(paths, corpus, repeat)
    ours, floor = rates[MIXDATA], rates[FLOOR]
    rows = [f"| {name} | {path} | {rate:.2f} |" for path, rate in rates.items()]
    speedup = f"{ours / rates[HF]:.1f}x (target >= 4x)" if HF in rates else \
        "n/a (transformers not installed)"
    rows.append(f"| {name} | **mixdata speed / HF speed** | {speedup} |")
    rows.append(f"| {name} | **mixdata time / floor time** | {floor / ours:.2f} (target <= 1.3) |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--pages", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--filter", default="lanczos", choices=sorted(RESAMPLE),
                        help="mixdata's and the floor's resize filter (Idefics3 uses lanczos; "
                             "HF keeps its own)")
    args = parser.parse_args()
    policy = ImagePolicy(preset="idefics3", filter=args.filter)  # 1456 px edge, 364 px tiles
    processor = hf_processor()
    if processor is None:
        print("transformers is not installed here: the HF column is skipped "
              "(see BENCHMARKS.md for a venv that has it)")
    photos = [photo_jpeg(seed) for seed in range(args.photos)]
    pages = page_jpegs(args.pages)
    mb = sum(map(len, photos)) / len(photos) / 1e6
    print(f"python {platform.python_version()}, Pillow {Image.__version__}, "
          f"photos 4000x3000 JPEG q90 ~{mb:.1f} MB, pages 1275x1650 JPEG q90, "
          f"mixdata filter {args.filter}")
    print("| input | path | images/s |\n| --- | --- | --- |")
    for name, corpus in (("12 MP photo", photos), ("PDF page 150 dpi", pages)):
        print("\n".join(bench(name, corpus, policy, processor, args.repeat)))


if __name__ == "__main__":
    main()
