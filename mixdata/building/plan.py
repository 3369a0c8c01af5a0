"""Build phase 2: plan sequences and shards from prepared lengths alone.

The plan depends only on the recipe, the seed and the prepared documents of each source's
minimal unit prefix; never on how many workers prepared them.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow.ipc as ipc

from ..mix import schedule
from ..pack import PackItem, pack
from .accounts import DocFates

PACKING_SLACK = 0.99  # expected packing efficiency when a budget is given in sequences
PREPARE_MARGIN = 1.02  # prepare a little beyond a source's share so packing never runs short


@dataclass
class SourceDocs:
    """The prepared documents of one source's unit prefix, as flat arrays."""

    units: list[str]
    paths: list[str]
    unit: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    record: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    length: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    images: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    views: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    dedup: list[str] = field(default_factory=list)
    keep: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def __len__(self) -> int:
        return int(self.keep.sum())


def load_docs(units: list[str], paths: list[str]) -> SourceDocs:
    cols = {k: [] for k in ("unit", "row", "record", "length", "images", "views")}
    dedup: list[str] = []
    for index, path in enumerate(paths):
        with ipc.open_file(path + ".arrow") as reader:
            table = reader.read_all().select(["record", "length", "n_images", "n_views", "dedup"])
        n = table.num_rows
        cols["unit"].append(np.full(n, index, np.int32))
        cols["row"].append(np.arange(n, dtype=np.int32))
        cols["record"].append(table["record"].to_numpy().astype(np.int32))
        cols["length"].append(table["length"].to_numpy().astype(np.int32))
        cols["images"].append(table["n_images"].to_numpy().astype(np.int32))
        cols["views"].append(table["n_views"].to_numpy().astype(np.int32))
        dedup.extend(table["dedup"].to_pylist())
    arrays = {k: np.concatenate(v) if v else np.zeros(0, np.int32) for k, v in cols.items()}
    return SourceDocs(units=units, paths=paths, dedup=dedup, keep=np.ones(len(dedup), bool),
                      **arrays)


def apply_dedup(docs: dict[str, SourceDocs], source_order: list[str]) -> None:
    """Drop exact duplicates across the stage (`keep` False), the first occurrence winning."""
    seen: set[str] = set()
    for name in source_order:
        d = docs[name]
        for i, key in enumerate(d.dedup):
            if not key:
                continue
            if key in seen:
                d.keep[i] = False
            else:
                seen.add(key)


def stage_budget(stage, seq_len: int, mean_len: dict[str, float], shares: dict[str, float]):
    """The stage budget in its weight_by unit, or None for 'all data, no repeats'."""
    if stage.budget is None:
        return None
    unit, amount = stage.budget.unit, float(stage.budget.amount)
    tokens_per_doc = sum(shares[s] * mean_len.get(s, 1.0) for s in shares) or 1.0
    if unit == "sequences":
        unit, amount = "tokens", amount * seq_len / PACKING_SLACK
    if unit == "samples" and stage.weight_by == "tokens":
        return amount * tokens_per_doc
    if unit == "tokens" and stage.weight_by == "samples":
        return amount / tokens_per_doc
    return amount


@dataclass
class StagePlan:
    sequences: list[list[tuple[str, int, int]]]  # per sequence: (source, unit index, row)
    epochs: dict[str, float]
    seq_sources_tokens: list[dict[str, int]]
    images: Counter
    fates: dict[str, DocFates]   # per source: what became of each prepared document


def plan_stage(stage, docs: dict[str, SourceDocs], *, seq_len: int, seed: int) -> StagePlan:
    shares = dict(stage.shares().items())
    mean_len = {s: float(d.length[d.keep].mean()) if len(d) else 1.0 for s, d in docs.items()}
    budget = stage_budget(stage, seq_len, mean_len, shares)
    index = {s: np.flatnonzero(d.keep) for s, d in docs.items()}
    costs = {s: (docs[s].length[index[s]] if stage.weight_by == "tokens"
                 else np.ones(len(index[s]), np.int64)) for s in shares}
    mix = schedule(shares, costs, budget=budget, max_epochs=stage.max_epochs, seed=seed)
    picks = [(p.source, int(index[p.source][p.index])) for p in mix.picks]
    group = {s: k for k, s in enumerate(shares)}  # pack keeps each source's share per window
    items = [PackItem(length=int(docs[s].length[i]), images=int(docs[s].images[i]),
                      views=int(docs[s].views[i]), group=group[s]) for s, i in picks]
    bins = pack(items, seq_len, max_images=stage.pack.max_images,
                max_views=stage.pack.max_tiles, window=stage.pack.window)
    fates = {s: DocFates.empty(len(d.keep), ~d.keep) for s, d in docs.items()}
    for s, i in picks:
        fates[s].scheduled[i] = True
    if stage.budget is not None and stage.budget.unit == "sequences":
        for members in bins[int(stage.budget.amount):]:
            for m in members:
                fates[picks[m][0]].cut[picks[m][1]] = True
        bins = bins[:int(stage.budget.amount)]
    sequences, tokens, images = [], [], Counter()
    for members in bins:
        seq, per_source = [], Counter()
        for m in members:
            s, i = picks[m]
            seq.append((s, int(docs[s].unit[i]), int(docs[s].row[i])))
            per_source[s] += int(docs[s].length[i])
            images[s] += int(docs[s].images[i])
            fates[s].packed[i] = True
        sequences.append(seq)
        tokens.append(dict(per_source))
    return StagePlan(sequences=sequences, epochs=dict(mix.epochs), seq_sources_tokens=tokens,
                     images=images, fates=fates)


def shard_groups(plan: StagePlan, per_shard: int) -> list[list[int]]:
    n = len(plan.sequences)
    return [list(range(i, min(i + per_shard, n))) for i in range(0, n, per_shard)]


def shard_hash(plan: StagePlan, seq_indices: list[int], unit_keys: dict[str, list[str]],
               context: str) -> str:
    """Identity of one shard's content: its documents, their cache keys and the build context."""
    digest = hashlib.sha256(context.encode())
    for k in seq_indices:
        refs = [(s, unit_keys[s][u], r) for s, u, r in plan.sequences[k]]
        digest.update(json.dumps([k, refs]).encode())
    return digest.hexdigest()


def prefix_length(unit_costs: list[float | None], need: float | None) -> int | None:
    """Units needed so that their cost reaches `need` (None: all). None if still unknown."""
    total = 0.0
    for n, cost in enumerate(unit_costs, start=1):
        if cost is None:
            return None
        total += cost
        if need is not None and total >= need:
            return n
    return len(unit_costs)


def unit_cost(stats: dict, path: str, weight_by: str) -> float:
    if weight_by == "samples":
        return float(stats["docs"])
    with ipc.open_file(path + ".arrow") as reader:
        return float(reader.read_all()["length"].to_numpy().sum())
