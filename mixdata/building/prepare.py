"""Build phase 1: prepare one source unit into tokenised documents, cached on disk.

`prepare_record` is the pure core (one Sample -> prepared docs, or a Reject). `prepare_unit`
streams a unit through it and writes an Arrow IPC file, the unit's rejects as JSON lines
(streamed, so memory stays bounded) and its `UnitStats` sidecar (written last, so a unit is
finished exactly when its sidecar exists). The cache key covers everything that
changes a prepared document, and nothing about the mixture, so a re-mix reuses every unit.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from ..errors import RecordRejected, Reject
from ..image import process
from ..recipe import Recipe
from ..sample import Sample
from ..sources import open_source
from ..sources.filtering import dedup_key, read_clean
from ..storage import atomic_file, write_json_atomic
from ..tokens import render
from ..tokens.dialect import recipe_tokenizer

FORMAT_VERSION = "prepare-v4"

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
    """Everything a worker process needs to prepare one unit (picklable, no open handles).
    The recipe travels parsed (a few KB): a worker never parses YAML nor resolves `demo://`
    itself, so it reads exactly the paths the build resolved, with none of its set-up."""

    recipe: Recipe
    stage: str
    source: str
    unit: str
    path: str          # cache file path without extension


def unit_key(recipe, stage: str, source: str, unit: str) -> str:
    """Cache key: source spec, unit, image policy, tokenizer (a model folder's content too)
    and lengths; not the mixture."""
    spec = recipe.sources[source]
    stage_spec = recipe.stages[stage]
    payload = {
        "v": FORMAT_VERSION, "format": spec.format, "unit": unit,
        "options": repr(spec.options), "filters": repr(spec.filters), "prompt": spec.prompt,
        "image": repr(stage_spec.image), "tokenizer": recipe.tokenizer,
        "seq_len": recipe.stage_seq_len(stage), "tpt": recipe.image_tokens_per_tile,
        "loss": stage_spec.loss, "overflow": stage_spec.pack.on_overflow,
    }
    if recipe.family is not None:  # a model folder: its content, not only its name
        tok = recipe_tokenizer(recipe)
        payload["dialect"] = [recipe.family, recipe.add_tokens, tok.sha256, tok.template_sha256]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def prepare_record(sample: Sample, policy, tokenizer, *, tokens_per_tile: int, seq_len: int,
                   loss: str, on_overflow: str) -> list[dict]:
    """One Sample -> rows of the unit table (one per rendered document).

    Raises RecordRejected for images that fail the image step or documents that cannot fit.
    """
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


@dataclass(frozen=True, kw_only=True)
class UnitStats:
    """What preparing one unit gave: the typed sidecar `<path>.json`, written last.

    `read` counts every item the unit's reader produced (a damaged unit's reject included),
    `rejected` those that were rejects, by reason (their lines are in `<path>.rejects.jsonl`);
    `docs` / `tokens` are the prepared documents and their total length; `retries` the
    transient-read retries this unit needed (run-dependent).
    """

    unit: str
    path: str
    read: int
    rejected: dict[str, int]
    docs: int
    tokens: int
    retries: int = 0

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    @property
    def rejects_path(self) -> str:
        return self.path + ".rejects.jsonl"

    def cost(self, weight_by: str) -> float:
        """The unit's cost in a stage's weight_by unit (tokens or samples)."""
        return float(self.docs if weight_by == "samples" else self.tokens)

    def mean_length(self) -> float:
        return self.tokens / self.docs if self.docs else 1.0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> UnitStats:
        return cls(**data)


class _Context:
    """Per-process cache of the recipe's tokenizer and of the adapters opened so far (each
    source on its first unit: a worker never imports the readers of sources it never sees)."""

    def __init__(self):
        self.recipe, self.sources = None, {}

    def get(self, task: UnitTask):
        if task.recipe != self.recipe:
            self.recipe, self.sources = task.recipe, {}
            self.tokenizer = recipe_tokenizer(task.recipe)
        if task.source not in self.sources:
            self.sources[task.source] = open_source(self.recipe.sources[task.source])
        return self.recipe, self.tokenizer, self.sources[task.source]


_CONTEXT = _Context()


def cached_stats(task: UnitTask) -> UnitStats | None:
    """The unit's UnitStats when it is already prepared, else None."""
    try:
        return UnitStats.from_json(json.loads(Path(task.path + ".json").read_text()))
    except FileNotFoundError:
        return None


def prepare_unit(task: UnitTask) -> UnitStats:
    """Prepare one unit into `task.path` + `.arrow` (documents), `.rejects.jsonl` and `.json`
    (the UnitStats, written last: a unit is finished exactly when it exists)."""
    done = Path(task.path + ".json")
    cached = cached_stats(task)
    if cached is not None:
        return cached
    recipe, tokenizer, source = _CONTEXT.get(task)
    stage = recipe.stages[task.stage]
    dedup = recipe.sources[task.source].filters.dedup
    retries_before = source.retries
    rows, reasons, read = [], Counter(), 0
    with atomic_file(task.path + ".rejects.jsonl", "w") as rejects:
        for record, item in enumerate(read_clean(source, task.unit)):
            read += 1
            if not isinstance(item, Reject):
                try:
                    new = prepare_record(item, stage.image, tokenizer,
                                         tokens_per_tile=recipe.image_tokens_per_tile,
                                         seq_len=recipe.stage_seq_len(task.stage),
                                         loss=stage.loss, on_overflow=stage.pack.on_overflow)
                except RecordRejected as err:
                    item = Reject(source=task.source,
                                  locator=item.meta.get("locator", f"{task.unit}#{item.id}"),
                                  reason=err.reason, message=err.message)
                else:
                    key = bytes.fromhex(dedup_key(item))[:16] if dedup else bytes(16)
                    rows.extend({**row, "record": record, "dedup": key} for row in new)
                    continue
            rejects.write(json.dumps(item.to_json(), sort_keys=True) + "\n")
            reasons[item.reason] += 1
    _write_table(task.path + ".arrow", rows)
    stats = UnitStats(unit=task.unit, path=task.path, read=read,
                      rejected=dict(sorted(reasons.items())), docs=len(rows),
                      tokens=sum(row["length"] for row in rows),
                      retries=source.retries - retries_before)
    write_json_atomic(done, stats.to_json(), indent=None)
    return stats


def _write_table(path: str, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    with atomic_file(path, "wb") as fh, ipc.new_file(fh, SCHEMA) as writer:
        writer.write_table(table, max_chunksize=256)


def task_for(recipe, stage: str, source: str, unit: str, cache_dir: Path) -> UnitTask:
    key = unit_key(recipe, stage, source, unit)
    folder = cache_dir / source
    folder.mkdir(parents=True, exist_ok=True)
    return UnitTask(recipe=recipe, stage=stage, source=source, unit=unit, path=str(folder / key))
