"""Scaling the trainer: 2 gloo ranks under DDP and FSDP2 give the losses of one process with
the same global batch; FSDP2 resumes exactly and hands over whole merged weights; activation
checkpointing recomputes without changing a bit; bf16 is really on; the block policy and the
`train.parallel` section.

Everything here runs on CPU with gloo: FSDP2's `fully_shard` works there in torch 2.13 (CPU
DeviceMesh, gloo all-gather / reduce-scatter). Nothing here says anything about NCCL speed.
"""
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from ranks import failure, free_port, on_ranks
from test_train_config import recipe_with
from test_train_loop import SEQ_LEN, ListBatches, make_batches
from test_train_model import tiny_config

from mixdata.errors import RecipeError
from mixdata.train import checkpoint as checkpoint_module
from mixdata.train.checkpoint import CHECKPOINT, load_file
from mixdata.train.config import (
    ParallelSpec,
    StageTrain,
    StepBudget,
    Trainable,
    parse_train,
    plan_steps,
)
from mixdata.train.ddp import Dist
from mixdata.train.loop import StageRun, train_stage
from mixdata.train.metrics import MetricsLog
from mixdata.train.model import VLM
from mixdata.train.parallel import blocks_of_class, is_sharded, parallelize, transformer_blocks
from mixdata.train.stage import finish_stage, start_stage

CPU = Dist(0, 1, torch.device("cpu"))
FSDP = ParallelSpec(strategy="fsdp")
LORA = Trainable(vision="frozen", connector="full", lm="lora")
# fp32, 2 ranks vs 1 process: the arithmetic is the same except the order in which the two
# ranks' gradient halves are summed (all-reduce / reduce-scatter), an fp32 rounding of ~1e-7
# relative per value; over 6 AdamW steps the losses stay within 1e-6 (measured), so 1e-5.
FP32_RTOL = 1e-5
# bf16 vs fp32: bf16 keeps 8 significant bits, a relative rounding of up to 2^-9 ≈ 2e-3 per
# operation; the loss (a mean over ~70 tokens, computed in fp32 from bf16 logits) must stay
# within that, and must differ by more than fp32 noise, or bf16 was never on.
BF16_RTOL = 2e-3


def stage_spec(steps, accumulation, world_size, trainable=None):
    return StageTrain(budget=StepBudget(steps=steps), warmup=2,
                      batch_tokens=SEQ_LEN * accumulation * world_size,
                      trainable=trainable or Trainable())


def run_stage(folder, batches, ctx, parallel, *, steps=6, accumulation=1, trainable=None,
              stop_after=None, resume=False, finish=False, on_start=None):
    """Train `steps` on `batches` (one per micro-step); `on_start(state)` sees the stage
    before its first step. Returns (losses, state, final weights path or None)."""
    spec = stage_spec(steps, accumulation, ctx.world_size, trainable)
    plan = plan_steps(spec, default_micro_batch=1, seq_len=SEQ_LEN, world_size=ctx.world_size,
                      available_sequences=0)
    state = start_stage(tiny_config(), spec, plan, seed=7, ctx=ctx, init_from=None,
                        parallel=parallel)
    if on_start is not None:
        on_start(state)
    run = StageRun(name="s", spec=spec, plan=plan, folder=Path(folder), checkpoint_every=3,
                   parallel=parallel)
    losses = train_stage(state.model, state.wrapped, state.optimizer, state.scheduler,
                         ListBatches(batches), run, ctx=ctx, log=MetricsLog(None), resume=resume,
                         stop_after=stop_after, progress=False)
    final = finish_stage(state, Path(folder), ctx, extra={}) if finish else None
    return losses, state, final


def inner_block(model):
    """The LM's first block, inside its checkpoint wrapper when it has one."""
    block = model.lm.blocks[0]
    return getattr(block, "_checkpoint_wrapped_module", block)


