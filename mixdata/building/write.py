"""Build phase 3: assemble planned sequences from prepared units and write shards.

A shard is final once renamed into place; a hidden sidecar `.NAME.done.json` (written after
the rename) records the plan hash it was built from, so a re-run skips it only when the
plan for it is unchanged. A shard without a sidecar is rewritten: the bytes are identical.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from ..shards import PackedSequence, write_shard
from ..storage import write_json_atomic
from .plan import SequenceRefs


@dataclass(frozen=True)
class ShardTask:
    """One shard to write (it travels to a worker): its sequences as the plan's compact
    references, and the cache paths of just the units they use."""

    out_dir: str
    name: str
    plan_hash: str
    refs: SequenceRefs            # the shard's sequences, refs.first the first one's index
    sources: tuple[str, ...]      # source names, by refs.source
    units: dict[int, str]         # (source index << 32 | unit index) -> unit cache path

    @classmethod
    def of(cls, out_dir: str, name: str, plan_hash: str, refs: SequenceRefs,
           sources: tuple[str, ...], paths: dict[str, list[str]]) -> ShardTask:
        used = np.unique(unit_ids(refs)).tolist()
        units = {u: paths[sources[u >> 32]][u & 0xFFFFFFFF] for u in used}
        return cls(out_dir, name, plan_hash, refs, sources, units)

    def sequences(self) -> Iterator[list[tuple[str, str, int]]]:
        """Per sequence [(source name, unit cache path, row)], what `assemble` takes."""
        refs = self.refs
        ids, rows = unit_ids(refs).tolist(), refs.row.tolist()
        bounds = refs.offsets.tolist()
        for a, b in itertools.pairwise(bounds):
            yield [(self.sources[ids[i] >> 32], self.units[ids[i]], rows[i]) for i in range(a, b)]


def unit_ids(refs: SequenceRefs) -> np.ndarray:
    """Each referenced document's unit as one int64: source index << 32 | unit index."""
    return (refs.source.astype(np.int64) << 32) | refs.unit.astype(np.int64)


def sidecar(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / f".{name}.done.json"


def final_info(task: ShardTask) -> dict | None:
    """The shard's info when it is already final for this plan, else None."""
    done = finished(task)
    return None if done is None else done["info"]


def finished(task: ShardTask) -> dict | None:
    done = sidecar(task.out_dir, task.name)
    if not done.exists() or not (Path(task.out_dir) / task.name).exists():
        return None
    info = json.loads(done.read_text())
    return info if info.get("plan_hash") == task.plan_hash else None


class _Tables:
    """Memory-mapped prepared units, opened once per worker process."""

    def __init__(self):
        self.tables = {}

    def row(self, path: str, row: int) -> dict:
        if path not in self.tables:
            if len(self.tables) > 64:
                self.tables.clear()
            self.tables[path] = ipc.open_file(pa.memory_map(path + ".arrow")).read_all()
        table = self.tables[path]
        return {name: table[name][row].as_py() for name in
                ("sample_id", "ids", "loss", "images", "meta")}


_TABLES = _Tables()


def assemble(key: str, docs: list[tuple[str, str, int]]) -> PackedSequence:
    """Concatenate a sequence's documents: tokens, loss, offsets, images in token order."""
    tokens, loss, offsets, images, doc_meta, image_meta = [], [], [0], [], [], []
    for doc_index, (source, path, row) in enumerate(docs):
        r = _TABLES.row(path, row)
        base = offsets[-1]
        tokens.append(np.frombuffer(r["ids"], "<i4"))
        loss.append(np.frombuffer(r["loss"], "u1"))
        offsets.append(base + len(tokens[-1]))
        doc_meta.append({"source": source, "id": r["sample_id"]})
        for data, info in zip(r["images"], json.loads(r["meta"])):
            images.append((data, info["ext"]))
            start, end = info["span"]
            image_meta.append({"plan": info["plan"], "span": [base + start, base + end],
                               "doc": doc_index})
    return PackedSequence(key=key, tokens=np.concatenate(tokens).astype(np.int32),
                          loss=np.concatenate(loss).astype(np.uint8),
                          docs=np.asarray(offsets, np.int32), images=images,
                          meta={"docs": doc_meta, "images": image_meta})


def write_shard_task(task: ShardTask) -> dict:
    """Write one shard (skipping it when already final for this plan); returns its info."""
    done = finished(task)
    if done is not None:
        return done["info"]
    sequences = (assemble(f"{task.refs.first + i:09d}", docs)
                 for i, docs in enumerate(task.sequences()))
    info = asdict(write_shard(Path(task.out_dir) / task.name, sequences))
    write_json_atomic(sidecar(task.out_dir, task.name), {"plan_hash": task.plan_hash,
                                                         "info": info}, indent=None)
    return info
