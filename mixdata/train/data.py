"""The trainer's side of the data: shards built when missing, checked against the recipe and
the model, and streamed through `mixdata.load` like any user would."""
from __future__ import annotations

from pathlib import Path

from ..building import build_stage, default_out
from ..errors import MixdataError
from ..image import view_limits
from ..loading import load
from ..manifest import Manifest, read_manifest
from .config import StepPlan
from .ddp import Dist, barrier


def shard_folder(recipe, stage: str) -> Path:
    return default_out(recipe, stage)


def ensure_shards(recipe, stage: str, ctx: Dist, *, workers: int = 1,
                  progress: bool = True) -> Path:
    """The stage's shard folder; the main rank builds it first when it has no manifest."""
    folder = shard_folder(recipe, stage)
    if ctx.is_main and not (folder / "manifest.json").exists():
        print(f"stage {stage}: no shards at {folder}, building them first")
        folder = Path(build_stage(recipe, stage, workers=workers, progress=progress))
    barrier(ctx)  # the other ranks wait for the build
    return folder


def read_stage_manifest(folder: Path, recipe, stage: str, tokenizer) -> Manifest:
    """The shards' manifest, refused when it disagrees with the recipe being trained."""
    manifest = read_manifest(folder)
    expected = {"image_tokens_per_tile": recipe.image_tokens_per_tile,
                "seq_len": recipe.stage_seq_len(stage)}
    for key, value in expected.items():
        if getattr(manifest, key) != value:
            raise MixdataError(f"{folder}/manifest.json: {key} is {getattr(manifest, key)} but "
                               f"recipe {recipe.name!r} stage {stage!r} says {value}; rebuild "
                               f"the shards (delete {folder})")
    if manifest.dialect.tokenizer_sha256 != tokenizer.sha256:
        raise MixdataError(f"{folder}/manifest.json: shards were tokenized with "
                           f"{manifest.dialect.tokenizer_sha256}, the recipe's tokenizer is "
                           f"{tokenizer.sha256}; rebuild the shards")
    return manifest


def stage_tile(policy) -> int:
    """The square view size (px) the stage's image policy cuts (what its manifest records)."""
    tile = view_limits(policy).tile
    if tile is None:
        raise MixdataError(f"the bundled trainer needs square tiles; image preset "
                           f"{policy.preset} makes variable-size views")
    return tile


def open_data(folder: Path, plan: StepPlan, ctx: Dist, *, seed: int, workers: int | None = None,
              collate=None):
    """An endless, resumable stream of this rank's micro-batches from the stage's shards.

    `mixdata.load` splits the shards over ranks with equal batches per rank, so no rank runs
    dry first; its DataLoader workers (default: 1 on CPU, where cores are scarce, 4 on GPU)
    decode images while the model computes. `collate`: None for the batch contract (the
    built-in model), or a model family's (`mixdata.loading.families`) for an HF model.
    """
    if workers is None:
        workers = 4 if ctx.device.type == "cuda" else 1
    dataset = load(str(folder), batch_size=plan.micro_batch, seed=seed, rank=ctx.rank,
                   world_size=ctx.world_size, collate=collate)
    return dataset.loader(num_workers=workers, pin_memory=ctx.device.type == "cuda",
                          persistent_workers=workers > 0)