def watch(record: dict):
    """An on_start that records the first LM block's forward calls and output dtypes, and
    the dtypes of the gradients the optimizer steps with."""
    def on_start(state):
        record.update(calls=0, outputs=set(), grads=set())

        def count(_module, _inputs):
            # a pre-hook: the checkpoint's recompute stops early, as soon as it has rebuilt
            # the last saved tensor (this layer's input), before the layer returns
            record["calls"] += 1

        def forward_hook(_module, _inputs, output):
            record["outputs"].add(str(output.dtype))

        def step_hook(optimizer, *_):
            record["grads"] |= {str(p.grad.dtype) for g in optimizer.param_groups
                                for p in g["params"] if p.grad is not None}

        inner_block(state.model).mlp.down.register_forward_pre_hook(count)
        inner_block(state.model).mlp.down.register_forward_hook(forward_hook)
        state.optimizer.register_step_pre_hook(step_hook)
        record["params"] = str(inner_block(state.model).mlp.down.weight.dtype)
    return on_start


@contextlib.contextmanager
def slow_saves(ctx):
    """The main rank writes its checkpoints a second late (a slow file system)."""
    original = checkpoint_module.save_atomic

    def late(payload, path):
        time.sleep(1.0)
        original(payload, path)

    checkpoint_module.save_atomic = late if ctx.is_main else original
    try:
        yield
    finally:
        checkpoint_module.save_atomic = original


def _scenarios(ctx, tmp, mine) -> dict:
    out = {"ddp": run_stage(f"{tmp}/ddp", mine, ctx, ParallelSpec())[0],
           "ddp_ac": run_stage(f"{tmp}/ddp_ac", mine, ctx,
                               ParallelSpec(activation_checkpointing=True))[0],
           "fsdp": run_stage(f"{tmp}/fsdp", mine, ctx, FSDP)[0]}
    with slow_saves(ctx):   # rank 1 resumes at once: it must wait for rank 0's file
        first = run_stage(f"{tmp}/cut", mine, ctx, FSDP, stop_after=3)[0]
    out["fsdp_resumed"] = first + run_stage(f"{tmp}/cut", mine, ctx, FSDP, resume=True)[0]
    run_stage(f"{tmp}/cross", mine, ctx, ParallelSpec(), stop_after=3)   # DDP writes ...
    out["ddp_then_fsdp"] = run_stage(f"{tmp}/cross", mine, ctx, FSDP, resume=True)[0]  # FSDP reads
    both = ParallelSpec(strategy="fsdp", activation_checkpointing=True, mixed_precision="bf16")
    seen = {}
    losses, state, _ = run_stage(f"{tmp}/bf16", mine, ctx, both, steps=1, on_start=watch(seen))
    out["bf16"] = {"losses": losses, "sharded": is_sharded(state.model), **seen}
    losses, state, final = run_stage(f"{tmp}/lora", mine, ctx, FSDP, trainable=LORA, finish=True)
    out["lora"] = {"losses": losses, "whole": not is_sharded(state.model), "final": str(final)}
    return out


