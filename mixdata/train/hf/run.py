"""A recipe's stages on a real model: checked, trained with the shared loop, exported.

Per stage: the shards (built when missing, like the built-in trainer's), checked against
the model before any step (`check`); the model from the previous stage's `final/` or the
spec; the stage's modes and learning rates on its real modules (`modes`); `mixdata.load`
with the model family's collate; `loop.train_stage` with the `HFFeed` (resume exact from
`checkpoint.pt`); then `final/` (`export`). The held-out eval of the built-in trainer reads
mixdata's own dialect and runs for the built-in presets only.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

from ...errors import MixdataError
from ...loading.families import FamilyCollate
from ...storage import write_json_atomic
from ...tokens.dialect import dialect_of, recipe_tokenizer
from ...tokens.families import max_grid
from ..checkpoint import CHECKPOINT
from ..config import TrainConfig, plan_steps
from ..data import ensure_shards, open_data, read_stage_manifest
from ..ddp import Dist, barrier
from ..loop import StageRun, train_stage
from ..metrics import MetricsLog
from ..optim import build_scheduler
from ..parallel import is_sharded, parallelize, whole_model
from .arch import arch_of
from .check import check_fit, fit_vocabulary
from .export import FINAL_DIR, export_final
from .feed import HFFeed
from .load import load_model, local_folder
from .modes import apply_modes, build_optimizer
from .spec import HFModelSpec
from .wrapper import HFTrainModel

RUN_FILE, METRICS = "run.json", "metrics.jsonl"


def model_tokenizer(recipe, folder: Path | None, config):
    """The tokenizer of a model folder in the recipe's dialect (None: the folder has none,
    or the model reads another family, which `check_fit` then reports)."""
    from ...tokens.hf import load_model_tokenizer

    if folder is None or not (Path(folder) / "tokenizer.json").is_file() or \
            arch_of(config).family != recipe.family:
        return None
    grid = max_grid([s.image for s in recipe.stages.values()])
    return load_model_tokenizer(str(folder), recipe.family, add_tokens=recipe.add_tokens,
                                grid=grid)


def start_config(spec, tokenizer, init_from: Path | None):
    """The starting model's config, read without its weights."""
    from transformers import AutoConfig

    from .composed import MixdataVLMConfig
    from .load import vision_config_of

    if init_from is not None or isinstance(spec, HFModelSpec):
        folder = init_from or local_folder(spec.hf)
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    text = AutoConfig.from_pretrained(str(local_folder(spec.lm)), local_files_only=True)
    c = spec.connector
    return MixdataVLMConfig(vision_config=vision_config_of(local_folder(spec.vision)),
                            text_config=text, image_token_id=tokenizer.image_id,
                            connector_kind=c.kind, connector_shuffle=c.shuffle,
                            connector_latents=c.latents, connector_layers=c.layers,
                            connector_heads=c.heads, vision_feature_layer=spec.vision_layer)


def source_folder(spec, init_from: Path | None) -> Path:
    """Where the starting model's tokenizer and processor files are."""
    if init_from is not None:
        return Path(init_from)
    return local_folder(spec.hf if isinstance(spec, HFModelSpec) else spec.lm)


def rebuild_advice(recipe, stage: str) -> str:
    from ..data import shard_folder

    return (f"rebuild stage {stage!r} with the model's tokenizer folder as tokenizer: and "
            f"settings that fit it (delete {shard_folder(recipe, stage)} first)")


def previous_final(recipe, run_dir: Path, name: str) -> Path | None:
    order = list(recipe.stages)
    index = order.index(name)
    if index == 0:
        return None
    path = run_dir / order[index - 1] / FINAL_DIR
    return path if (path / "config.json").exists() else None


def train_hf(recipe, config: TrainConfig, names: list[str], run_dir: Path, ctx: Dist, *,
             resume: bool, progress: bool, workers: int) -> None:
    """Train `names` (recipe stages, in order) of a recipe whose `train.model` is real."""
    if recipe.family is None:
        raise MixdataError(f"recipe {recipe.name!r}: a real model trains on shards in its own "
                           "dialect; set tokenizer: to the model's (or, composed, the LM's) "
                           "folder and an image preset of the model's family")
    tokenizer = recipe_tokenizer(recipe)
    if not resume:
        taken = [n for n in names if (run_dir / n / FINAL_DIR).exists()
                 or (run_dir / n / CHECKPOINT).exists()]
        if taken:
            raise MixdataError(f"{run_dir} already holds stage {taken[0]!r}; pass --resume to "
                               "continue it, or --out to start a new run")
    first = previous_final(recipe, run_dir, names[0])
    model_config = start_config(config.model, tokenizer, first)
    own = model_tokenizer(recipe, source_folder(config.model, first), model_config)
    for name in names:  # before any build: a mismatch would waste it
        check_fit(dialect_of(tokenizer, recipe, name), model_config, where=f"stage {name}",
                  rebuild=rebuild_advice(recipe, name),
                  model_tokenizer_sha=own.sha256 if own else None)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        payload = {"recipe_file": recipe.file, "recipe": recipe.raw,
                   "recipe_sha256": recipe.sha256,
                   "model": {"kind": type(config.model).__name__, "spec": config.model.label}}
        write_json_atomic(run_dir / RUN_FILE, json.loads(json.dumps(payload, default=str)),
                          sort_keys=False)
    for name in names:
        run_stage(recipe, config, name, run_dir, ctx, tokenizer=tokenizer, resume=resume,
                  progress=progress, workers=workers)


