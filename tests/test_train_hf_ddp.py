"""An HF model under DDP (2 gloo ranks on CPU) through the shared loop: the same losses and
weights as one process accumulating the same global batch. LLaVA-NeXT is the hard case: its
last CLIP layer and post-layernorm never reach the loss (vision_feature_layer -2), and rank
1 only ever sees batches without images, so without the frozen unreachable parameters and
the blank-image term DDP would fail or hang."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from hf_fixtures import built, model_setup
from test_train_hf_packing import doc_alone, sequences
from test_train_loop import ListBatches, _free_port

from mixdata.loading.families import family_collator
from mixdata.manifest import read_manifest
from mixdata.train.config import StageTrain, StepBudget, plan_steps
from mixdata.train.ddp import Dist, wrap_model
from mixdata.train.hf.feed import HFFeed
from mixdata.train.hf.load import load_pretrained
from mixdata.train.hf.modes import apply_modes, build_optimizer
from mixdata.train.hf.wrapper import HFTrainModel
from mixdata.train.loop import StageRun, train_stage
from mixdata.train.metrics import MetricsLog
from mixdata.train.optim import build_scheduler

STEPS = 3


def run(folder, batches, tmp, *, ctx: Dist, accumulation: int):
    seq_len = batches[0]["input_ids"].shape[1]
    spec = StageTrain(budget=StepBudget(steps=STEPS), warmup=1, lr=1e-3,
                      batch_tokens=seq_len * accumulation * ctx.world_size)
    plan = plan_steps(spec, default_micro_batch=1, seq_len=seq_len, world_size=ctx.world_size,
                      available_sequences=0)
    model = HFTrainModel(load_pretrained(folder, "sdpa"))
    apply_modes(model, spec, seed=0)
    optimizer = build_optimizer(model, spec, default_lr=1e-3)
    scheduler = build_scheduler(optimizer, spec, plan.steps)
    stage = StageRun(name="s", spec=spec, plan=plan, folder=tmp, checkpoint_every=100,
                     feed=HFFeed())
    losses = train_stage(model, wrap_model(ctx, model), optimizer, scheduler,
                         ListBatches(batches), stage, ctx=ctx, log=MetricsLog(None),
                         resume=False, progress=False)
    return losses, [p.detach().numpy().copy() for p in model.parameters()]


def _worker(rank, port, folder, tmp, batches, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        ctx = Dist(rank, 2, torch.device("cpu"))
        queue.put((rank, *run(folder, batches[rank::2], tmp / f"r{rank}", ctx=ctx,
                              accumulation=1)))
    except Exception as err:  # noqa: BLE001 - reported to the test, which fails at once
        queue.put((rank, None, repr(err)))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
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
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    procs = [context.Process(target=_worker, args=(r, port, setup.folder, tmp_path,
                                                   interleaved, queue)) for r in range(2)]
    for proc in procs:
        proc.start()
    results = {}
    try:
        while len(results) < 2:  # a rank that fails reports at once; a hang times out
            rank, losses, params = queue.get(timeout=300)
            assert losses is not None, f"rank {rank} failed: {params}"
            results[rank] = (losses, params)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert all(proc.exitcode == 0 for proc in procs)
    single, params = run(setup.folder, interleaved, tmp_path / "one", ctx=Dist(0, 1, torch.device(
        "cpu")), accumulation=2)
    assert results[0][0] == results[1][0]
    np.testing.assert_allclose(results[0][0], single, rtol=1e-5)
    for a, b in zip(results[0][1], params):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
