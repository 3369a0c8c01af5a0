"""The stage manifest a build writes: what was built, from what, and how every record fared."""
from __future__ import annotations

import contextlib
import platform
from collections import Counter
from importlib import metadata

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
from ..tokens.dialect import dialect_of, recipe_tokenizer
from .accounts import check_balance
from .plan import StagePlan
from .prepare import UnitStats

VERSIONED = ("numpy", "pillow", "pyarrow", "pymupdf", "tokenizers", "webdataset")


def _versions() -> dict[str, str]:
    out = {"mixdata": __version__, "python": platform.python_version()}
    for name in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def source_accounts(stage, plan: StagePlan, stats: dict[str, list[UnitStats]]
                    ) -> dict[str, SourceAccount]:
    """Every source's account (see `accounts`); AccountingError when one does not balance."""
    shares = stage.shares()
    total_tokens = plan.tokens or 1
    total_docs = sum(p.documents for p in plan.per_source.values()) or 1
    accounts, unaccounted = {}, {}
    for s, units in stats.items():
        rejected = Counter()
        for unit in units:
            rejected.update(unit.rejected)
        planned = plan.per_source[s]
        unaccounted[s] = planned.unaccounted
        accounts[s] = SourceAccount(
            read=sum(u.read for u in units), written=planned.written,
            rejected=sum(rejected.values()), unused=sum(planned.unused.values()),
            rejected_by_reason=dict(sorted(rejected.items())),
            unused_by_reason=dict(sorted(planned.unused.items())), units=len(units),
            tokens=planned.tokens, images=planned.images, documents=planned.documents,
            epochs=round(planned.epochs, 6),
            share_tokens=round(planned.tokens / total_tokens, 6),
            share_samples=round(planned.documents / total_docs, 6),
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


def build_manifest(recipe, stage_name: str, plan: StagePlan,
                   stats: dict[str, list[UnitStats]], shard_infos: list[dict],
                   task_retries: dict[str, int] | None = None) -> Manifest:
    stage = recipe.stages[stage_name]
    seq_len = recipe.stage_seq_len(stage_name)
    real, n_seq = plan.tokens, plan.sequences
    shares = stage.shares()
    deviation = plan.window_deviation
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
        sources=source_accounts(stage, plan, stats),
        packing=PackingInfo(seq_len=seq_len, sequences=n_seq, tokens=int(real),
                            efficiency=round(real / (n_seq * seq_len), 6) if n_seq else 0.0,
                            max_images=stage.pack.max_images, max_tiles=stage.pack.max_tiles),
        versions=_versions(),
        run=RunInfo(retries={s: sum(u.retries for u in units) for s, units in stats.items()},
                    task_retries=dict(sorted((task_retries or {}).items()))))
