"""mixdata.load: batch contract, equal work per rank, worker-count independence, exact resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from resume_check import assert_same, check_resume, take
from shard_fixtures import IMAGE, PAD, SEQ_LEN, TILE, TOKENS_PER_TILE, write_stage

from mixdata import load
from mixdata.errors import MixdataError
from mixdata.shards import iter_shard

SIZES = [9, 7, 8]


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stage")
    write_stage(folder, SIZES, seed=11)
    return folder


def _all_sequences(folder) -> dict[bytes, object]:
    out = {}
    for path in sorted(folder.glob("shard-*.tar")):
        with open(path, "rb") as fh:
            out.update({seq.tokens.tobytes(): seq for seq in iter_shard(fh)})
    return out


def _rows(batch) -> list[bytes]:
    """Each row's real tokens, as bytes: the fingerprint of the sequence it holds."""
    out = []
    for ids, docs in zip(batch["input_ids"], batch["doc_ids"]):
        out.append(ids[docs >= 0].to(torch.int32).numpy().tobytes())
    return out


def test_batches_follow_the_contract(stage):
    sequences = _all_sequences(stage)
    ds = load(stage, batch_size=3, seed=1, shuffle_buffer=5, epochs=1)
    batches = list(ds)
    assert len(batches) == ds.batches_per_epoch == sum(SIZES) // 3
    for batch in batches:
        assert batch["input_ids"].shape == batch["labels"].shape == (3, SEQ_LEN)
        assert batch["pixel_values"].dtype == torch.uint8
        assert batch["pixel_values"].shape[1:] == (3, TILE, TILE)
        spans = batch["tile_spans"]
        # one view per placeholder run, every run exactly tokens-per-tile long
        assert len(spans) == len(batch["pixel_values"])
        assert int((batch["input_ids"] == IMAGE).sum()) == len(spans) * TOKENS_PER_TILE
        for row, start, end in spans.tolist():
            assert end - start == TOKENS_PER_TILE
            assert bool((batch["input_ids"][row, start:end] == IMAGE).all())
        for b, key in enumerate(_rows(batch)):
            _check_row(batch, b, sequences[key])
        cu = batch["cu_seqlens"].tolist()
        assert cu[0] == 0 and cu[-1] == 3 * SEQ_LEN and batch["max_seqlen"] == max(np.diff(cu))
        assert batch["num_tokens"] == int((batch["doc_ids"] >= 0).sum())


def _check_row(batch, b, seq) -> None:
    n, tokens = len(seq.tokens), seq.tokens.astype(np.int64)
    ids, labels = batch["input_ids"][b].numpy(), batch["labels"][b].numpy()
    positions, doc_ids = batch["position_ids"][b].numpy(), batch["doc_ids"][b].numpy()
    assert (ids[n:] == PAD).all() and (labels[n:] == -100).all() and (doc_ids[n:] == -1).all()
    for d, (start, end) in enumerate(zip(seq.docs[:-1], seq.docs[1:])):
        assert (positions[start:end] == np.arange(end - start)).all()
        assert (doc_ids[start:end] == d).all()
        assert labels[end - 1] == -100  # no target crosses into the next document
        inner = np.arange(start, end - 1)
        supervised = seq.loss[inner + 1] == 1
        assert (labels[inner][supervised] == tokens[inner + 1][supervised]).all()
        assert (labels[inner][~supervised] == -100).all()


