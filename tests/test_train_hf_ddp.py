"""An HF model under DDP and FSDP2 (2 gloo ranks on CPU) through the shared loop: the same losses and
weights as one process accumulating the same global batch. LLaVA-NeXT is the hard case: its
last CLIP layer and post-layernorm never reach the loss (vision_feature_layer -2), and rank
1 only ever sees batches without images, so without the frozen unreachable parameters and
the blank-image term DDP would fail or hang."""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from hf_fixtures import built, model_setup, setup_recipe
from ranks import failure, on_ranks
from test_train_hf import SFT, generate_on, losses, weights
from test_train_hf_packing import doc_alone, sequences
from test_train_loop import ListBatches
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from mixdata.loading.families import family_collator
from mixdata.manifest import read_manifest
from mixdata.train.config import ParallelSpec, StageTrain, StepBudget, plan_steps
from mixdata.train.ddp import Dist
from mixdata.train.hf.feed import HFFeed
from mixdata.train.hf.load import load_pretrained
from mixdata.train.hf.modes import apply_modes, build_optimizer
from mixdata.train.hf.wrapper import HFTrainModel
from mixdata.train.loop import StageRun, train_stage
from mixdata.train.metrics import MetricsLog
from mixdata.train.optim import build_scheduler
from mixdata.train.parallel import parallelize
from mixdata.train.run import train_recipe

STEPS = 3


def run(folder, batches, tmp, *, ctx: Dist, accumulation: int, strategy: str = "ddp"):
    seq_len = batches[0]["input_ids"].shape[1]
    spec = StageTrain(budget=StepBudget(steps=STEPS), warmup=1, lr=1e-3,
                      batch_tokens=seq_len * accumulation * ctx.world_size)
    plan = plan_steps(spec, default_micro_batch=1, seq_len=seq_len, world_size=ctx.world_size,
                      available_sequences=0)
    model = HFTrainModel(load_pretrained(folder, "sdpa"))
    apply_modes(model, spec, seed=0)
    wrapped = parallelize(model, ctx, ParallelSpec(strategy=strategy, mixed_precision="none"))
    optimizer = build_optimizer(model, spec, default_lr=1e-3)
    scheduler = build_scheduler(optimizer, spec, plan.steps)
    stage = StageRun(name="s", spec=spec, plan=plan, folder=tmp, checkpoint_every=100,
                     feed=HFFeed(), parallel=ParallelSpec(strategy=strategy))
    losses = train_stage(model, wrapped, optimizer, scheduler,
                         ListBatches(batches), stage, ctx=ctx, log=MetricsLog(None),
                         resume=False, progress=False)
    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                   cpu_offload=True))
    return losses, {name: tensor.numpy().copy() for name, tensor in weights.items()}


def _worker(rank, port, folder, tmp, batches, strategy, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        ctx = Dist(rank, 2, torch.device("cpu"))
        queue.put((rank, run(folder, batches[rank::2], tmp / f"r{rank}", ctx=ctx,
                             accumulation=1, strategy=strategy)))
    except BaseException:
        queue.put((rank, failure()))
        raise
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_ranks_match_one_process(strategy, tmp_path):
    setup = model_setup("llava-next", tmp_path / "model")
    out = built(setup, tmp_path)
    collator = family_collator("llava-next", read_manifest(out), str(out))
    seqs = sequences(out)
    with_images = [collator.collate([collator.cut(s)]) for s in seqs if s.images][:STEPS]
    text = [collator.collate([collator.cut(doc_alone(s, d))]) for s in seqs
            for d in range(len(s.docs) - 1)
            if not any(m["doc"] == d for m in s.meta["images"])][:STEPS]
    assert len(with_images) == len(text) == STEPS
    interleaved = [b for pair in zip(with_images, text) for b in pair]
    results = on_ranks(_worker, setup.folder, tmp_path, interleaved, strategy)
    single, params = run(setup.folder, interleaved, tmp_path / "one", ctx=Dist(0, 1, torch.device(
        "cpu")), accumulation=2)
    assert results[0][0] == results[1][0]
    np.testing.assert_allclose(results[0][0], single, rtol=1e-5)
    assert results[0][1].keys() == params.keys()
    for name, value in params.items():
        np.testing.assert_allclose(results[0][1][name], value, atol=2e-5, rtol=1e-4,
                                   err_msg=name)


def _recipe_worker(rank, port, recipe, out, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    try:
        train_recipe(recipe, out=out, device="cpu", progress=False)
        queue.put((rank, True))
    except BaseException:
        queue.put((rank, failure()))
        raise


@pytest.mark.slow
def test_fsdp_stages_of_an_hf_model_equal_ddp_and_export_whole(tmp_path, monkeypatch):
    """`train_recipe` on SmolVLM on 2 gloo ranks: FSDP2 + activation checkpointing gives
    DDP's losses and weights through the whole pipeline (shards, family collate, stages),
    and each stage's `final/` is the whole model gathered from the shards, which reloads and
    generates. (One process against 2 ranks with canned batches: the test above.)"""
    monkeypatch.chdir(tmp_path)  # shards/<recipe>/<stage> under the test's folder
    setup = model_setup("smolvlm", tmp_path / "model")
    # sft trains the LM alone: a rank without images still passes the frozen tower's units
    lm_only = {"trainable": {"vision": "frozen", "connector": "frozen", "lm": "lora"},
               "lora": SFT["lora"], "lr": {"lm": 2e-3}}
    recipe = setup_recipe(setup, tmp_path, steps=3, train_stages={"sft": lm_only})
    runs = {}
    for strategy in ("ddp", "fsdp"):
        runs[strategy] = tmp_path / strategy
        on_ranks(_recipe_worker, replace(recipe, train={**recipe.train, "parallel": {
            "strategy": strategy, "activation_checkpointing": strategy == "fsdp"}}),
            runs[strategy])
    ddp, fsdp = runs["ddp"], runs["fsdp"]
    assert len(losses(fsdp)) == 6
    np.testing.assert_allclose([loss for *_, loss in losses(fsdp)],
                               [loss for *_, loss in losses(ddp)], rtol=1e-4)
    for stage in ("pretrain", "sft"):
        a, b = weights(ddp / stage / "final"), weights(fsdp / stage / "final")
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-3, msg=name)
    generate_on(fsdp / "sft" / "final", setup, "smolvlm")
