"""The trainer's side of the data: shards built when missing, checked against the recipe and
the model, and streamed through `mixdata.load` like any user would."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import MixdataError
from .config import StepPlan
from .ddp import Dist, barrier


def shard_folder(recipe, stage: str) -> Path:
    from ..building import default_out

    return default_out(recipe, stage)


def ensure_shards(recipe, stage: str, ctx: Dist, *, workers: int = 1, progress: bool = True) -> Path:
    """The stage's shard folder; the main rank builds it first when it has no manifest."""
    folder = shard_folder(recipe, stage)
    if ctx.is_main and not (folder / "manifest.json").exists():
        from ..building import build_stage

        print(f"stage {stage}: no shards at {folder}, building them first")
        folder = Path(build_stage(recipe, stage, workers=workers, progress=progress))
    barrier(ctx)  # the other ranks wait for the build
    return folder


def read_stage_manifest(folder: Path, recipe, stage: str, tokenizer) -> dict:
    """The shards' manifest, refused when it disagrees with the recipe being trained."""
    path = Path(folder) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise MixdataError(f"cannot read {path}: {err}") from None
    expected = {"image_tokens_per_tile": recipe.image_tokens_per_tile,
                "seq_len": recipe.stage_seq_len(stage)}
    for key, value in expected.items():
        if manifest.get(key) != value:
            raise MixdataError(f"{path}: {key} is {manifest.get(key)} but recipe "
                               f"{recipe.name!r} stage {stage!r} says {value}; rebuild the "
                               f"shards (delete {folder})")
    built_with = manifest.get("tokenizer", {}).get("sha256")
    if built_with != tokenizer.sha256:
        raise MixdataError(f"{path}: shards were tokenized with {built_with}, the recipe's "
                           f"tokenizer is {tokenizer.sha256}; rebuild the shards")
    return manifest


def stage_tile(policy) -> int:
    """The square view size (px) the stage's image policy cuts, from its geometry alone."""
    from ..image import plan_for

    if policy.preset == "qwen2vl":
        raise MixdataError("the bundled trainer needs square tiles; image preset qwen2vl "
                           "makes variable-size views")
    return plan_for(1024, 768, policy).tile


def open_data(folder: Path, plan: StepPlan, ctx: Dist, *, seed: int, workers: int | None = None):
    """An endless, resumable stream of this rank's micro-batches from the stage's shards.

    `mixdata.load` splits the shards over ranks with equal batches per rank, so no rank runs
    dry first; its DataLoader workers (default: 1 on CPU, where cores are scarce, 4 on GPU)
    decode images while the model computes.
    """
    from .. import load

    if workers is None:
        workers = 4 if ctx.device.type == "cuda" else 1
    dataset = load(str(folder), batch_size=plan.micro_batch, seed=seed, rank=ctx.rank,
                   world_size=ctx.world_size)
    return dataset.loader(num_workers=workers, pin_memory=ctx.device.type == "cuda",
                          persistent_workers=workers > 0)
