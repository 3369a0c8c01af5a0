"""Pre-training kinds of the demo corpus: OBELICS documents, img2dataset pairs, FineWeb and
Dolma text.

Each writer takes the corpus root, a record count and its own random generator, writes its
files in the real public layout (sources.md) and returns a `KindReport`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import content
from .files import (
    KindReport,
    TarBuilder,
    broken_image,
    broken_slots,
    jpeg_bytes,
    json_bytes,
    jsonl_bytes,
    png_bytes,
    truncated,
    write_bytes,
    write_gzip,
    write_parquet,
)

DEMO_HOST = "https://demo.mixdata.invalid"  # .invalid: these URLs can never resolve

OBELICS_SCHEMA = pa.schema([("images", pa.list_(pa.string())), ("texts", pa.list_(pa.string())),
                            ("metadata", pa.string()), ("general_metadata", pa.string())])
DOCS_PER_PARQUET = 250


def write_interleaved(root: Path, count: int, rng: np.random.Generator) -> KindReport:
    """`interleaved/obelics-NNNNN.parquet`; images are PNG files in `interleaved/images/`,
    referenced by paths relative to the parquet's folder."""
    report = KindReport()
    defects = broken_slots(rng, count, ["mismatched_lists", "image_broken", "image_missing"])
    folder = root / "interleaved"
    image_counter = 0
    for first in range(0, count, DOCS_PER_PARQUET):
        rows: dict[str, list] = {name: [] for name in OBELICS_SCHEMA.names}
        for index in range(first, min(first + DOCS_PER_PARQUET, count)):
            defect = defects.get(index)
            doc, image_counter = _obelics_doc(folder, index, image_counter, rng, defect)
            for name, value in doc.items():
                rows[name].append(value)
            report.add(defect)
        write_parquet(folder / f"obelics-{first // DOCS_PER_PARQUET:05d}.parquet", rows,
                      OBELICS_SCHEMA, row_group_size=64)
    report.extra["images"] = image_counter
    return report


def _obelics_doc(folder: Path, index: int, image_counter: int, rng: np.random.Generator,
                 defect: str | None) -> tuple[dict, int]:
    # One (image, text, metadata) triple per position; exactly one of image/text is set.
    positions: list[tuple] = [(None, content.paragraph(rng, 2), None)]
    for slot in range(int(rng.integers(1, 4))):
        scene = content.random_scene(rng, int(rng.integers(1, 3)))
        name = f"images/{image_counter:06d}.png"
        image_counter += 1
        data = png_bytes(content.draw_scene(scene, rng))
        if defect == "image_broken" and slot == 0:
            data = broken_image(rng)
        if not (defect == "image_missing" and slot == 0):
            write_bytes(folder / name, data)
        meta = {"src": f"{DEMO_HOST}/{name}", "alt_text": content.describe(scene),
                "original_width": content.SCENE_SIDE, "original_height": content.SCENE_SIDE,
                "format": "png"}
        blank = "" if rng.random() < 0.2 else None  # OBELICS sometimes has "" where null is meant
        positions.append((name, blank, meta))
        positions.append((None, f"the picture shows {content.describe(scene)} "
                          + content.paragraph(rng, int(rng.integers(1, 3))), None))
    images, texts, metadata = (list(column) for column in zip(*positions))
    if defect == "mismatched_lists":
        texts.pop()
    general = {"url": f"{DEMO_HOST}/doc/{index}", "warc_filename": "crawl-data/DEMO/demo.warc.gz",
               "warc_record_offset": index * 4096, "warc_record_length": 4096}
    row = {"images": images, "texts": texts, "metadata": json.dumps(metadata),
           "general_metadata": json.dumps(general)}
    return row, image_counter


CAPTION_SHARDS = 2          # at least; more at large scales, as real corpora grow
CAPTION_PER_SHARD = 600     # pairs per shard at most (one shard bounds the build's parallelism)
ROWS_FIELDS = ("key", "url", "caption", "status", "error_message", "width", "height",
               "original_width", "original_height", "exif", "sha256")
IMG2DATASET_SCHEMA = pa.schema([(f, pa.int64() if "width" in f or "height" in f else pa.string())
                                for f in ROWS_FIELDS])
FAILED = "failed_to_download"
_HTTP_404 = "HTTP Error 404: Not Found"