def _worker(rank, port, tmp, batches, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        out = _scenarios(Dist(rank, 2, torch.device("cpu")), tmp, batches[rank::2])
        results.put((rank, out))
    except BaseException:
        results.put((rank, failure()))
        raise
    finally:
        dist.destroy_process_group()


def interleaved_batches():
    """Rank r gets batches r, r+2, ...: rank 0's carry an image, rank 1's none (so under FSDP
    the blank-tile path must keep the vision units' all-gathers in step)."""
    with_images = make_batches(5, 3, rows=1)
    without = make_batches(6, 3, rows=1, with_images=False)
    return [b for pair in zip(with_images, without) for b in pair]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranks")
    batches = interleaved_batches()
    got = on_ranks(_worker, str(tmp), batches)
    return got, batches, tmp


def test_two_ranks_give_the_losses_of_one_process_under_ddp_and_fsdp(two_ranks, tmp_path):
    got, batches, _ = two_ranks
    single = run_stage(tmp_path / "one", batches, CPU, ParallelSpec(), accumulation=2)[0]
    assert got[0]["fsdp"] == got[1]["fsdp"] and got[0]["ddp"] == got[1]["ddp"]
    np.testing.assert_allclose(got[0]["ddp"], single, rtol=FP32_RTOL)
    np.testing.assert_allclose(got[0]["fsdp"], single, rtol=FP32_RTOL)
    assert single[-1] < single[0]
    assert got[0]["ddp_ac"] == got[0]["ddp"]   # checkpointed blocks under DDP: bit for bit


def test_fsdp_resumes_exactly_and_reads_a_ddp_checkpoint(two_ranks):
    got, _, tmp = two_ranks
    assert got[0]["fsdp_resumed"] == got[0]["fsdp"]   # N straight == N/2 + resume + N/2
    saved = load_file(tmp / "cut" / CHECKPOINT)
    assert saved["step"] == 6 and saved["loader"] == [{"next": 6}, {"next": 6}]
    assert "lm.blocks.0.attn.q.weight" in saved["model"]   # full tensors, plain names
    assert saved["model"]["lm.blocks.0.attn.q.weight"].shape == (32, 32)
    # a checkpoint is the same layout whichever strategy wrote it
    np.testing.assert_allclose(got[0]["ddp_then_fsdp"], got[0]["ddp"][3:], rtol=FP32_RTOL)


def test_fsdp_bf16_with_checkpointing_under_two_ranks(two_ranks, tmp_path):
    got, batches, _ = two_ranks
    bf16 = got[0]["bf16"]
    assert bf16["sharded"] and bf16["outputs"] == {"torch.bfloat16"}   # bf16 compute
    assert bf16["params"] == "torch.float32" and bf16["grads"] == {"torch.float32"}  # fp32 master
    assert bf16["calls"] == 2   # one micro-batch: forward, then the checkpoint's recompute
    fp32 = run_stage(tmp_path / "one", batches, CPU, ParallelSpec(), steps=1, accumulation=2)[0]
    np.testing.assert_allclose(bf16["losses"], fp32, rtol=BF16_RTOL)
    assert abs(bf16["losses"][0] - fp32[0]) > 1e-6 * fp32[0]   # bf16 really computed


def test_fsdp_bf16_equals_one_rank_fsdp(two_ranks, tmp_path):
    """The same arithmetic on one rank (a world-size-1 process group, so fully_shard applies):
    2 ranks differ only in the fp32 reduction order, as in the fp32 comparison. A master
    weight moved by that ~1e-7 rarely flips its bf16 cast, so losses agree far within 1e-4."""
    got, batches, _ = two_ranks
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ctx = Dist(0, 1, torch.device("cpu"))
        both = ParallelSpec(strategy="fsdp", activation_checkpointing=True,
                            mixed_precision="bf16")
        one = run_stage(tmp_path / "one", batches, ctx, both, steps=1, accumulation=2)[0]
    finally:
        dist.destroy_process_group()
    np.testing.assert_allclose(got[0]["bf16"]["losses"], one, rtol=1e-4)


def test_fsdp_lora_with_frozen_vision_hands_over_whole_merged_weights(two_ranks, tmp_path):
    got, batches, _ = two_ranks
    losses, _, final = run_stage(tmp_path / "one", batches, CPU, ParallelSpec(),
                                 accumulation=2, trainable=LORA, finish=True)
    np.testing.assert_allclose(got[0]["lora"]["losses"], losses, rtol=FP32_RTOL)
    assert got[0]["lora"]["whole"] and not got[1]["lora"]["whole"]  # gathered on rank 0 only
    sharded, single = load_file(Path(got[0]["lora"]["final"]))["model"], load_file(final)["model"]
    assert sharded.keys() == single.keys() and not any("lora" in k for k in sharded)
    for name, tensor in single.items():
        torch.testing.assert_close(sharded[name], tensor, atol=2e-5, rtol=1e-4)


def test_activation_checkpointing_recomputes_and_changes_nothing(tmp_path):
    batches = make_batches(3, 4)
    plain_calls, checkpointed_calls = {}, {}
    plain, state, _ = run_stage(tmp_path / "a", batches, CPU, ParallelSpec(), steps=2,
                                on_start=watch(plain_calls))
    checkpointed, again, _ = run_stage(tmp_path / "b", batches, CPU,
                                       ParallelSpec(activation_checkpointing=True), steps=2,
                                       on_start=watch(checkpointed_calls))
    assert checkpointed == plain                                      # recomputation is exact
    assert (plain_calls["calls"], checkpointed_calls["calls"]) == (2, 4)  # + one per step
    assert again.model.state_dict().keys() == state.model.state_dict().keys()
    assert load_file(tmp_path / "b" / CHECKPOINT)["model"].keys() == state.model.state_dict().keys()


def test_bf16_autocast_on_cpu_computes_in_bf16_with_fp32_master_weights(tmp_path):
    batches = make_batches(4, 2)
    seen = {}
    bf16 = run_stage(tmp_path / "bf16", batches, CPU, ParallelSpec(mixed_precision="bf16"),
                     steps=1, on_start=watch(seen))[0]
    fp32 = run_stage(tmp_path / "fp32", batches, CPU, ParallelSpec(), steps=1)[0]
    assert seen["outputs"] == {"torch.bfloat16"}
    assert seen["params"] == "torch.float32" and seen["grads"] == {"torch.float32"}
    np.testing.assert_allclose(bf16, fp32, rtol=BF16_RTOL)
    assert abs(bf16[0] - fp32[0]) > 1e-6 * fp32[0]


def test_block_policy_for_the_bundled_vlm_and_hf_models():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = VLM(tiny_config())
    assert transformer_blocks(model) == [*model.vision.blocks, *model.lm.blocks]
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=3, num_attention_heads=2,
                                         num_key_value_heads=2))
    found = transformer_blocks(llama)   # from LlamaPreTrainedModel._no_split_modules
    assert found == list(llama.model.layers)
    # outermost matches only: an attention module inside a matched layer is left alone
    assert blocks_of_class(llama, ["LlamaDecoderLayer", "LlamaAttention"]) == found
    wrapper = torch.nn.Module()
    wrapper.lm = llama
    wrapper.transformer_blocks = lambda: [llama.model.layers[0]]
    assert transformer_blocks(wrapper) == [llama.model.layers[0]]
    with pytest.raises(Exception, match="transformer_blocks"):
        transformer_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_fsdp_without_a_process_group_runs_the_model_whole():
    model = VLM(tiny_config())
    assert parallelize(model, CPU, FSDP) is model and not is_sharded(model)


