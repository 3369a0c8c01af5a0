#!/usr/bin/env python3
"""Loader throughput: mixdata.load against plain webdataset over the same tars, in one run.

    .venv/bin/python tools/bench_load.py [--stage noisy|photos | --dir SHARD_FOLDER]
                                         [--workers 0 2] [--batch 8] [--repeats 3]

Every side reads each packed sequence of the stage once through a shuffle buffer of the same
size. `webdataset` (the issue's baseline) loads the `.npy` arrays and PIL-decodes every image
to a uint8 array; `webdataset+cut` instead cuts every image's views with `cut_tiles`, the
image work mixdata.load does; `mixdata` also validates every member and builds the full batch
(labels, positions, cu_seqlens, tile spans). Each configuration runs in its own process with
one torch thread, so its time is per core and its peak RSS (main process, and the largest
worker) is its own. Without --dir it writes a synthetic stage (`--stage`, real JPEGs) with
`mixdata.shards.write_shard`; pass a `mixdata build` output folder to use that.
"""
from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

BUFFER = 256
KINDS = ("webdataset", "webdataset+cut", "mixdata")


STAGES = {  # name: (policy, source image size, noise sigma, sequences per shard)
    "noisy": (dict(preset="idefics3", longest_edge=512, tile=128), (640, 480), 24, 64),
    "photos": (dict(preset="idefics3", longest_edge=1456, tile=364), (2000, 1500), 6, 32),
}


def synthetic_stage(folder: Path, name: str = "noisy", shards: int = 4, seed: int = 0) -> Path:
    """A stage of `shards` shards of packed 2048-token sequences with 2-3 tiled images each:
    `noisy` 512-px images in 128-px tiles (noise-heavy, slow to decode), `photos` 1456-px
    photo-like images in 364-px tiles (idefics3's defaults)."""
    from PIL import Image

    from mixdata.image import ImagePolicy, layout, process, special_tokens
    from mixdata.shards import PackedSequence, write_manifest, write_shard

    params, (width, height), sigma, per_shard = STAGES[name]
    policy = ImagePolicy(**params)
    specials = {n: 256 + i for i, n in enumerate(["<pad>", "<s>", "</s>", *special_tokens()])}
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    smooth = np.stack([xs / width * 255, ys / height * 200, (xs + ys) / (width + height) * 255],
                      -1)
    infos = []
    for number in range(shards):
        sequences = []
        for index in range(per_shard):
            tokens, images, image_meta = [], [], []
            for _ in range(int(rng.integers(2, 4))):
                noise = rng.normal(0, sigma, size=smooth.shape)
                out = io.BytesIO()
                Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8)).save(
                    out, format="JPEG", quality=90)
                done = process(out.getvalue(), policy)
                span = [10 if s == "\n" else specials[s] for s in layout(done.plan, 16)]
                image_meta.append({"plan": done.plan.to_json(), "doc": 0,
                                   "span": [len(tokens), len(tokens) + len(span)]})
                tokens += span + rng.integers(32, 127, size=int(rng.integers(50, 200))).tolist()
                images.append((done.data, done.ext))
            tokens += rng.integers(32, 127, size=2048 - len(tokens)).tolist()
            sequences.append(PackedSequence(
                key=f"b{number:03d}{index:05d}", tokens=np.asarray(tokens, np.int32),
                loss=np.ones(len(tokens), np.uint8), docs=np.asarray([0, len(tokens)], np.int32),
                images=images, meta={"docs": [{"source": "bench", "id": str(index)}],
                                     "images": image_meta}))
        infos.append(asdict(write_shard(folder / f"shard-{number:06d}.tar", sequences)))
    write_manifest(folder, {
        "seq_len": 2048, "image_tokens_per_tile": 16, "shards": infos,
        "tokenizer": {"identity": "bench", "sha256": "0", "vocab_size": 256 + len(specials),
                      "special_ids": specials},
        "image_policy": params})
    return folder


def run_mixdata(folder: str, workers: int, batch: int) -> dict:
    from mixdata import load

    ds = load(folder, batch_size=batch, shuffle_buffer=BUFFER, epochs=1, streams=max(1, workers))
    sequences = tokens = 0
    for out in ds.loader(num_workers=workers):
        sequences += out["input_ids"].shape[0]
        tokens += out["num_tokens"]
    return {"sequences": sequences, "tokens": tokens}


