"""Eval after each stage: which split, saving `eval.json` in the run folder, the tables.

`eval.json` maps each stage to its results ({"vqa": ..., "ocr": ..., "caption": ...}) and
`started_from`, the stage whose weights it started from (None: a fresh initialisation), so a
run with a skipped stage says so in its own table.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import MixdataError
from ..storage import write_json_atomic
from .evaluate import EvalSetup, evaluate
from .lineage import RUN_FILE, read_run_file, saved_chain

EVAL_FILE = "eval.json"
__all__ = ["EVAL_FILE", "RUN_FILE", "compare_runs", "evaluate_run", "evaluate_stage",
           "format_table", "print_table", "record_eval"]


def eval_root(recipe, config) -> Path | None:
    """`train.eval_data`, else the demo corpus's held-out split when the recipe reads the
    demo corpus, else None (no eval)."""
    if config.eval_data:
        return Path(config.eval_data)
    if recipe.demo is None:
        return None
    return Path(recipe.demo.ensure()) / "eval"


def evaluate_stage(model, recipe, config, stage: str, run_dir: Path, device, tokenizer, *,
                   started_from: str | None = None) -> dict | None:
    """Evaluate `model` as trained by `stage`, record it in eval.json; None when no split."""
    root = eval_root(recipe, config)
    spec = config.stage(stage).eval
    tasks = tuple(t for t in ("vqa", "ocr", "caption") if getattr(spec, t))
    if root is None or not tasks:
        return None
    setup = EvalSetup(tokenizer=tokenizer, policy=recipe.stages[stage].image,
                      tokens_per_tile=recipe.image_tokens_per_tile,
                      seq_len=recipe.stage_seq_len(stage), device=device,
                      batch_size=spec.batch_size)
    results = evaluate(model, setup, root, tasks=tasks, limit=spec.max_examples)
    results["started_from"] = started_from
    record_eval(run_dir, stage, results)
    return results


def evaluate_run(run_dir: str | Path, *, stage: str = "all", device: str = "auto") -> dict:
    """Evaluate the final weights of every finished stage of a run (or only `stage`)."""
    from ..tokens import load_tokenizer
    from .checkpoint import FINAL
    from .config import parse_train
    from .ddp import pick_device

    run_dir = Path(run_dir)
    saved, recipe = run_recipe(run_dir)
    chain = saved_chain(saved, list(recipe.stages))
    config = parse_train(recipe)
    names = list(chain.stages) if stage == "all" else [stage]
    finished = [n for n in names if (run_dir / n / FINAL).exists()]
    if not finished:
        raise MixdataError(f"{run_dir} has no finished stage among {', '.join(names)}")
    tokenizer = load_tokenizer(recipe.tokenizer)
    target = pick_device(device)
    results = {}
    for name in finished:
        model = trained_model(config, tokenizer, run_dir / name / FINAL)
        started = chain.before(name) if name in chain.stages else None
        results[name] = evaluate_stage(model.to(target), recipe, config, name, run_dir, target,
                                       tokenizer, started_from=started)
    return results


def run_recipe(run_dir: Path):
    """(run.json's contents, the recipe it trained) of a run folder."""
    from ..recipe import parse_recipe

    saved = _run_file(run_dir)
    return saved, parse_recipe(saved["recipe"], file=saved.get("recipe_file"))


def initial_seed(run_dir: Path) -> int:
    """The seed a run folder's first stage drew its initial weights from."""
    from .lineage import saved_seeds

    saved, recipe = run_recipe(run_dir)
    chain = saved_chain(saved, list(recipe.stages))
    return saved_seeds(saved, chain)[chain.stages[0]]


def load_stage(run_dir: Path, stage: str):
    """(recipe, tokenizer, model with the stage's final weights) of a run folder: what the
    probes in tools/ read."""
    from ..tokens import load_tokenizer
    from .checkpoint import FINAL
    from .config import parse_train

    _, recipe = run_recipe(run_dir)
    tokenizer = load_tokenizer(recipe.tokenizer)
    return recipe, tokenizer, trained_model(parse_train(recipe), tokenizer,
                                            run_dir / stage / FINAL)


def open_probe(description: str, stage: str, limit: int, limit_help: str):
    """The command line of a probe in tools/ (a run folder, `--stage`, `--limit`): (args,
    recipe, tokenizer, the stage's model, the demo's eval folder). Errors exit as usage."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("run", type=Path, help="a run folder written by `mixdata train`")
    parser.add_argument("--stage", default=stage, help="whose final weights to probe")
    parser.add_argument("--limit", type=int, default=limit, help=limit_help)
    args = parser.parse_args()
    try:
        recipe, tokenizer, model = load_stage(args.run, args.stage)
    except MixdataError as err:
        parser.error(str(err))
    return args, recipe, tokenizer, model, Path(recipe.demo.ensure()) / "eval"


def stage_setup(recipe, tokenizer, stage: str) -> EvalSetup:
    """Eval rendering as stage `stage` saw its images, on the CPU."""
    import torch

    return EvalSetup(tokenizer=tokenizer, policy=recipe.stages[stage].image,
                     tokens_per_tile=recipe.image_tokens_per_tile,
                     seq_len=recipe.stage_seq_len(stage), device=torch.device("cpu"))


def untrained_model(config, tokenizer, seed: int = 0):
    """The built-in VLM of `config` at its initial weights for `seed`, in eval mode: what a
    probe of trained weights is measured against."""
    from .model import model_config
    from .stage import init_model

    return init_model(model_config(config.model_spec, tokenizer.vocab_size), seed=seed).eval()


def trained_model(config, tokenizer, weights: Path):
    """The built-in VLM of `config` with a stage's saved weights, in eval mode."""
    from .checkpoint import load_weights

    if not weights.exists():
        raise MixdataError(f"no weights at {weights}: that stage has not finished; train it "
                           f"(mixdata train RECIPE --out {weights.parent.parent}) or pick "
                           f"another stage")
    model = untrained_model(config, tokenizer)
    load_weights(weights, model)
    return model


def _run_file(run_dir: Path) -> dict:
    try:
        saved = read_run_file(run_dir)
    except MixdataError as err:
        raise MixdataError(f"{run_dir} is not a training run folder ({err})") from None
    if saved is None:
        raise MixdataError(f"{run_dir} is not a training run folder (no {RUN_FILE})")
    return saved


def record_eval(run_dir: Path, stage: str, results: dict) -> None:
    path = Path(run_dir) / EVAL_FILE
    table = json.loads(path.read_text()) if path.exists() else {}
    table[stage] = results
    write_json_atomic(path, table, sort_keys=False)  # stages in training order


def _cell(results: dict, task: str, key: str, width: int) -> str:
    value = results.get(task, {}).get(key)
    return f"{value:{width}.3f}" if value is not None else f"{'-':>{width}}"


COLUMNS = (("VQA acc", "vqa", "accuracy"), ("chance", "vqa", "chance"),
           ("OCR EM", "ocr", "exact_match"), ("OCR tok", "ocr", "token_accuracy"),
           ("caption loss", "caption", "loss"), ("shuffled imgs", "caption", "shuffled_loss"))


def format_table(table: dict) -> str:
    """One row per stage: what it started from, VQA accuracy (and chance), OCR exact match and
    token accuracy, caption loss with the true images and with the images shuffled among the
    captions; then VQA accuracy by question kind, for stages whose eval reports it."""
    header = f"{'stage':<12} {'from':<12}" + "".join(f" {name}" for name, _, _ in COLUMNS)
    lines = [header, "-" * len(header)]
    for stage, results in table.items():
        origin = results.get("started_from") or "-"
        cells = "".join(" " + _cell(results, task, key, len(name)) for name, task, key in COLUMNS)
        lines.append(f"{stage:<12} {origin:<12}{cells}")
    by_kind = [(stage, r["vqa"]["by_kind"]) for stage, r in table.items()
               if r.get("vqa", {}).get("by_kind")]
    if by_kind:
        lines.append("VQA accuracy by question kind (chance):")
        lines += [f"{stage:<12} " + "  ".join(f"{kind} {m['accuracy']:.3f} ({m['chance']:.2f})"
                                             for kind, m in kinds.items())
                  for stage, kinds in by_kind]
    return "\n".join(lines)


def print_table(run_dir: Path) -> None:
    path = Path(run_dir) / EVAL_FILE
    if path.exists():
        print(f"eval ({path}):")
        print(format_table(json.loads(path.read_text())))


METRICS = (("VQA accuracy", ("vqa", "accuracy")), ("VQA chance", ("vqa", "chance")),
           ("OCR exact match", ("ocr", "exact_match")),
           ("OCR token accuracy", ("ocr", "token_accuracy")),
           ("caption loss", ("caption", "loss")),
           ("caption loss, shuffled images", ("caption", "shuffled_loss")))


def metric_rows(results: list[dict]) -> list[tuple[str, tuple[str, ...]]]:
    """METRICS, with VQA accuracy by question kind after VQA chance for the kinds any of
    `results` reports (chance per kind in brackets would crowd the table; eval.json has it)."""
    kinds = sorted({k for r in results for k in r.get("vqa", {}).get("by_kind", {})})
    by_kind = [(f"VQA accuracy, {kind}", ("vqa", "by_kind", kind, "accuracy")) for kind in kinds]
    return [*METRICS[:2], *by_kind, *METRICS[2:]]


def _lookup(results: dict, path: tuple[str, ...]):
    for key in path:
        results = results.get(key, {}) if isinstance(results, dict) else {}
    return results if isinstance(results, (int, float)) else None


def compare_runs(run_dirs: list[str | Path]) -> str:
    """Runs side by side, after each one's last evaluated stage: its chain of stages, then
    one row per metric; with two runs, a last column holds the first minus the second."""
    columns = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        saved = _run_file(run_dir)
        path = run_dir / EVAL_FILE
        table = json.loads(path.read_text()) if path.exists() else {}
        chain = saved_chain(saved, list(table))
        done = [s for s in chain.stages if s in table]
        if not done:
            raise MixdataError(f"{run_dir} has no evaluated stage ({path})")
        columns.append((str(run_dir), " > ".join(chain.stages), table[done[-1]]))
    width = max(24, *(len(c[0]) for c in columns), *(len(c[1]) for c in columns))
    metrics = metric_rows([c[2] for c in columns])
    names = max(len(m[0]) for m in metrics)
    diff = len(columns) == 2
    lines = [f"{'run':<{names}}" + "".join(f"  {c[0]:>{width}}" for c in columns)
             + ("  difference" if diff else ""),
             f"{'stages':<{names}}" + "".join(f"  {c[1]:>{width}}" for c in columns)]
    lines.append("-" * len(lines[0]))
    for label, path in metrics:
        values = [_lookup(c[2], path) for c in columns]
        row = f"{label:<{names}}" + "".join(
            f"  {v:>{width}.3f}" if v is not None else f"  {'-':>{width}}" for v in values)
        if diff and None not in values:
            row += f"  {values[0] - values[1]:+10.3f}"
        lines.append(row)
    return "\n".join(lines)
