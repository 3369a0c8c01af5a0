"""The bundled trainer: a small VLM (ViT + connector + decoder LM) run over a recipe's stages.

`train_recipe(recipe, ...)` trains every stage on the shards the recipe builds (building
missing ones first) and evaluates each; `evaluate_run(run_dir)` re-evaluates a run. The
trainer reads data through `mixdata.load` like any user; the core never imports it.

Modules: `config` (the recipe's `train:` section), `vision` / `connector` / `lm` / `model`
(the network and its presets), `attention` (document-isolated attention), `lora`, `optim`,
`loop` (one stage's steps), `stage` (set-up and hand-over), `checkpoint`, `metrics` and
`flops` (throughput, MFU), `ddp` (process group), `parallel` (FSDP2 / DDP, activation
checkpointing, bf16), `data`, `batch`, `evaluate`, `report`, `run`; `hf` (real models: HF
VLM folders and composed vision tower + LM, `train.model: {hf: ...}` / `{vision: ..., lm:
...}`).
"""
from __future__ import annotations

from ..lazy import lazy_exports

__all__ = ["evaluate_run", "train_recipe"]


# Lazy: importing mixdata.train.config must not pull in the whole trainer.
__getattr__ = lazy_exports(__name__, {"train_recipe": ".run", "evaluate_run": ".report"})
