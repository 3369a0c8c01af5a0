"""Eval after each stage: which split, saving `eval.json` in the run folder, the table."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import MixdataError
from ..storage import write_json_atomic
from .evaluate import EvalSetup, evaluate

EVAL_FILE = "eval.json"
RUN_FILE = "run.json"


def eval_root(recipe, config) -> Path | None:
    """`train.eval_data`, else the demo corpus's held-out split when the recipe reads the
    demo corpus, else None (no eval)."""
    if config.eval_data:
        return Path(config.eval_data)
    if recipe.demo is None:
        return None
    return Path(recipe.demo.ensure()) / "eval"


def evaluate_stage(model, recipe, config, stage: str, run_dir: Path, device,
                   tokenizer) -> dict | None:
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
    record_eval(run_dir, stage, results)
    return results


def evaluate_run(run_dir: str | Path, *, stage: str = "all", device: str = "auto") -> dict:
    """Evaluate the final weights of every finished stage of a run (or only `stage`)."""
    from ..recipe import parse_recipe
    from ..tokens import load_tokenizer
    from .checkpoint import FINAL, load_weights
    from .config import parse_train
    from .ddp import pick_device
    from .model import model_config
    from .stage import init_model

    run_dir = Path(run_dir)
    try:
        saved = json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError) as err:
        raise MixdataError(f"{run_dir} is not a training run folder ({RUN_FILE}: {err})") from None
    recipe = parse_recipe(saved["recipe"], file=saved.get("recipe_file"))
    config = parse_train(recipe)
    names = list(recipe.stages) if stage == "all" else [stage]
    finished = [n for n in names if (run_dir / n / FINAL).exists()]
    if not finished:
        raise MixdataError(f"{run_dir} has no finished stage among {', '.join(names)}")
    tokenizer = load_tokenizer(recipe.tokenizer)
    target = pick_device(device)
    results = {}
    for name in finished:
        model = init_model(model_config(config.model_spec, tokenizer.vocab_size), seed=0)
        load_weights(run_dir / name / FINAL, model)
        results[name] = evaluate_stage(model.to(target), recipe, config, name, run_dir, target,
                                       tokenizer)
    return results


def record_eval(run_dir: Path, stage: str, results: dict) -> None:
    path = Path(run_dir) / EVAL_FILE
    table = json.loads(path.read_text()) if path.exists() else {}
    table[stage] = results
    write_json_atomic(path, table, sort_keys=False)  # stages in training order


def format_table(table: dict) -> str:
    """One row per stage: VQA accuracy (and chance), OCR exact match, caption loss."""
    header = f"{'stage':<12} {'VQA acc':>8} {'chance':>7} {'OCR EM':>7} {'caption loss':>13}"
    lines = [header, "-" * len(header)]
    for stage, results in table.items():
        vqa, ocr, cap = results.get("vqa", {}), results.get("ocr", {}), results.get("caption", {})
        cell = lambda d, k, fmt: format(d[k], fmt) if k in d else "-"  # noqa: E731
        lines.append(f"{stage:<12} {cell(vqa, 'accuracy', '8.3f'):>8} "
                     f"{cell(vqa, 'chance', '7.3f'):>7} {cell(ocr, 'exact_match', '7.3f'):>7} "
                     f"{cell(cap, 'loss', '13.3f'):>13}")
    return "\n".join(lines)


def print_table(run_dir: Path) -> None:
    path = Path(run_dir) / EVAL_FILE
    if path.exists():
        print(f"eval ({path}):")
        print(format_table(json.loads(path.read_text())))
