"""The trainer's configuration: the recipe's `train:` section, parsed strictly.

```yaml
train:
  model: tiny                     # a preset, or {preset: tiny, lm_dim: 192, connector: mlp, ...}
  micro_batch: 8                  # sequences per forward pass, per rank
  checkpoint_every: 100           # optimizer steps between checkpoints
  parallel:                       # how torchrun's ranks share the model (defaults shown)
    strategy: ddp                 # ddp: replicate, all-reduce grads | fsdp: FSDP2 fully_shard
    activation_checkpointing: false   # recompute each transformer block in backward
    mixed_precision: auto         # auto: bf16 on CUDA, fp32 elsewhere | bf16 | none
  stages:                         # one entry per recipe stage; missing stages use defaults
    sft:
      trainable: {vision: frozen, connector: full, lm: lora}
      lora: {rank: 8, alpha: 16}
      lr: {vision: 1.0e-4, connector: 1.0e-3, lm: 5.0e-4}   # or one number for all
      warmup: 20                  # optimizer steps of linear warm-up
      min_lr_ratio: 0.1           # cosine decays to lr * min_lr_ratio
      budget: {steps: 300}        # or {tokens: 2.0e6} (sequence slots); default one pass
      batch_tokens: 16384         # global tokens per optimizer step (sequence slots)
      weight_decay: 0.01
      eval: {vqa: true, ocr: true, caption: true, max_examples: 200}
```

Everything has a default, so `train: {model: tiny}` trains every stage of the recipe.
`batch_tokens` fixes gradient accumulation: micro_batch × seq_len × ranks × accumulation.

Real models (`mixdata.train.hf`, needs the `hf` extra):
- `model: {hf: DIR}`: an HF VLM folder (Idefics3/SmolVLM, LLaVA-NeXT, Qwen2-VL/Qwen2.5-VL,
  InternVL; local or any fsspec URL), trained on shards built with that model's tokenizer
  folder as `tokenizer:` (its dialect). Optional `attention` (auto, sdpa, flex_attention,
  flash_attention_2, eager) and `lr` (the learning rate of stages that name none, 1e-4).
- `model: {vision: DIR, lm: DIR, connector: {kind: pixel_shuffle, shuffle: 2}}`: an HF
  vision tower (SigLIP, SigLIP2, CLIP) and causal LM (Llama, Qwen2, SmolLM2) joined by
  mixdata's connector (or `{kind: mlp}`, LLaVA's MLP per patch, or `{kind: perceiver,
  latents: 64}`), on idefics3-dialect shards (`tokenizer: {path: LM_DIR, add_tokens: true}`
  with an `idefics3` image preset).
- `trainable` and `lr` name the same three modules, mapped onto each architecture's own
  vision tower, connector (projector / merger) and language model (with its head).
- Each stage's `final/` is a `save_pretrained` folder (tokenizer and processor included,
  LoRA merged) that `AutoModelForImageTextToText.from_pretrained` opens; the next stage
  starts from it.

`parallel` (see `mixdata/train/parallel.py`):
- `strategy: fsdp` shards parameters, gradients and optimizer state over the ranks with
  FSDP2 (`torch.distributed.fsdp.fully_shard`), one unit per transformer block plus the
  root; `ddp` keeps a full replica per rank. Under one process without torchrun both run
  the model unsharded. Checkpoints are full state dicts keyed by parameter name, the same
  whichever strategy wrote them, so a run may resume under the other strategy.
- `activation_checkpointing: true` keeps only each block's input in the forward pass and
  recomputes the block in backward: less activation memory for ~1/3 more compute.
- `mixed_precision: bf16` computes in bfloat16 with fp32 master weights and optimizer
  state: torch.autocast under DDP or one process, FSDP2's `MixedPrecisionPolicy`
  (bf16 parameters in forward and backward, fp32 gradient reduction) under FSDP. `none`
  computes in fp32; `auto` is bf16 on CUDA and fp32 elsewhere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..config import Invalid, parse
from ..errors import MixdataError, RecipeError
from .hf.spec import ComposedModelSpec, HFModelSpec, real_model_spec

MODULES = ("vision", "connector", "lm")
Mode = Literal["frozen", "full", "lora"]


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Which architecture to build: a size preset and the choices a recipe may override."""

    preset: Literal["tiny", "small", "base"] = "tiny"
    connector: Literal["pixel_shuffle", "mlp", "perceiver"] | None = None  # None: the preset's
    perceiver_latents: int | None = None  # tokens per tile of the perceiver resampler
    attention: Literal["auto", "sdpa", "flex"] = "auto"
    # scale of the vision tower's fixed sin-cos position code (`mixdata.train.vision`); None:
    # the preset's
    vision_position: float | None = None
    # the language model's width, depth and SwiGLU hidden size; None: the preset's
    lm_dim: int | None = None
    lm_layers: int | None = None
    lm_ffn: int | None = None

    def __post_init__(self) -> None:
        for key in ("perceiver_latents", "lm_dim", "lm_layers", "lm_ffn"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise Invalid(key, value, "a positive integer")
        if self.lm_dim is not None:
            from .model import PRESETS  # here, not at the top: model.py imports this module
            heads = PRESETS[self.preset].lm.heads
            if self.lm_dim % (2 * heads):
                raise Invalid("lm_dim", self.lm_dim,
                              f"a multiple of {2 * heads} (the {self.preset} preset's {heads} "
                              "heads, each of an even size for its rotary code)")
        if self.vision_position is not None and self.vision_position < 0:
            raise Invalid("vision_position", self.vision_position, "a scale >= 0 (0: none)")

    @property
    def label(self) -> str:
        """The preset, with the overrides the recipe sets: `tiny (vision_position 0.5)`."""
        names = ("connector", "perceiver_latents", "vision_position", "lm_dim", "lm_layers",
                 "lm_ffn")
        overrides = [f"{name} {getattr(self, name)}" for name in names
                     if getattr(self, name) is not None]
        return f"{self.preset} ({', '.join(overrides)})" if overrides else self.preset


@dataclass(frozen=True, kw_only=True)
class Trainable:
    vision: Mode = "full"
    connector: Mode = "full"
    lm: Mode = "full"


@dataclass(frozen=True, kw_only=True)
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise Invalid("rank", self.rank, "a positive integer")


@dataclass(frozen=True, kw_only=True)
class ModuleLR:
    vision: float | None = None
    connector: float | None = None
    lm: float | None = None


@dataclass(frozen=True, kw_only=True)
class StepBudget:
    """How long a stage trains: optimizer steps, or tokens counted as sequence slots."""

    steps: int | None = None
    tokens: float | None = None

    def __post_init__(self) -> None:
        given = [(k, v) for k, v in (("steps", self.steps), ("tokens", self.tokens))
                 if v is not None]
        if len(given) != 1:
            raise Invalid("", dict(given), "exactly one of steps, tokens")
        if given[0][1] <= 0:
            raise Invalid(given[0][0], given[0][1], "a positive budget")


@dataclass(frozen=True, kw_only=True)
class EvalSpec:
    vqa: bool = True
    ocr: bool = True
    caption: bool = True
    max_examples: int | None = 200     # per task; None: the whole split
    batch_size: int = 16


@dataclass(frozen=True, kw_only=True)
class StageTrain:
    trainable: Trainable = field(default_factory=Trainable)
    lora: LoraSpec = field(default_factory=LoraSpec)
    lr: float | ModuleLR | None = None   # None: the preset's learning rate
    warmup: int = 10
    min_lr_ratio: float = 0.1
    budget: StepBudget | None = None           # None: one pass over the stage's shards
    batch_tokens: int | None = None            # None: one micro-batch per rank per step
    micro_batch: int | None = None             # None: the top-level micro_batch
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    eval: EvalSpec = field(default_factory=EvalSpec)

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise Invalid("warmup", self.warmup, "a non-negative number of steps")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise Invalid("min_lr_ratio", self.min_lr_ratio, "a number from 0 to 1")
        if self.batch_tokens is not None and self.batch_tokens <= 0:
            raise Invalid("batch_tokens", self.batch_tokens, "a positive number of tokens")
        if self.micro_batch is not None and self.micro_batch <= 0:
            raise Invalid("micro_batch", self.micro_batch, "a positive integer")
        if isinstance(self.lr, float) and self.lr <= 0:
            raise Invalid("lr", self.lr, "a positive learning rate")

    def module_lr(self, module: str, default: float) -> float:
        if isinstance(self.lr, ModuleLR):
            value = getattr(self.lr, module)
            return default if value is None else value
        return default if self.lr is None else self.lr


@dataclass(frozen=True, kw_only=True)
class ParallelSpec:
    """How the ranks torchrun starts share the model (module docstring, `parallel:`)."""

    strategy: Literal["ddp", "fsdp"] = "ddp"
    activation_checkpointing: bool = False
    mixed_precision: Literal["auto", "bf16", "none"] = "auto"


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    model: Literal["tiny", "small", "base"] | ModelSpec | HFModelSpec | ComposedModelSpec = "tiny"
    micro_batch: int = 8
    checkpoint_every: int = 100
    seed: int | None = None          # None: the recipe's seed
    eval_data: str | None = None     # folder with vqa/ocr/captions.jsonl; None: the demo split
    parallel: ParallelSpec = field(default_factory=ParallelSpec)
    stages: dict[str, StageTrain] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.micro_batch <= 0:
            raise Invalid("micro_batch", self.micro_batch, "a positive integer")
        if self.checkpoint_every <= 0:
            raise Invalid("checkpoint_every", self.checkpoint_every, "a positive number of steps")

    @property
    def real_model(self) -> bool:
        """A real (HF) model rather than a built-in preset: `mixdata.train.hf` trains it."""
        return isinstance(self.model, (HFModelSpec, ComposedModelSpec))

    @property
    def model_spec(self) -> ModelSpec:
        """The built-in preset's spec (not defined for a real model)."""
        if self.real_model:
            raise MixdataError(f"train.model is a real model ({self.model.label}), not a "
                               "built-in preset; the held-out eval runs for the presets only")
        return self.model if isinstance(self.model, ModelSpec) else ModelSpec(preset=self.model)

    @property
    def model_label(self) -> str:
        return self.model.label if self.real_model else self.model_spec.label

    def stage(self, name: str) -> StageTrain:
        return self.stages.get(name, StageTrain())


def parse_train(recipe) -> TrainConfig:
    """The recipe's `train:` section as a TrainConfig; unknown stages are errors."""
    raw = dict(recipe.train or {})
    real = real_model_spec(raw.get("model"))
    if real is not None:  # parsed on its own, so an error names its keys, not a preset's
        raw["model"] = parse(real, raw["model"], "train.model", recipe.file)
    config = parse(TrainConfig, raw, "train", recipe.file)
    for name in config.stages:
        if name not in recipe.stages:
            raise RecipeError(f"train.stages.{name}", name,
                              "a stage defined under stages: " + ", ".join(recipe.stages),
                              file=recipe.file)
    return config


@dataclass(frozen=True)
class StepPlan:
    """How one stage turns its budget into optimizer steps."""

    steps: int
    micro_batch: int
    accumulation: int
    world_size: int
    seq_len: int

    @property
    def sequences_per_step(self) -> int:
        return self.micro_batch * self.accumulation * self.world_size

    @property
    def tokens_per_step(self) -> int:
        return self.sequences_per_step * self.seq_len


def plan_steps(stage: StageTrain, *, default_micro_batch: int, seq_len: int, world_size: int,
               available_sequences: int) -> StepPlan:
    """Accumulation from `batch_tokens`, and the step count from the budget.

    Without a budget the stage makes one pass over its shards: the sequences available,
    rounded down to whole optimizer steps (at least one).
    """
    micro = stage.micro_batch or default_micro_batch
    per_pass = micro * seq_len * world_size
    accumulation = 1 if stage.batch_tokens is None else max(1, round(stage.batch_tokens / per_pass))
    tokens_per_step = per_pass * accumulation
    if stage.budget is None:
        steps = max(1, available_sequences // (micro * world_size * accumulation))
    elif stage.budget.steps is not None:
        steps = stage.budget.steps
    else:
        steps = max(1, math.ceil(stage.budget.tokens / tokens_per_step))
    return StepPlan(steps=steps, micro_batch=micro, accumulation=accumulation,
                    world_size=world_size, seq_len=seq_len)
