"""The training loop on contract batches: exact resume, loss normalisation across
accumulation and ranks, zero-supervision errors, stage hand-over, and 2-process DDP (gloo)."""
import os

import numpy as np
import pytest
import torch
from ranks import failure, on_ranks
from test_train_model import SPEC, make_doc, tiny_config

from mixdata.errors import MixdataError
from mixdata.train.batch import make_batch
from mixdata.train.checkpoint import CHECKPOINT, load_file
from mixdata.train.config import StageTrain, StepBudget, Trainable, plan_steps
from mixdata.train.ddp import Dist
from mixdata.train.loop import StageRun, train_stage
from mixdata.train.metrics import MetricsLog, read_metrics, summarize
from mixdata.train.stage import finish_stage, start_stage

SEQ_LEN = 40
CPU = Dist(0, 1, torch.device("cpu"))


class ListBatches:
    """Cycles over a fixed list of batches; its state is the index of the next one."""

    def __init__(self, batches):
        self.batches, self.next = batches, 0

    def __iter__(self):
        while True:
            batch = self.batches[self.next % len(self.batches)]
            self.next += 1  # before yielding: the state counts batches handed out
            yield batch

    def state_dict(self):
        return {"next": self.next}

    def load_state_dict(self, state):
        self.next = state["next"]


def make_rows(seed, count, rows=2, with_images=True):
    """`count` batches of `rows` rows, each row two documents (the first maybe with an image)."""
    rng = np.random.default_rng(seed)
    return [[[make_doc(rng, 12, images=1 if with_images else 0), make_doc(rng, 14)]
             for _ in range(rows)] for _ in range(count)]


def make_batches(seed, count, rows=2, with_images=True):
    return [make_batch(r, SPEC, length=SEQ_LEN) for r in make_rows(seed, count, rows, with_images)]


def run_stage(tmp_path, batches, *, steps=6, micro=2, accumulation=1, stop_after=None,
              resume=False, ctx=CPU, spec=None, init_from=None, log_name="metrics.jsonl"):
    spec = spec or StageTrain(budget=StepBudget(steps=steps), warmup=2,
                              batch_tokens=micro * SEQ_LEN * accumulation * ctx.world_size)
    plan = plan_steps(spec, default_micro_batch=micro, seq_len=SEQ_LEN, world_size=ctx.world_size,
                      available_sequences=0)
    state = start_stage(tiny_config(), spec, plan, seed=7, ctx=ctx, init_from=init_from)
    run = StageRun(name="s", spec=spec, plan=plan, folder=tmp_path, checkpoint_every=3)
    data = ListBatches(batches)
    losses = train_stage(state.model, state.wrapped, state.optimizer, state.scheduler, data, run,
                         ctx=ctx, log=MetricsLog(tmp_path / log_name if ctx.is_main else None),
                         resume=resume, stop_after=stop_after, progress=False)
    return losses, state


def test_resume_gives_the_same_losses_as_straight_through(tmp_path):
    batches = make_batches(0, 8)
    straight, _ = run_stage(tmp_path / "a", batches)
    first, _ = run_stage(tmp_path / "b", batches, stop_after=3)
    second, _ = run_stage(tmp_path / "b", batches, resume=True)
    assert len(straight) == 6 and first + second == straight
    assert straight[-1] < straight[0]
    saved = load_file(tmp_path / "b" / CHECKPOINT)
    assert saved["step"] == 6 and saved["loader"] == [{"next": 6}]


def test_resume_without_checkpoint_restarts_and_metrics_are_complete(tmp_path):
    batches = make_batches(1, 4)
    losses, _ = run_stage(tmp_path, batches, steps=3, resume=True)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["loss"] for r in records] == [round(x, 6) for x in losses]
    for record in records:
        assert record["tokens_per_s"] > 0 and record["images_per_s"] > 0
        assert 0 <= record["data_wait"] < 1 and record["mfu"] is None  # no MFU on CPU
        assert set(record["lr"]) == {"vision", "vision.no_decay", "connector",
                                     "connector.no_decay", "lm", "lm.no_decay"}
    summary = summarize(records)
    steady = sum(r["step_time"] for r in records[1:])
    assert summary["steps"] == 3 and summary["steps_per_s"] == pytest.approx(2 / steady)
    assert summary["final_loss"] == records[-1]["loss"] and summary["mfu"] is None


