"""The stage manifest: what was built, from what, and how every input record was accounted."""
from __future__ import annotations

import contextlib
import json
import platform
from collections import Counter
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from .. import __version__

MANIFEST_FORMAT = "mixdata-shards-v1"


def write_json_atomic(path: Path, payload: dict) -> None:
    from ..shards import atomic_file

    with atomic_file(path, "w") as fh:
        json.dump(payload, fh, indent=1, sort_keys=True)
        fh.write("\n")


def _versions() -> dict:
    out = {"mixdata": __version__, "python": platform.python_version()}
    for name in ("numpy", "pillow", "pyarrow", "pymupdf", "tokenizers", "webdataset"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def source_accounts(stage, plan, docs, stats, dedup_rejects) -> dict:
    shares = stage.shares()
    total_tokens = sum(sum(t.values()) for t in plan.seq_sources_tokens) or 1
    written_docs = Counter(s for seq in plan.sequences for s, _, _ in seq)
    total_docs = sum(written_docs.values()) or 1
    images = plan.images
    tokens = Counter()
    for per_source in plan.seq_sources_tokens:
        tokens.update(per_source)
    accounts = {}
    for s in stats:
        rejected = Counter()
        read = 0
        for unit in stats[s]:
            read += unit["read"]
            rejected.update(unit["rejected"])
        rejected.update(Counter(r["reason"] for r in dedup_rejects.get(s, [])))
        written = len(plan.used_records.get(s, ()))
        n_rejected = sum(rejected.values())
        accounts[s] = {
            "read": read, "written": written, "rejected": n_rejected,
            "rejected_by_reason": dict(sorted(rejected.items())),
            "unused": read - written - n_rejected,
            "units": len(stats[s]), "tokens": int(tokens[s]), "images": images[s],
            "documents": int(written_docs[s]), "epochs": round(plan.epochs.get(s, 0.0), 6),
            "share_tokens": round(tokens[s] / total_tokens, 6),
            "share_samples": round(written_docs[s] / total_docs, 6),
            "target_share": round(shares.get(s, 0.0), 6),
        }
    return accounts


def build_manifest(recipe, stage_name, plan, docs, stats, dedup_rejects, shard_infos) -> dict:
    from ..mix import window_deviation
    from ..tokens.dialect import dialect_of, recipe_tokenizer

    stage = recipe.stages[stage_name]
    seq_len = recipe.stage_seq_len(stage_name)
    tok = recipe_tokenizer(recipe)
    real = sum(sum(t.values()) for t in plan.seq_sources_tokens)
    n_seq = len(plan.sequences)
    shares = stage.shares()
    return {
        "format": MANIFEST_FORMAT,
        "recipe": {"name": recipe.name, "sha256": recipe.sha256, "snapshot": recipe.raw},
        "stage": stage_name, "seed": recipe.seed, "seq_len": seq_len,
        "image_tokens_per_tile": recipe.image_tokens_per_tile,
        "tokenizer": {"identity": tok.identity, "sha256": tok.sha256,
                      "vocab_size": tok.vocab_size, "special_ids": dict(tok.special_ids)},
        "dialect": dialect_of(tok, recipe, stage_name).to_json(),
        "image_policy": {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in asdict(stage.image).items()},
        "mixture": {"weight_by": stage.weight_by, "target_shares": shares,
                    "budget": {stage.budget.unit: stage.budget.amount} if stage.budget else None,
                    "max_window_deviation": round(window_deviation(
                        plan.seq_sources_tokens, shares, window=1000), 6) if n_seq else 0.0},
        "shards": [_shard_entry(i) for i in shard_infos],
        "sources": source_accounts(stage, plan, docs, stats, dedup_rejects),
        "packing": {"seq_len": seq_len, "sequences": n_seq, "tokens": int(real),
                    "efficiency": round(real / (n_seq * seq_len), 6) if n_seq else 0.0,
                    "max_images": stage.pack.max_images, "max_tiles": stage.pack.max_tiles},
        "versions": _versions(),
    }


def _shard_entry(info: dict) -> dict:
    keys = ("name", "samples", "tokens", "images", "bytes", "sha256")
    return {k: info[k] for k in keys if k in info}
