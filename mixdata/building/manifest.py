"""The stage manifest a build writes: what was built, from what, and how every record fared."""
from __future__ import annotations

import contextlib
import platform
from collections import Counter
from importlib import metadata

import numpy as np

from .. import __version__
from ..image import view_limits
from ..manifest import (
    Geometry,
    Manifest,
    MixtureInfo,
    PackingInfo,
    RecipeInfo,
    RunInfo,
    ShardEntry,
    SourceAccount,
)
from ..mix import window_deviation
from ..tokens.dialect import dialect_of, recipe_tokenizer
from .accounts import check_balance, record_fates
from .plan import SourceDocs, StagePlan
from .prepare import UnitStats

VERSIONED = ("numpy", "pillow", "pyarrow", "pymupdf", "tokenizers", "webdataset")


def _versions() -> dict[str, str]:
    out = {"mixdata": __version__, "python": platform.python_version()}
    for name in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def source_accounts(stage, plan: StagePlan, docs: dict[str, SourceDocs],
                    stats: dict[str, list[UnitStats]]) -> dict[str, SourceAccount]:
    """Every source's account (see `accounts`); AccountingError when one does not balance."""
    shares = stage.shares()
    total_tokens = sum(sum(t.values()) for t in plan.seq_sources_tokens) or 1
    documents = Counter(s for seq in plan.sequences for s, _, _ in seq)
    total_docs = sum(documents.values()) or 1
    tokens = Counter()
    for per_source in plan.seq_sources_tokens:
        tokens.update(per_source)
    accounts, unaccounted = {}, {}
    for s, units in stats.items():
        rejected = Counter()
        for unit in units:
            rejected.update(unit.rejected)
        records = docs[s].unit.astype(np.int64) << 32 | docs[s].record.astype(np.int64)
        written, unused, unaccounted[s] = record_fates(records, plan.fates[s],
                                                       stage.budget is not None)
        accounts[s] = SourceAccount(
            read=sum(u.read for u in units), written=written, rejected=sum(rejected.values()),
            unused=sum(unused.values()), rejected_by_reason=dict(sorted(rejected.items())),
            unused_by_reason=dict(sorted(unused.items())), units=len(units),
            tokens=int(tokens[s]), images=int(plan.images[s]), documents=int(documents[s]),
            epochs=round(plan.epochs.get(s, 0.0), 6),
            share_tokens=round(tokens[s] / total_tokens, 6),
            share_samples=round(documents[s] / total_docs, 6),
            target_share=round(shares.get(s, 0.0), 6))
    check_balance(accounts, unaccounted)
    return accounts


def geometry(recipe, stage) -> Geometry:
    policy = stage.image
    limits = view_limits(policy)
    return Geometry(preset=policy.preset, tile=limits.tile,
                    tokens_per_view=recipe.image_tokens_per_tile, max_rows=limits.max_rows,
                    max_cols=limits.max_cols, max_views=limits.max_views,
                    global_view=limits.global_view, mean=tuple(policy.mean),
                    std=tuple(policy.std))


def build_manifest(recipe, stage_name: str, plan: StagePlan, docs: dict[str, SourceDocs],
                   stats: dict[str, list[UnitStats]], shard_infos: list[dict]) -> Manifest:
    stage = recipe.stages[stage_name]
    seq_len = recipe.stage_seq_len(stage_name)
    real = sum(sum(t.values()) for t in plan.seq_sources_tokens)
    n_seq = len(plan.sequences)
    shares = stage.shares()
    deviation = window_deviation(plan.seq_sources_tokens, shares, window=1000) if n_seq else 0.0
    return Manifest(
        recipe=RecipeInfo(name=recipe.name, sha256=recipe.sha256, snapshot=recipe.raw),
        stage=stage_name, seed=recipe.seed, seq_len=seq_len,
        image_tokens_per_tile=recipe.image_tokens_per_tile,
        dialect=dialect_of(recipe_tokenizer(recipe), recipe, stage_name),
        image_policy=stage.image.to_json(),
        geometry=geometry(recipe, stage),
        mixture=MixtureInfo(weight_by=stage.weight_by, target_shares=shares,
                            budget={stage.budget.unit: stage.budget.amount}
                            if stage.budget else None,
                            max_window_deviation=round(deviation, 6)),
        shards=[ShardEntry(**{k: info[k] for k in ("name", "samples", "tokens", "images",
                                                   "bytes", "sha256")})
                for info in shard_infos],
        sources=source_accounts(stage, plan, docs, stats),
        packing=PackingInfo(seq_len=seq_len, sequences=n_seq, tokens=int(real),
                            efficiency=round(real / (n_seq * seq_len), 6) if n_seq else 0.0,
                            max_images=stage.pack.max_images, max_tiles=stage.pack.max_tiles),
        versions=_versions(),
        run=RunInfo(retries={s: sum(u.retries for u in units) for s, units in stats.items()}))