def test_equal_batches_over_three_ranks_of_two_workers(stage):
    seen, counts = [], []
    for rank in range(3):
        ds = load(stage, batch_size=2, seed=5, shuffle_buffer=4, epochs=1, rank=rank,
                  world_size=3, streams=2)
        batches = list(ds.loader(num_workers=2))
        counts.append(len(batches))
        seen += [key for batch in batches for key in _rows(batch)]
    group = 3 * 2 * 2
    assert counts == [sum(SIZES) // group * 2] * 3
    assert len(seen) == len(set(seen)) == sum(SIZES) // group * group  # disjoint ranks


def test_epochs_reshuffle_and_drop_last_false_reads_everything(stage):
    ds = load(stage, batch_size=5, seed=2, shuffle_buffer=6, epochs=2, drop_last=False,
              streams=1)
    batches = list(ds)
    per_epoch = ds.batches_per_epoch
    assert per_epoch == 5 and len(batches) == 10
    first = [k for b in batches[:per_epoch] for k in _rows(b)]
    second = [k for b in batches[per_epoch:] for k in _rows(b)]
    assert set(first) == set(second) == set(_all_sequences(stage)) and first != second


def test_same_batches_for_any_worker_count_dividing_streams(stage):
    def batches(workers):
        ds = load(stage, batch_size=2, seed=4, shuffle_buffer=6, epochs=1, streams=2)
        return list(ds.loader(num_workers=workers))

    assert_same(batches(0), batches(2))
    with pytest.raises(MixdataError, match="cannot share 2 streams"):
        load(stage, batch_size=2, streams=2).loader(num_workers=3)


def test_plain_dataloader_takes_its_worker_count_as_streams(stage):
    from torch.utils.data import DataLoader

    def make():
        return load(stage, batch_size=2, seed=8, shuffle_buffer=4, epochs=1)

    plain = list(DataLoader(make(), batch_size=None, num_workers=2))
    assert_same(plain, list(make().loader(num_workers=2)))
    assert len(plain) == sum(SIZES) // 2


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact_at_every_batch(stage, workers):
    def make():
        return load(stage, batch_size=4, seed=9, shuffle_buffer=5, epochs=2,
                    streams=2).loader(num_workers=workers)

    assert make().dataset.batches_per_epoch == 6
    batches = check_resume(make, total=12)  # two epochs: stops on both sides of the boundary
    assert len(batches) == 12


def test_resume_without_a_loader_and_with_the_dataset_state(stage):
    def make():
        return load(stage, batch_size=4, seed=3, shuffle_buffer=9, streams=3)

    check_resume(make, total=5)  # endless (epochs=None), crosses epoch 0 -> 1


@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_round_trip(stage, workers):
    import copy

    from torchdata.stateful_dataloader import StatefulDataLoader

    def make():
        ds = load(stage, batch_size=2, seed=6, shuffle_buffer=4, epochs=2, streams=2)
        return StatefulDataLoader(ds, batch_size=None, num_workers=workers)

    check_resume(make, total=15, roundtrip=copy.deepcopy)  # 12 per epoch: into epoch 1


def test_state_is_a_few_integers_and_refuses_other_streams(stage):
    ds = load(stage, batch_size=2, streams=2, epochs=1)
    take(ds, 3)
    state = ds.state_dict()
    assert state == {"epoch": 0, "batches": 3, "streams": 2, "offset": 0, "world_size": 1,
                     "canonical_ranks": 1, "global_batch": 2, "batches_per_epoch": 12}
    with pytest.raises(MixdataError, match="taken with streams=2"):
        load(stage, batch_size=2, streams=4).load_state_dict(state)


def test_a_changed_global_batch_is_refused_unless_approximate(stage, caplog):
    # taken at world size 1 with batch 3 (global batch 3); world size 2 with batch 3 is a
    # global batch of 6: refused, or, when asked for, resumed at the same fraction
    state = {"epoch": 1, "batches": 4, "streams": 1, "world_size": 1, "canonical_ranks": 1,
             "global_batch": 3, "batches_per_epoch": 8}
    with pytest.raises(MixdataError, match="global batch is 3 sequences, this one is 6"):
        load(stage, batch_size=3, streams=1, rank=0, world_size=2).load_state_dict(state)
    ds = load(stage, batch_size=3, streams=1, rank=0, world_size=2, approximate_resume=True)
    ds.load_state_dict(state)
    assert ds.state_dict()["batches"] == 4 * ds.batches_per_epoch // 8
    assert ds.state_dict()["epoch"] == 1 and "not exactly" in caplog.text


def test_normalize_pixels_on_device_once(stage):
    ds = load(stage, batch_size=3, seed=1, epochs=1)
    batch = next(b for b in ds if b["num_images"])
    pixels = ds.normalize(batch["pixel_values"], device="cpu")
    expected = (batch["pixel_values"].double() / 255 - 0.5) / 0.25
    assert pixels.dtype == torch.float32
    assert torch.allclose(pixels.double(), expected, atol=1e-5)


def test_small_data_and_bad_arguments_are_clear(stage, tmp_path):
    with pytest.raises(MixdataError, match="cannot give every one of"):
        load(stage, batch_size=20, world_size=2, rank=0, streams=1)
    with pytest.raises(MixdataError, match="no manifest at"):
        load(tmp_path / "nothing", batch_size=2)
    with pytest.raises(MixdataError, match="batch_size must be a positive"):
        load(stage, batch_size=0)
    with pytest.raises(MixdataError, match="rank 2 is outside"):
        load(stage, batch_size=1, rank=2, world_size=2, streams=1)


EARLY_EXIT = """
import sys
from mixdata import load
ds = load(sys.argv[1], batch_size=2, seed=0)
workers = int(sys.argv[2])
source = ds.loader(num_workers=workers) if workers else ds
if sys.argv[3] == "break":
    for i, batch in enumerate(source):
        if i == 1:
            break
else:  # the iterator is still referenced when the interpreter shuts down
    batches = iter(source)
    first, second = next(batches), next(batches)
"""


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("style", ["break", "held"])
def test_leaving_a_loop_early_and_exiting_prints_nothing(stage, workers, style):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", EARLY_EXIT, str(stage), str(workers), style],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == ""
