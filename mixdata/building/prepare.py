"""Build phase 1: prepare one source unit into tokenised documents, cached on disk.

`prepare_record` is the pure core (one Sample -> prepared docs, or a Reject). `prepare_unit`
streams a unit through it and writes an Arrow IPC file plus a JSON sidecar (written last, so
a unit is finished exactly when its sidecar exists). The cache key covers everything that
changes a prepared document, and nothing about the mixture, so a re-mix reuses every unit.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from ..errors import RecordRejected, Reject
from ..sample import Sample

FORMAT_VERSION = "prepare-v3"

SCHEMA = pa.schema([
    ("record", pa.int32()),          # index of the record within its unit
    ("sample_id", pa.string()),
    ("chunk", pa.int32()),           # document index within the record (long text is chunked)
    ("ids", pa.binary()),            # int32 little-endian token ids
    ("loss", pa.binary()),           # uint8 loss mask
    ("length", pa.int32()),
    ("supervised", pa.int32()),
    ("n_images", pa.int32()),
    ("n_views", pa.int32()),
    ("images", pa.list_(pa.binary())),  # processed image bytes, in token order
    ("meta", pa.string()),           # JSON: per image {plan, span, ext}
    ("dedup", pa.binary(16)),        # sha1 of text + image bytes (first 16 bytes); zeros: off
])


@dataclass(frozen=True)
class UnitTask:
    """Everything a worker process needs to prepare one unit (picklable, no open handles)."""

    recipe_file: str | None
    recipe_raw: dict
    stage: str
    source: str
    unit: str
    path: str          # cache file path without extension


def unit_key(recipe, stage: str, source: str, unit: str) -> str:
    """Cache key: source spec, unit, image policy, tokenizer and lengths; not the mixture."""
    spec = recipe.sources[source]
    stage_spec = recipe.stages[stage]
    payload = {
        "v": FORMAT_VERSION, "format": spec.format, "unit": unit,
        "options": repr(spec.options), "filters": repr(spec.filters),
        "image": repr(stage_spec.image), "tokenizer": recipe.tokenizer,
        "seq_len": recipe.stage_seq_len(stage), "tpt": recipe.image_tokens_per_tile,
        "loss": stage_spec.loss, "overflow": stage_spec.pack.on_overflow,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def prepare_record(sample: Sample, policy, tokenizer, *, tokens_per_tile: int, seq_len: int,
                   loss: str, on_overflow: str) -> list[dict]:
    """One Sample -> rows of the unit table (one per rendered document).

    Raises RecordRejected for images that fail the image step or documents that cannot fit.
    """
    from ..image import process
    from ..tokens import render

    images = sample.images
    processed = [process(img.data, policy, images_in_sample=len(images)) for img in images]
    docs = render(sample, [p.plan for p in processed], tokenizer, tokens_per_tile=tokens_per_tile,
                  seq_len=seq_len, loss=loss, on_overflow=on_overflow)
    rows = []
    for chunk, doc in enumerate(docs):
        used = [processed[slot.index] for slot in doc.images]
        meta = [{"plan": p.plan.to_json(), "span": [s.start, s.start + s.length], "ext": p.ext}
                for p, s in zip(used, doc.images)]
        rows.append({
            "sample_id": sample.id, "chunk": chunk,
            "ids": doc.ids.astype("<i4").tobytes(), "loss": doc.loss.astype("u1").tobytes(),
            "length": len(doc.ids), "supervised": int(doc.loss.sum()),
            "n_images": len(used), "n_views": int(sum(s.views for s in doc.images)),
            "images": [p.data for p in used], "meta": json.dumps(meta, sort_keys=True),
        })
    return rows


class _Context:
    """Per-process cache of the parsed recipe, tokenizer and adapters."""

    def __init__(self):
        self.key = None

    def get(self, task: UnitTask):
        raw = json.dumps(task.recipe_raw, sort_keys=True, default=str)
        key = (task.recipe_file, raw, task.stage)
        if key != self.key:
            from ..recipe import parse_recipe
            from ..sources import open_source
            from ..tokens import load_tokenizer

            recipe = parse_recipe(task.recipe_raw, file=task.recipe_file)
            self.recipe, self.tokenizer = recipe, load_tokenizer(recipe.tokenizer)
            self.sources = {n: open_source(s) for n, s in recipe.sources.items()}
            self.key = key
        return self.recipe, self.tokenizer, self.sources[task.source]


_CONTEXT = _Context()


def prepare_unit(task: UnitTask) -> dict:
    """Prepare one unit into `task.path + .arrow`/`.json`; returns the sidecar stats."""
    from ..sources.filtering import dedup_key, read_clean

    done = Path(task.path + ".json")
    if done.exists():
        return json.loads(done.read_text())
    recipe, tokenizer, source = _CONTEXT.get(task)
    stage = recipe.stages[task.stage]
    dedup = recipe.sources[task.source].filters.dedup
    rows, rejects, reasons = [], [], Counter()
    read = 0
    for record, item in enumerate(read_clean(source, task.unit)):
        read += 1
        if isinstance(item, Reject):
            rejects.append(item.to_json())
            reasons[item.reason] += 1
            continue
        try:
            new = prepare_record(item, stage.image, tokenizer,
                                 tokens_per_tile=recipe.image_tokens_per_tile,
                                 seq_len=recipe.stage_seq_len(task.stage), loss=stage.loss,
                                 on_overflow=stage.pack.on_overflow)
        except RecordRejected as err:
            locator = item.meta.get("locator", f"{task.unit}#{item.id}")
            rejects.append(Reject(source=task.source, locator=locator, reason=err.reason,
                                  message=err.message).to_json())
            reasons[err.reason] += 1
            continue
        key = bytes.fromhex(dedup_key(item))[:16] if dedup else bytes(16)
        rows.extend({**row, "record": record, "dedup": key} for row in new)
    _write_table(Path(task.path + ".arrow"), rows)
    stats = {"unit": task.unit, "read": read, "records_ok": read - len(rejects),
             "rejected": dict(sorted(reasons.items())), "rejects": rejects,
             "retries": getattr(source, "retries", 0), "docs": len(rows)}
    _atomic_write(done, json.dumps(stats, sort_keys=True).encode())
    return stats


def _write_table(path: Path, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, SCHEMA) as writer:
        writer.write_table(table, max_chunksize=256)
    os.replace(tmp, path)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def task_for(recipe, stage: str, source: str, unit: str, cache_dir: Path) -> UnitTask:
    key = unit_key(recipe, stage, source, unit)
    folder = cache_dir / source
    folder.mkdir(parents=True, exist_ok=True)
    return UnitTask(recipe_file=recipe.file, recipe_raw=recipe.raw, stage=stage, source=source,
                    unit=unit, path=str(folder / key))


def as_dict(task: UnitTask) -> dict:
    return asdict(task)