def test_loss_is_normalised_over_accumulation(tmp_path):
    """Two micro-batches of one row accumulate to exactly what one batch of two rows gives."""
    rows = make_rows(2, 4, rows=2)
    whole = [make_batch(batch_rows, SPEC, length=SEQ_LEN) for batch_rows in rows]
    singles = [make_batch([row], SPEC, length=SEQ_LEN) for batch_rows in rows for row in batch_rows]
    together, state_whole = run_stage(tmp_path / "w", whole, steps=4, micro=2)
    split, state_split = run_stage(tmp_path / "s", singles, steps=4, micro=1, accumulation=2)
    np.testing.assert_allclose(split, together, rtol=1e-5)
    for a, b in zip(state_whole.model.parameters(), state_split.model.parameters()):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_a_step_without_supervised_tokens_raises(tmp_path):
    batch = make_batches(3, 1)[0]
    silent = dict(batch, labels=torch.full_like(batch["labels"], -100))
    with pytest.raises(MixdataError, match="no supervised token"):
        run_stage(tmp_path, [silent], steps=1)


def test_next_stage_starts_from_the_merged_final_weights(tmp_path):
    batches = make_batches(4, 3)
    lora = StageTrain(budget=StepBudget(steps=2), warmup=0,
                      trainable=Trainable(vision="frozen", connector="full", lm="lora"))
    _, state = run_stage(tmp_path / "one", batches, spec=lora)
    final = finish_stage(state, tmp_path / "one", CPU, extra={})
    merged = state.model.state_dict()
    assert not any("lora" in name for name in merged)
    spec = StageTrain(budget=StepBudget(steps=1))
    plan = plan_steps(spec, default_micro_batch=2, seq_len=SEQ_LEN, world_size=1, available_sequences=0)
    following = start_stage(tiny_config(), spec, plan, seed=8, ctx=CPU, init_from=final)
    for name, tensor in following.model.state_dict().items():
        assert torch.equal(tensor, merged[name]), name
    fresh = start_stage(tiny_config(), spec, plan, seed=8, ctx=CPU, init_from=None)
    assert not torch.equal(fresh.model.lm.blocks[0].attn.q.weight, merged["lm.blocks.0.attn.q.weight"])


def _ddp_worker(rank, port, tmp, batches, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        ctx = Dist(rank, 2, torch.device("cpu"))
        mine = batches[rank::2]
        losses, state = run_stage(tmp, mine, steps=3, micro=1, ctx=ctx)
        params = [p.detach().numpy().copy() for p in state.model.parameters()]  # by value
        queue.put((rank, (losses, params)))
    except BaseException:
        queue.put((rank, failure()))
        raise
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_match_one_process_with_accumulation(tmp_path):
    """Rank r takes batches r, r+2, ...; one process accumulating both must agree. Rank 1's
    batches carry no image, which must not hang DDP."""
    with_images = make_batches(5, 3, rows=1)
    without = make_batches(6, 3, rows=1, with_images=False)
    interleaved = [b for pair in zip(with_images, without) for b in pair]
    results = on_ranks(_ddp_worker, tmp_path, interleaved)
    single, state = run_stage(tmp_path / "single", interleaved, steps=3, micro=1, accumulation=2)
    assert results[0][0] == results[1][0]
    np.testing.assert_allclose(results[0][0], single, rtol=1e-5)
    for a, b in zip(results[0][1], state.model.parameters()):
        np.testing.assert_allclose(a, b.detach().numpy(), atol=2e-5, rtol=1e-4)


def test_resume_is_exact_on_real_shards_through_the_loader(tmp_path):
    """Built shards, mixdata.load with a DataLoader worker: N straight == N/2 + resume + N/2."""
    from shard_fixtures import SEQ_LEN as FIXTURE_LEN
    from shard_fixtures import write_stage

    from mixdata.train.data import open_data

    write_stage(tmp_path / "shards", [5, 7], seed=3)
    spec = StageTrain(warmup=1)   # no budget: one pass over the 12 sequences
    plan = plan_steps(spec, default_micro_batch=2, seq_len=FIXTURE_LEN, world_size=1,
                      available_sequences=12)
    assert plan.steps == 6

    def attempt(folder, stop_after=None, resume=False):
        state = start_stage(tiny_config(), spec, plan, seed=5, ctx=CPU, init_from=None)
        run = StageRun(name="s", spec=spec, plan=plan, folder=folder, checkpoint_every=1)
        data = open_data(tmp_path / "shards", plan, CPU, seed=11, workers=1)
        return train_stage(state.model, state.wrapped, state.optimizer, state.scheduler, data,
                           run, ctx=CPU, log=MetricsLog(None), resume=resume,
                           stop_after=stop_after, progress=False)

    straight = attempt(tmp_path / "a")
    first = attempt(tmp_path / "b", stop_after=3)
    second = attempt(tmp_path / "b", resume=True)
    assert len(straight) == 6 and first + second == straight