def test_parallel_section_parses_strictly():
    config = parse_train(recipe_with({"parallel": {"strategy": "fsdp",
                                                   "activation_checkpointing": True,
                                                   "mixed_precision": "bf16"}}))
    assert config.parallel == ParallelSpec(strategy="fsdp", activation_checkpointing=True,
                                           mixed_precision="bf16")
    assert parse_train(recipe_with({})).parallel == ParallelSpec()
    for section, key, expected in [
            ({"strategy": "zero3"}, "train.parallel.strategy", "'ddp', 'fsdp'"),
            ({"mixed_precision": "fp16"}, "train.parallel.mixed_precision", "'bf16', 'none'"),
            ({"activation_checkpointing": "yes"}, "train.parallel.activation_checkpointing",
             "a boolean"),
            ({"reshard": True}, "train.parallel.reshard", "no such key")]:
        with pytest.raises(RecipeError) as info:
            parse_train(recipe_with({"parallel": section}))
        assert info.value.key == key and expected in info.value.expected, info.value


@pytest.mark.slow  # ~50 s on 2 cores: four builds, four stages on 2 ranks, five evals
def test_mixdata_train_under_torchrun_with_fsdp(tmp_path):
    """The CLI as a user runs it: torchrun, 2 gloo ranks on 127.0.0.1, FSDP2 + checkpointing;
    every stage hands whole weights to the next and is evaluated."""
    import yaml

    raw = yaml.safe_load((Path(__file__).parent.parent / "recipes" / "demo.yaml").read_text())
    for stage in raw["stages"].values():
        stage["budget"] = {"tokens": 4000}
    quick = {"budget": {"steps": 2}, "warmup": 1, "eval": {"max_examples": 3}}
    raw["train"] = {"model": "tiny", "micro_batch": 2, "checkpoint_every": 1,
                    "parallel": {"strategy": "fsdp", "activation_checkpointing": True},
                    "stages": {name: dict(quick) for name in raw["stages"]}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(free_port()), "-m", "mixdata.cli", "train", "tiny.yaml",
                "--out", "run", "--device", "cpu", "--quiet", "--workers", "1"]
    env = {**os.environ, "MIXDATA_DEMO_SCALE": "0.02", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(torchrun, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "starting from run/highres/final.pt" in done.stdout
    run = tmp_path / "run"
    assert list(json.loads((run / "eval.json").read_text())) == ["pretrain", "read", "highres", "sft"]
    saved = load_file(run / "sft" / CHECKPOINT)
    assert saved["step"] == 2 and len(saved["loader"]) == 2
    weights = load_file(run / "sft" / "final.pt")["model"]
    assert "lm.blocks.0.attn.q.weight" in weights and not any("_checkpoint" in k for k in weights)
