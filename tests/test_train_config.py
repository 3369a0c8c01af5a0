"""The recipe's `train:` section: strict parsing with precise errors, defaults, step plans,
the warm-up + cosine schedule, and FLOP accounting."""
import itertools
import math

import pytest
import torch

from mixdata.errors import RecipeError
from mixdata.recipe import parse_recipe
from mixdata.train.config import (
    ModelSpec,
    ModuleLR,
    StageTrain,
    StepBudget,
    Trainable,
    parse_train,
    plan_steps,
)
from mixdata.train.metrics import doc_lengths_squared, flop_model, mfu
from mixdata.train.model import VLM, model_config
from mixdata.train.optim import WarmupCosine, apply_modes, parameter_groups

BASE = {"name": "r", "seq_len": 64, "image_tokens_per_tile": 16,
        "sources": {"t": {"format": "jsonl-text", "uri": "/nowhere/*.jsonl"}},
        "stages": {"pretrain": {"mixture": {"t": 1}}, "sft": {"mixture": {"t": 1}}}}


def recipe_with(train):
    return parse_recipe({**BASE, "train": train}, file="r.yaml")


def test_minimal_section_gives_defaults_for_every_stage():
    config = parse_train(recipe_with({"model": "tiny"}))
    assert config.model_spec == ModelSpec(preset="tiny")
    sft = config.stage("sft")
    assert sft.trainable.vision == sft.trainable.lm == "full" and sft.budget is None
    assert sft.module_lr("lm", 2e-3) == 2e-3


def test_full_stage_section_parses():
    config = parse_train(recipe_with({
        "model": {"preset": "small", "connector": "perceiver", "perceiver_latents": 32},
        "micro_batch": 4,
        "stages": {"sft": {"trainable": {"vision": "frozen", "lm": "lora"}, "lora": {"rank": 16},
                           "lr": {"connector": "1e-3", "lm": 5.0e-4}, "warmup": 5,
                           "budget": {"tokens": 2.0e6}, "batch_tokens": 4096,
                           "eval": {"ocr": False, "max_examples": 50}}}}))
    sft = config.stage("sft")
    assert config.model_spec.connector == "perceiver" and sft.lora.rank == 16
    assert sft.lr == ModuleLR(connector=1e-3, lm=5e-4) and sft.module_lr("vision", 7.0) == 7.0
    assert sft.budget.tokens == 2e6 and not sft.eval.ocr


@pytest.mark.parametrize("train, key, expected", [
    ({"model": "huge"}, "train.model", "tiny"),
    ({"model": {"preset": "tiny", "lm_layers": 0}}, "train.model.lm_layers", "positive integer"),
    ({"model": {"preset": "tiny", "lm_dim": 190}}, "train.model.lm_dim", "a multiple of 8"),
    ({"stages": {"sft": {"trainable": {"lm": "half"}}}}, "train.stages.sft.trainable.lm", "lora"),
    ({"stages": {"sft": {"lrr": 1}}}, "train.stages.sft.lrr", "no such key"),
    ({"stages": {"finetune": {}}}, "train.stages.finetune", "a stage defined under stages"),
    ({"stages": {"sft": {"budget": {"steps": 5, "tokens": 9}}}}, "train.stages.sft.budget",
     "exactly one of steps, tokens"),
    ({"stages": {"sft": {"budget": {"steps": 0}}}}, "train.stages.sft.budget.steps", "positive"),
    ({"micro_batch": 0}, "train.micro_batch", "positive"),
    ({"stages": {"sft": {"min_lr_ratio": 2}}}, "train.stages.sft.min_lr_ratio", "from 0 to 1"),
])
def test_errors_name_the_key_and_what_was_expected(train, key, expected):
    with pytest.raises(RecipeError) as info:
        parse_train(recipe_with(train))
    assert info.value.key == key and expected in info.value.expected
    assert "r.yaml" in str(info.value)


def test_step_plans_from_budgets():
    stage = StageTrain(batch_tokens=4096)
    plan = plan_steps(stage, default_micro_batch=4, seq_len=512, world_size=1, available_sequences=100)
    assert (plan.accumulation, plan.tokens_per_step, plan.steps) == (2, 4096, 12)  # one pass
    by_tokens = StageTrain(batch_tokens=4096, budget=StepBudget(tokens=10_000))
    assert plan_steps(by_tokens, default_micro_batch=4, seq_len=512, world_size=2,
                      available_sequences=0).steps == math.ceil(10_000 / 4096)
    assert plan_steps(StageTrain(budget=StepBudget(steps=7)), default_micro_batch=4, seq_len=512,
                      world_size=1, available_sequences=0).steps == 7


def test_warmup_then_cosine_to_the_floor():
    schedule = WarmupCosine(warmup=4, total=20, min_ratio=0.1)
    values = [schedule(s) for s in range(21)]
    assert values[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8]) and values[4] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(values[4:]))
    assert values[20] == pytest.approx(0.1)


def test_modes_decide_groups_and_flops():
    config = model_config(ModelSpec(preset="tiny"), 300)
    model = VLM(config)
    apply_modes(model, StageTrain(), seed=0)
    full = flop_model(model)
    assert (full.vision_factor, full.connector_factor, full.lm_factor) == (6, 6, 6)
    names = {g["name"] for g in parameter_groups(model, StageTrain(), 1e-3)}
    assert names == {"vision", "vision.no_decay", "connector", "connector.no_decay", "lm", "lm.no_decay"}
    partial = StageTrain(trainable=Trainable(vision="frozen", connector="full", lm="lora"))
    frozen = VLM(config)
    apply_modes(frozen, partial, seed=0)
    counted = flop_model(frozen)
    # vision runs forward only; the connector trains fully; LoRA needs activation grads only
    assert (counted.vision_factor, counted.connector_factor, counted.lm_factor) == (2, 6, 4)
    assert {g["name"] for g in parameter_groups(frozen, partial, 1e-3)} == {
        "connector", "connector.no_decay", "lm"}
    layers = (torch.nn.Linear, torch.nn.Conv2d)
    matrices = lambda m: sum(x.weight.numel() for x in m.modules() if isinstance(x, layers))  # noqa: E731
    patches, views = 64, 10
    layers_v, dim_v = config.vision.layers, config.vision.dim
    vision = views * patches * (2 * matrices(frozen.vision) + 2 * 2 * layers_v * dim_v * patches)
    connector = views * 16 * 6 * matrices(frozen.connector)
    assert counted.step_flops(views=views, tile=64, doc_lengths_sq=0, tokens=0) == vision + connector
    lm_only = counted.step_flops(views=0, tile=64, doc_lengths_sq=100.0, tokens=10)
    adapters = sum(p.numel() for n, p in frozen.lm.named_parameters() if "lora" in n)
    lm_weights = matrices(frozen.lm) + adapters   # the tied head counts once, as a matmul
    assert lm_only == 10 * 4 * lm_weights + 6 * 2 * 4 * 256 * 50
    assert mfu(1e12, 1.0, None, 1) is None and mfu(5e11, 1.0, 1e12, 1) == 0.5


def test_doc_lengths_squared():
    doc_ids = torch.tensor([[0, 0, 0, 1, -1], [0, 1, 1, 2, 2]])
    assert doc_lengths_squared(doc_ids) == 9 + 1 + 1 + 4 + 4