def stage_model(recipe, config: TrainConfig, name: str, *, tokenizer, dialect, where: str,
                seed: int, init_from: Path | None, ctx: Dist) -> HFTrainModel:
    """The stage's model on CPU: loaded (the previous `final/` or the spec), checked against
    the shards' `dialect`, its embeddings fitted to it, the stage's modes applied."""
    hf = load_model(config.model, tokenizer, seed=seed, init_from=init_from, device=ctx.device)
    own = model_tokenizer(recipe, source_folder(config.model, init_from), hf.config)
    check_fit(dialect, hf.config, where=where, rebuild=rebuild_advice(recipe, name),
              model_tokenizer_sha=own.sha256 if own else None)
    if fit_vocabulary(hf, dialect, where=where) and ctx.is_main:
        print(f"stage {name}: grew the embeddings to {dialect.vocab_size} tokens (added: "
              f"{', '.join(dialect.added_tokens)})")
    model = HFTrainModel(hf)
    unreachable = apply_modes(model, config.stage(name), seed=seed)
    if unreachable and ctx.is_main:
        print(f"stage {name}: {len(unreachable)} parameters get no gradient and stay frozen "
              f"({', '.join(unreachable[:4])}{' ...' if len(unreachable) > 4 else ''})")
    return model


def run_stage(recipe, config: TrainConfig, name: str, run_dir: Path, ctx: Dist, *, tokenizer,
              resume: bool, progress: bool = True, workers: int = 1,
              stop_after: int | None = None) -> Path | None:
    """One stage on a real model; returns its `final/` folder. `stop_after` ends the stage
    after that step, as a crash would (tests): no `final/`, returns None."""
    folder = run_dir / name
    if resume and (folder / FINAL_DIR / "config.json").exists():
        if ctx.is_main:
            print(f"stage {name}: finished earlier, kept ({folder / FINAL_DIR})")
        return folder / FINAL_DIR
    shard_dir = ensure_shards(recipe, name, ctx, workers=workers, progress=progress)
    manifest = read_stage_manifest(shard_dir, recipe, name, tokenizer)
    init_from = previous_final(recipe, run_dir, name)
    spec, stage_index = config.stage(name), list(recipe.stages).index(name)
    seed = (config.seed if config.seed is not None else recipe.seed) + 1000 * stage_index
    build = functools.partial(stage_model, recipe, config, name, tokenizer=tokenizer,
                              dialect=manifest.dialect, where=f"{shard_dir}/manifest.json",
                              seed=seed, init_from=init_from, ctx=ctx)
    model = build().to(ctx.device)
    wrapped = parallelize(model, ctx, config.parallel)  # FSDP2 shards the parameters in place
    plan = plan_steps(spec, default_micro_batch=config.micro_batch, seq_len=manifest.seq_len,
                      world_size=ctx.world_size, available_sequences=manifest.samples)
    optimizer = build_optimizer(model, spec, default_lr=config.model.lr)
    scheduler = build_scheduler(optimizer, spec, plan.steps)
    if ctx.is_main:
        print(f"stage {name}: {plan.steps} steps x {plan.sequences_per_step} sequences "
              f"({plan.accumulation} accumulation), starting from "
              f"{init_from or config.model.label}")
    data = open_data(shard_dir, plan, ctx, seed=seed, collate=family_collate(model))
    run = StageRun(name=name, spec=spec, plan=plan, folder=folder,
                   checkpoint_every=config.checkpoint_every, feed=HFFeed(),
                   parallel=config.parallel)
    log = MetricsLog(run_dir / METRICS if ctx.is_main else None)
    train_stage(model, wrapped, optimizer, scheduler, data, run, ctx=ctx,
                log=log, resume=resume, stop_after=stop_after, progress=progress)
    if stop_after is not None and stop_after < plan.steps:
        return None
    if is_sharded(model):  # every rank gathers; the main rank gets the whole model
        model = whole_model(model, build, ctx)
    if ctx.is_main:
        final = export_final(model, folder, tokenizer=tokenizer, dialect=manifest.dialect,
                             sources=[tokenizer.folder, source_folder(config.model, init_from)])
        print(f"stage {name}: final model in {final} (eval on the demo split runs for the "
              "built-in presets only)")
    barrier(ctx)
    return folder / FINAL_DIR


def family_collate(model: HFTrainModel) -> FamilyCollate:
    facts = model.vision_facts
    if model.family == "qwen2vl":
        return FamilyCollate(family="qwen2vl", patch_size=facts.patch,
                             temporal_patch_size=facts.temporal, merge_size=facts.merge)
    return FamilyCollate(family=model.family)
