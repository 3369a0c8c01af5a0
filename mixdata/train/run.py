"""Running a recipe's stages end to end: shards (built when missing), train, save, evaluate.

A run folder (`runs/<recipe>` by default) holds `run.json` (the recipe and model it was
started with), `metrics.jsonl` (one line per optimizer step, every stage), `eval.json` and,
per stage, `<stage>/checkpoint.pt` (resumable state) and `<stage>/final.pt` (weights).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import MixdataError
from ..storage import write_json_atomic
from .checkpoint import CHECKPOINT, FINAL
from .config import TrainConfig, parse_train, plan_steps
from .data import ensure_shards, open_data, read_stage_manifest, stage_tile
from .ddp import Dist, barrier, init_distributed, shutdown
from .loop import StageRun, train_stage
from .metrics import MetricsLog
from .model import ModelConfig, check_tokens_per_tile, count_parameters, model_config
from .report import RUN_FILE, evaluate_stage, print_table
from .stage import finish_stage, start_stage

METRICS = "metrics.jsonl"


def train_recipe(recipe, *, stage: str = "all", out: str | Path | None = None,
                 device: str = "auto", resume: bool = False, progress: bool = True,
                 workers: int = 1) -> Path:
    """Train the recipe's stages in order (or only `stage`); returns the run folder."""
    config = parse_train(recipe)
    names = list(recipe.stages) if stage == "all" else [stage]
    if stage != "all" and stage not in recipe.stages:
        raise MixdataError(f"stage {stage!r} is not in recipe {recipe.name!r}; "
                           f"stages: {', '.join(recipe.stages)}")
    run_dir = Path(out) if out is not None else Path("runs") / recipe.name
    ctx = init_distributed(device)
    try:
        _check_fresh(run_dir, names, resume)
        if config.real_model:  # an HF VLM or a composed tower + LM: mixdata.train.hf
            from .hf.run import train_hf

            train_hf(recipe, config, names, run_dir, ctx, resume=resume, progress=progress,
                     workers=workers)
            return run_dir
        from ..tokens import load_tokenizer

        tokenizer = load_tokenizer(recipe.tokenizer)
        model = model_config(config.model_spec, tokenizer.vocab_size)
        for name in names:  # before any build: a mismatch would waste it
            check_tokens_per_tile(model, stage_tile(recipe.stages[name].image),
                                  recipe.image_tokens_per_tile, f"stage {name}")
        if ctx.is_main:
            _write_run_file(run_dir, recipe, config, model)
        for name in names:
            _run_stage(recipe, config, model, name, run_dir, ctx, tokenizer=tokenizer,
                       resume=resume, progress=progress, workers=workers)
    finally:
        shutdown(ctx)
    return run_dir


def _check_fresh(run_dir: Path, names: list[str], resume: bool) -> None:
    if resume:
        return
    taken = [n for n in names
             if (run_dir / n / CHECKPOINT).exists() or (run_dir / n / FINAL).exists()]
    if taken:
        raise MixdataError(f"{run_dir} already holds stage {taken[0]!r}; pass --resume to "
                           "continue it, or --out to start a new run")


def _write_run_file(run_dir: Path, recipe, config: TrainConfig, model: ModelConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"recipe_file": recipe.file, "recipe": recipe.raw, "recipe_sha256": recipe.sha256,
               "model": {"preset": config.model_spec.preset, "connector": model.connector.kind,
                         "parameters": count_parameters_of(model)}}
    write_json_atomic(run_dir / RUN_FILE, json.loads(json.dumps(payload, default=str)),
                      sort_keys=False)


def count_parameters_of(model: ModelConfig) -> int:
    import torch

    from .model import VLM

    with torch.device("meta"):  # shapes only: nothing allocated, no RNG drawn
        return count_parameters(VLM(model))


def previous_final(recipe, run_dir: Path, name: str) -> Path | None:
    """The final weights of the stage before `name` in the recipe, when that stage has run."""
    order = list(recipe.stages)
    index = order.index(name)
    if index == 0:
        return None
    path = run_dir / order[index - 1] / FINAL
    return path if path.exists() else None


def _run_stage(recipe, config: TrainConfig, model: ModelConfig, name: str, run_dir: Path,
               ctx: Dist, *, tokenizer, resume: bool, progress: bool, workers: int) -> None:
    folder = run_dir / name
    if resume and (folder / FINAL).exists():
        if ctx.is_main:
            print(f"stage {name}: finished earlier, kept ({folder / FINAL})")
        return
    shard_dir = ensure_shards(recipe, name, ctx, workers=workers, progress=progress)
    manifest = read_stage_manifest(shard_dir, recipe, name, tokenizer)
    policy = recipe.stages[name].image
    spec = config.stage(name)
    base_seed = config.seed if config.seed is not None else recipe.seed
    seed = base_seed + 1000 * list(recipe.stages).index(name)
    plan = plan_steps(spec, default_micro_batch=config.micro_batch, seq_len=manifest.seq_len,
                      world_size=ctx.world_size, available_sequences=manifest.samples)
    init_from = previous_final(recipe, run_dir, name)
    if ctx.is_main:
        origin = init_from or "a fresh initialisation"
        print(f"stage {name}: {plan.steps} steps x {plan.sequences_per_step} sequences "
              f"({plan.accumulation} accumulation), starting from {origin}")
    state = start_stage(model, spec, plan, seed=seed, ctx=ctx, init_from=init_from,
                        parallel=config.parallel)
    data = open_data(shard_dir, plan, ctx, seed=seed)
    run = StageRun(name=name, spec=spec, plan=plan, folder=folder,
                   checkpoint_every=config.checkpoint_every, pixel_mean=policy.mean,
                   pixel_std=policy.std, parallel=config.parallel)
    log = MetricsLog(run_dir / METRICS if ctx.is_main else None)
    train_stage(state.model, state.wrapped, state.optimizer, state.scheduler, data, run,
                ctx=ctx, log=log, resume=resume, progress=progress)
    finish_stage(state, folder, ctx, extra={"stage": name, "steps": plan.steps})
    if ctx.is_main:
        results = evaluate_stage(state.model, recipe, config, name, run_dir, ctx.device, tokenizer)
        if results is not None:
            print_table(run_dir)
    barrier(ctx)