def write_caption(root: Path, count: int, rng: np.random.Generator) -> KindReport:
    """`caption/NNNNN.tar` as img2dataset writes them, each with its `NNNNN.parquet` of every
    input row (failed downloads included, absent from the tar) and `NNNNN_stats.json`."""
    report = KindReport()
    defects = broken_slots(rng, count, ["image_truncated", "image_broken", "missing_caption"])
    shards = max(CAPTION_SHARDS, -(-count // CAPTION_PER_SHARD))
    per_shard = -(-count // shards)
    failed_rows = 0
    for shard in range(shards):
        indices = range(shard * per_shard, min((shard + 1) * per_shard, count))
        failed_rows += _caption_shard(root / "caption", shard, indices, defects, rng, report)
    report.extra["failed_rows"] = failed_rows
    return report


def _caption_shard(folder: Path, shard: int, indices: range, defects: dict[int, str],
                   rng: np.random.Generator, report: KindReport) -> int:
    rows: dict[str, list] = {f: [] for f in ROWS_FIELDS}
    row_number, failed = 0, 0
    with TarBuilder(folder / f"{shard:05d}.tar") as tar:
        for index in indices:
            # img2dataset numbers every input row; failed downloads leave gaps in the tar keys.
            while rng.random() < 0.03:
                _append_row(rows, _failed_row(shard, row_number, rng))
                row_number, failed = row_number + 1, failed + 1
            row = _caption_pair(tar, shard, row_number, defects.get(index), rng)
            _append_row(rows, row)
            row_number += 1
            report.add(defects.get(index))
    write_parquet(folder / f"{shard:05d}.parquet", rows, IMG2DATASET_SCHEMA)
    stats = {"count": row_number, "successes": row_number - failed, FAILED: failed,
             "failed_to_resize": 0, "duration": 0.0, "start_time": 0.0, "end_time": 0.0,
             "status_dict": {"success": row_number - failed, _HTTP_404: failed}}
    write_bytes(folder / f"{shard:05d}_stats.json", json_bytes(stats))
    return failed


def _append_row(rows: dict[str, list], row: dict) -> None:
    for name in ROWS_FIELDS:
        rows[name].append(row.get(name))


def _failed_row(shard: int, row_number: int, rng: np.random.Generator) -> dict:
    key = f"{shard:05d}{row_number:04d}"
    return {"key": key, "url": f"{DEMO_HOST}/laion/{key}.jpg",
            "caption": content.describe(content.random_scene(rng, 1)), "status": FAILED,
            "error_message": _HTTP_404}


def _caption_pair(tar: TarBuilder, shard: int, row_number: int, defect: str | None,
                  rng: np.random.Generator) -> dict:
    key = f"{shard:05d}{row_number:04d}"
    scene = content.random_scene(rng, int(rng.integers(1, 3)))
    image = jpeg_bytes(content.draw_scene(scene, rng))
    caption = content.describe(scene)
    if defect == "image_truncated":
        image = truncated(image)
    elif defect == "image_broken":
        image = broken_image(rng)
    side = content.SCENE_SIDE
    meta = {"key": key, "url": f"{DEMO_HOST}/laion/{key}.jpg", "caption": caption,
            "status": "success", "error_message": None, "width": side, "height": side,
            "original_width": side, "original_height": side, "exif": "{}",
            "sha256": hashlib.sha256(image).hexdigest()}
    tar.add(f"{key}.jpg", image)
    if defect == "missing_caption":
        del meta["caption"]  # and no .txt member either
    else:
        tar.add(f"{key}.txt", caption.encode())
    tar.add(f"{key}.json", json_bytes(meta))
    return meta


FINEWEB_SCHEMA = pa.schema([("text", pa.string()), ("id", pa.string()), ("dump", pa.string()),
                            ("url", pa.string()), ("date", pa.string()),
                            ("language", pa.string()), ("language_score", pa.float64()),
                            ("token_count", pa.int64())])


def write_fineweb(root: Path, count: int, rng: np.random.Generator) -> KindReport:
    """`text/fineweb-00000.parquet` with FineWeb's columns."""
    report = KindReport()
    defects = broken_slots(rng, count, ["missing_field"])
    rows: dict[str, list] = {name: [] for name in FINEWEB_SCHEMA.names}
    for index in range(count):
        text = content.paragraph(rng, int(rng.integers(3, 9)))
        defect = defects.get(index)
        text = None if defect == "missing_field" else text
        row = {"text": text, "id": f"<urn:uuid:{_uuid(rng)}>", "dump": "CC-MAIN-2024-10",
               "url": f"{DEMO_HOST}/web/{index}", "date": "2024-02-21T00:00:00Z",
               "language": "en", "language_score": round(float(rng.uniform(0.65, 1.0)), 4),
               "token_count": len(text.split()) if text else 0}
        for name in FINEWEB_SCHEMA.names:
            rows[name].append(row[name])
        report.add(defect)
    write_parquet(root / "text" / "fineweb-00000.parquet", rows, FINEWEB_SCHEMA)
    return report


def write_dolma(root: Path, count: int, rng: np.random.Generator) -> KindReport:
    """`text/dolma-00000.jsonl.gz` with Dolma's fields, one line of invalid JSON included."""
    report = KindReport()
    defects = broken_slots(rng, count, ["bad_json", "missing_field"])
    lines: list = []
    for index in range(count):
        text = content.paragraph(rng, int(rng.integers(3, 9)))
        row = {"id": f"demo-{index:06d}", "text": text, "source": "demo",
               "added": "2024-01-01T00:00:00.000Z", "created": "2023-06-01T00:00:00.000Z",
               "metadata": {"length": len(text)}}
        defect = defects.get(index)
        if defect == "missing_field":
            del row["text"]
        lines.append(json_bytes(row)[:-7] if defect == "bad_json" else row)
        report.add(defect)
    write_gzip(root / "text" / "dolma-00000.jsonl.gz", jsonl_bytes(lines))
    return report


def _uuid(rng: np.random.Generator) -> str:
    hexed = rng.bytes(16).hex()
    return f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"
