"""Running a recipe's stages end to end: shards (built when missing), train, save, evaluate.

A run folder (`runs/<recipe>` by default) holds `run.json` (the recipe, model, seed and the
chain of stages it trains: see `lineage`), `metrics.jsonl` (one line per optimizer step,
every stage trained here), `eval.json` and, per stage, `<stage>/checkpoint.pt` (resumable
state) and `<stage>/final.pt` (weights). A stage reused from another run (`reuse=`) has only
its `final.pt` and its eval row, copied from that run.
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
from .lineage import (
    RUN_FILE,
    Chain,
    check_continuation,
    copy_stage,
    reusable,
    stage_chain,
    stage_seeds,
    stages_to_train,
)
from .loop import StageRun, train_stage
from .metrics import MetricsLog
from .model import ModelConfig, check_tokens_per_tile, count_parameters, model_config
from .report import EVAL_FILE, evaluate_stage, print_table, record_eval
from .stage import finish_stage, start_stage

METRICS = "metrics.jsonl"


def train_recipe(recipe, *, stage: str = "all", skip: tuple[str, ...] = (),
                 out: str | Path | None = None, device: str = "auto", resume: bool = False,
                 progress: bool = True, workers: int = 1, seed: int | None = None,
                 stage_seed: dict[str, int] | None = None,
                 reuse: str | Path | None = None) -> Path:
    """Train the recipe's stages in order, minus `skip` (or only `stage`); returns the run
    folder. Each stage starts from the last one trained before it in that chain. `seed`
    overrides `train.seed`, `stage_seed` one stage's seed; `reuse` names a run folder whose
    stages with the same lineage are copied instead of trained."""
    config = parse_train(recipe)
    chain = stage_chain(list(recipe.stages), skip, recipe.name)
    names = stages_to_train(chain, stage, recipe.name)
    seed_given = seed is not None
    if seed is None:
        seed = config.seed if config.seed is not None else recipe.seed
    seeds = stage_seeds(chain, seed, stage_seed)
    run_dir = Path(out) if out is not None else Path("runs") / recipe.name
    ctx = init_distributed(device)
    try:
        _check_fresh(run_dir, names, resume)
        if config.real_model:  # an HF VLM or a composed tower + LM: mixdata.train.hf
            if chain.skipped or reuse is not None or stage_seed or seed_given:
                raise MixdataError("--skip, --reuse, --seed and --stage-seed train the bundled "
                                   "model only; a train.model {hf:} / {vision:, lm:} recipe "
                                   "trains its stages in recipe order with train.seed")
            from .hf.run import train_hf

            train_hf(recipe, config, names, run_dir, ctx, resume=resume, progress=progress,
                     workers=workers)
            return run_dir
        check_continuation(run_dir, chain, seeds, recipe.sha256)
        from ..tokens import load_tokenizer

        tokenizer = load_tokenizer(recipe.tokenizer)
        model = model_config(config.model_spec, tokenizer.vocab_size)
        for name in names:  # before any build: a mismatch would waste it
            check_tokens_per_tile(model, stage_tile(recipe.stages[name].image),
                                  recipe.image_tokens_per_tile, f"stage {name}")
        if ctx.is_main:
            _write_run_file(run_dir, recipe, config, model, chain, seed, seeds)
        for name in names:
            fresh = not (run_dir / name / FINAL).exists()
            if reuse is not None and fresh and _reuse_stage(Path(reuse), recipe, chain, name,
                                                            run_dir, ctx, seeds):
                continue
            _run_stage(recipe, config, model, chain, name, run_dir, ctx, tokenizer=tokenizer,
                       resume=resume, progress=progress, workers=workers,
                       base_seed=seeds[name])
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


def _write_run_file(run_dir: Path, recipe, config: TrainConfig, model: ModelConfig,
                    chain: Chain, seed: int, seeds: dict[str, int]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"recipe_file": recipe.file, "recipe": recipe.raw, "recipe_sha256": recipe.sha256,
               "stages": list(chain.stages), "skipped": list(chain.skipped), "seed": seed,
               "seeds": seeds,
               "model": {"preset": config.model_spec.preset, "connector": model.connector.kind,
                         "parameters": count_parameters_of(model)}}
    write_json_atomic(run_dir / RUN_FILE, json.loads(json.dumps(payload, default=str)),
                      sort_keys=False)


def count_parameters_of(model: ModelConfig) -> int:
    import torch

    from .model import VLM

    with torch.device("meta"):  # shapes only: nothing allocated, no RNG drawn
        return count_parameters(VLM(model))


def previous_final(chain: Chain, run_dir: Path, name: str) -> Path | None:
    """The final weights of the stage before `name` in the chain, when that stage has run."""
    before = chain.before(name)
    if before is None:
        return None
    path = run_dir / before / FINAL
    return path if path.exists() else None


def _reuse_stage(other: Path, recipe, chain: Chain, name: str, run_dir: Path, ctx: Dist,
                 seeds: dict[str, int]) -> bool:
    """Copy stage `name` from run `other` when it has the same lineage there."""
    final = reusable(other, name, chain, seeds, recipe.sha256)
    if final is None:
        return False
    if ctx.is_main:
        copy_stage(final, run_dir, name)
        table_path = other / EVAL_FILE
        table = json.loads(table_path.read_text()) if table_path.exists() else {}
        if name in table:
            record_eval(run_dir, name, table[name])
        print(f"stage {name}: reused {final} (same recipe, seeds and stages up to it: "
              f"{' -> '.join(chain.lineage(name))})")
        print_table(run_dir)
    barrier(ctx)
    return True


def _run_stage(recipe, config: TrainConfig, model: ModelConfig, chain: Chain, name: str,
               run_dir: Path, ctx: Dist, *, tokenizer, resume: bool, progress: bool,
               workers: int, base_seed: int) -> None:
    folder = run_dir / name
    if resume and (folder / FINAL).exists():
        if ctx.is_main:
            print(f"stage {name}: finished earlier, kept ({folder / FINAL})")
        return
    shard_dir = ensure_shards(recipe, name, ctx, workers=workers, progress=progress)
    manifest = read_stage_manifest(shard_dir, recipe, name, tokenizer)
    policy = recipe.stages[name].image
    spec = config.stage(name)
    # Seeded by the stage's place in the recipe, not in the chain: a skip changes what a
    # stage starts from, never its data order or its LoRA/init draws.
    seed = base_seed + 1000 * list(recipe.stages).index(name)
    plan = plan_steps(spec, default_micro_batch=config.micro_batch, seq_len=manifest.seq_len,
                      world_size=ctx.world_size, available_sequences=manifest.samples)
    init_from = previous_final(chain, run_dir, name)
    if ctx.is_main:
        origin = init_from or "a fresh initialisation"
        skipped = f" ({', '.join(chain.skipped)} skipped)" if chain.skipped else ""
        print(f"stage {name}: {plan.steps} steps x {plan.sequences_per_step} sequences "
              f"({plan.accumulation} accumulation), starting from {origin}{skipped}")
    state = start_stage(model, spec, plan, seed=seed, ctx=ctx, init_from=init_from,
                        parallel=config.parallel)
    data = open_data(shard_dir, plan, ctx, seed=seed)
    run = StageRun(name=name, spec=spec, plan=plan, folder=folder,
                   checkpoint_every=config.checkpoint_every, pixel_mean=policy.mean,
                   pixel_std=policy.std, parallel=config.parallel)
    log = MetricsLog(run_dir / METRICS if ctx.is_main else None)
    train_stage(state.model, state.wrapped, state.optimizer, state.scheduler, data, run,
                ctx=ctx, log=log, resume=resume, progress=progress)
    finish_stage(state, folder, ctx, extra={"stage": name, "steps": plan.steps,
                                            "started_from": chain.before(name)})
    if ctx.is_main:
        started = chain.before(name) if init_from is not None else None
        results = evaluate_stage(state.model, recipe, config, name, run_dir, ctx.device,
                                 tokenizer, started_from=started)
        if results is not None:
            print_table(run_dir)
    barrier(ctx)
