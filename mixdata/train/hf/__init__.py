"""Real models in the bundled trainer: HF VLM folders and composed tower + LM models.

- `spec`: `train.model` as `{hf: DIR}` or `{vision: DIR, lm: DIR, connector: {...}}` (pure);
- `arch`: per architecture (Idefics3, SmolVLM, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, InternVL,
  mixdata's composed `mixdata_vlm`): dialect family, vision / connector / LM parameter names, vision
  geometry;
- `composed`: the composed model as a transformers model (registered with the auto classes);
- `load`: folders (local or fsspec) -> models, the attention implementation;
- `wrapper`: `HFTrainModel`, the loop's view of an HF model; `modes`: trainable / LoRA / lr
  per module; `check`: shards against the model; `feed`: the loop's batch feed and FLOPs;
  `export`: a stage's `final/`; `run`: `train_hf`, the stages of a recipe.

transformers is needed (`pip install mixdata[hf]`); nothing here imports it until used.
"""
from __future__ import annotations

from ...lazy import lazy_exports

__all__ = ["HFTrainModel", "load_composed", "train_hf"]

__getattr__ = lazy_exports(__name__, {"HFTrainModel": ".wrapper", "load_composed": ".composed",
                                      "train_hf": ".run"})