def _decode_wds(sample: dict) -> dict:
    """The issue's baseline: the arrays, and every image PIL-decoded to a uint8 array."""
    from PIL import Image

    arrays = {k: np.load(io.BytesIO(sample[k]), allow_pickle=False)
              for k in ("tokens.npy", "loss.npy", "docs.npy")}
    images = [np.asarray(Image.open(io.BytesIO(v)).convert("RGB"))
              for k, v in sorted(sample.items()) if k.endswith((".jpg", ".png", ".webp"))]
    return {"tokens": arrays["tokens.npy"], "images": images}


def _cut_wds(sample: dict) -> dict:
    """The same image work as mixdata.load: every image's views cut by `cut_tiles`."""
    from mixdata.image import ImagePlan, cut_tiles

    meta = json.loads(sample["json"])
    tokens = np.load(io.BytesIO(sample["tokens.npy"]), allow_pickle=False)
    images = [v for k, v in sorted(sample.items()) if k.endswith((".jpg", ".png", ".webp"))]
    views = [cut_tiles(data, ImagePlan.from_json(m["plan"]))
             for data, m in zip(images, meta["images"])]
    return {"tokens": tokens, "images": views}


def run_webdataset(folder: str, workers: int, batch: int, decode=_decode_wds) -> dict:
    import webdataset as wds
    from torch.utils.data import DataLoader

    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    urls = [str(Path(folder) / s["name"]) for s in manifest["shards"]]
    pipeline = (wds.WebDataset(urls, shardshuffle=False, empty_check=False)
                .shuffle(BUFFER).map(decode).batched(batch, collation_fn=list))
    sequences = tokens = 0
    for out in DataLoader(pipeline, batch_size=None, num_workers=workers):
        sequences += len(out)
        tokens += sum(len(s["tokens"]) for s in out)
    return {"sequences": sequences, "tokens": tokens}


def measure(kind: str, folder: str, workers: int, batch: int) -> dict:
    """One configuration, in this process: throughput and peak RSS."""
    run = {"mixdata": run_mixdata, "webdataset": run_webdataset,
           "webdataset+cut": lambda *a: run_webdataset(*a, decode=_cut_wds)}[kind]
    import torch
    import webdataset  # noqa: F401

    import mixdata.loading  # noqa: F401 - imports (torch, PIL, webdataset) are not timed
    torch.set_num_threads(1)  # per worker means per core: no intra-op threads in process 0
    start = time.perf_counter()
    counts = run(folder, workers, batch)
    seconds = time.perf_counter() - start
    processes = max(1, workers)
    return {"kind": kind, "workers": workers, "seconds": round(seconds, 2), **counts,
            "seq_per_s_per_worker": round(counts["sequences"] / seconds / processes, 1),
            "tokens_per_s_per_worker": round(counts["tokens"] / seconds / processes),
            "rss_main_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_worker_mib": round(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024) if workers else 0}


def _child(kind: str, folder: str, workers: int, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--one", kind, "--dir", folder, "--workers", str(workers),
           "--batch", str(batch)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="a built shard folder (default: a synthetic stage)")
    parser.add_argument("--stage", choices=sorted(STAGES), default="noisy",
                        help="which synthetic stage to write when --dir is not given")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3,
                        help="passes; each configuration reports its best")
    parser.add_argument("--one", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.dir, args.workers[0], args.batch)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or str(synthetic_stage(Path(tmp), args.stage))
        # the kinds take turns within each pass, so load from other jobs hits them alike
        runs = [_child(kind, folder, workers, args.batch) for _ in range(args.repeats)
                for workers in args.workers for kind in KINDS]
    rows = [max((r for r in runs if (r["kind"], r["workers"]) == (kind, workers)),
                key=lambda r: r["seq_per_s_per_worker"])
            for workers in args.workers for kind in KINDS]
    for row in rows:
        print(json.dumps(row))
    for workers in args.workers:
        speed = {r["kind"]: r["seq_per_s_per_worker"] for r in rows if r["workers"] == workers}
        print(f"workers={workers}: mixdata / webdataset (decode only) = "
              f"{speed['mixdata'] / speed['webdataset']:.2f}x, mixdata / webdataset+cut_tiles "
              f"(same image work) = {speed['mixdata'] / speed['webdataset+cut']:.2f}x")


if __name__ == "__main__":
    main()
