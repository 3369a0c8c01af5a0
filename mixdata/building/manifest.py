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
from ..errors import MixdataError

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


def source_accounts(stage, plan, stats, dedup_rejects) -> dict:
    """Per source: records read, written, rejected and unused, each counted on its own (the
    plan counts written and unused records, prepare the rejected ones), so the balance
    read = written + rejected + unused is a check that can fail."""
    shares = stage.shares()
    total_tokens = plan.tokens or 1
    total_docs = sum(p.documents for p in plan.per_source.values()) or 1
    accounts = {}
    for s in stats:
        rejected = Counter()
        read = 0
        for unit in stats[s]:
            read += unit["read"]
            rejected.update(unit["rejected"])
        rejected.update(Counter(r["reason"] for r in dedup_rejects.get(s, [])))
        planned = plan.per_source[s]
        unused = {k: v for k, v in planned.unused.items() if k != "duplicate" and v}
        n_rejected, n_unused = sum(rejected.values()), sum(unused.values())
        if read != planned.written + n_rejected + n_unused:
            raise MixdataError(f"source {s!r}: {read} records read but {planned.written} "
                               f"written + {n_rejected} rejected + {n_unused} unused; the build "
                               "lost count of some records (a bug: please report it)")
        accounts[s] = {
            "read": read, "written": planned.written, "rejected": n_rejected,
            "rejected_by_reason": dict(sorted(rejected.items())),
            "unused": n_unused, "unused_by_reason": dict(sorted(unused.items())),
            "units": len(stats[s]), "tokens": planned.tokens, "images": planned.images,
            "documents": planned.documents, "epochs": round(planned.epochs, 6),
            "share_tokens": round(planned.tokens / total_tokens, 6),
            "share_samples": round(planned.documents / total_docs, 6),
            "target_share": round(shares.get(s, 0.0), 6),
        }
    return accounts


def build_manifest(recipe, stage_name, plan, stats, dedup_rejects, shard_infos) -> dict:
    from ..tokens import load_tokenizer

    stage = recipe.stages[stage_name]
    seq_len = recipe.stage_seq_len(stage_name)
    tok = load_tokenizer(recipe.tokenizer)
    real, n_seq = plan.tokens, plan.sequences
    shares = stage.shares()
    return {
        "format": MANIFEST_FORMAT,
        "recipe": {"name": recipe.name, "sha256": recipe.sha256, "snapshot": recipe.raw},
        "stage": stage_name, "seed": recipe.seed, "seq_len": seq_len,
        "image_tokens_per_tile": recipe.image_tokens_per_tile,
        "tokenizer": {"identity": tok.identity, "sha256": tok.sha256,
                      "vocab_size": tok.vocab_size, "special_ids": dict(tok.special_ids)},
        "image_policy": {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in asdict(stage.image).items()},
        "mixture": {"weight_by": stage.weight_by, "target_shares": shares,
                    "budget": {stage.budget.unit: stage.budget.amount} if stage.budget else None,
                    "max_window_deviation": round(plan.window_deviation, 6)},
        "shards": [_shard_entry(i) for i in shard_infos],
        "sources": source_accounts(stage, plan, stats, dedup_rejects),
        "packing": {"seq_len": seq_len, "sequences": n_seq, "tokens": int(real),
                    "efficiency": round(real / (n_seq * seq_len), 6) if n_seq else 0.0,
                    "max_images": stage.pack.max_images, "max_tiles": stage.pack.max_tiles},
        "versions": _versions(),
    }


def _shard_entry(info: dict) -> dict:
    keys = ("name", "samples", "tokens", "images", "bytes", "sha256")
    return {k: info[k] for k in keys if k in info}
