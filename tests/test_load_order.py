"""The loader's pure cores, by property: order arithmetic, shuffle, runs, collate invariants."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixdata.errors import MixdataError
from mixdata.loading.collate import BatchSpec, Row, collate, placeholder_runs
from mixdata.loading.order import (
    Component,
    Split,
    component_runs,
    mixture_pattern,
    shuffle_order,
    virtual_segments,
)
from mixdata.shards import PackedSequence

FAST = settings(max_examples=60, deadline=None)


@FAST
@given(count=st.integers(0, 300), buffer=st.integers(0, 50), seed=st.integers(0, 2**32))
def test_shuffle_order_is_a_permutation_that_never_looks_past_the_buffer(count, buffer, seed):
    order = shuffle_order(count, buffer, np.random.default_rng(seed))
    assert sorted(order.tolist()) == list(range(count))
    # output t is emitted when item buffer + t arrives, so it cannot be a later item
    assert all(item <= max(buffer, 1) + t for t, item in enumerate(order.tolist()))
    again = shuffle_order(count, buffer, np.random.default_rng(seed))
    assert np.array_equal(order, again)


@FAST
@given(samples=st.integers(1, 500), block=st.integers(1, 4), ranks=st.integers(1, 6),
       streams=st.integers(1, 4), drop_last=st.booleans())
def test_split_is_the_same_global_order_for_every_world_size_dividing_it(
        samples, block, ranks, streams, drop_last):
    global_batch = ranks * block
    if drop_last and samples < streams * global_batch:
        return
    layouts = {}
    for world in (w for w in range(1, ranks + 1) if ranks % w == 0):
        splits = [Split(samples=samples, batch_size=global_batch // world, world_size=world,
                        rank=r, streams=streams, drop_last=drop_last, canonical_ranks=ranks)
                  for r in range(world)]
        assert len({sp.batches for sp in splits}) == 1 and splits[0].batches % streams == 0
        owned = [c for sp in splits for c in sp.owned]
        assert owned == list(range(ranks))  # every canonical rank on exactly one rank
        lanes = {(c, g): sp.lane_range(c, g) for sp in splits for c in sp.owned
                 for g in range(streams)}
        # what each rank reads is exactly what it delivers: its own lanes, whole
        for sp in splits:
            read = sum(b - a for c in sp.owned for a, b in (sp.lane_range(c, g)
                                                            for g in range(streams)))
            assert read == sp.batches * sp.batch_size
        layouts[world] = (splits[0].batches, lanes)
    assert len({(b, tuple(sorted(lanes.items()))) for b, lanes in layouts.values()}) == 1
    batches, lanes = layouts[1]
    ordered = [lanes[(c, g)] for c in range(ranks) for g in range(streams)]
    assert all(b - a == ordered[0][1] - ordered[0][0] for a, b in ordered)
    assert all(a2 == b1 for (_, b1), (a2, _) in itertools.pairwise(ordered))  # contiguous
    covered = ordered[-1][1]  # what the epoch reads: all but less than a group, or a bit more
    group = streams * global_batch
    if drop_last:
        assert samples - group < covered <= samples
    else:
        assert samples <= covered < samples + group
    one = Split(samples=samples, batch_size=global_batch, world_size=1, rank=0,
                streams=streams, drop_last=drop_last, canonical_ranks=ranks)
    for done in range(batches + 1):
        assert sum(one.consumed(g, done) for g in range(streams)) == done


def test_split_refuses_world_sizes_the_order_was_not_laid_out_for():
    with pytest.raises(MixdataError, match="world size 3 does not divide canonical_ranks=4"):
        Split(samples=100, batch_size=4, world_size=3, rank=0, streams=1, canonical_ranks=4)
    with pytest.raises(MixdataError, match="batch_size 3 is not a multiple of"):
        Split(samples=100, batch_size=3, world_size=2, rank=0, streams=1, canonical_ranks=4)
    default = Split(samples=100, batch_size=3, world_size=3, rank=2, streams=2)
    assert default.ranks == 3 and list(default.owned) == [2] and default.block == 3


@FAST
@given(sizes=st.lists(st.integers(0, 7), min_size=1, max_size=5), seed=st.integers(0, 99),
       epoch=st.integers(0, 3))
def test_component_runs_visit_each_sample_once_per_epoch(sizes, seed, epoch):
    if not sum(sizes):
        return
    component = Component(folder="x", seed=seed,
                          shards=tuple((f"s{i}", n) for i, n in enumerate(sizes)))
    total = component.samples
    runs = component_runs(component, epoch * total, (epoch + 1) * total)
    visited = [(run.shard, run.skip + i) for run in runs for i in range(run.take)]
    assert sorted(visited) == sorted((f"s{i}", k) for i, n in enumerate(sizes) for k in range(n))
    # a window across the epoch boundary is the tail of one order and the head of the next
    middle = component_runs(component, epoch * total + 1, (epoch + 1) * total + 1)
    assert sum(run.take for run in middle) == total


def test_virtual_segments_wrap_past_the_end():
    assert virtual_segments(10, 2, 7) == [(2, 7)]
    assert virtual_segments(10, 8, 13) == [(8, 10), (0, 3)]
    assert virtual_segments(4, 1, 11) == [(1, 4), (0, 4), (0, 3)]


def test_mixture_pattern_keeps_every_prefix_within_one_of_its_share():
    pattern = mixture_pattern([1.0, 3.0], [40, 60], seed=0)
    assert len(pattern) == 100 and np.bincount(pattern).tolist() == [25, 75]
    counts = np.cumsum(pattern == 1)
    exact = 0.75 * np.arange(1, 101)
    assert np.abs(counts - exact).max() <= 1


def test_placeholder_runs():
    tokens = np.asarray([5, 9, 9, 5, 9, 9, 9, 5, 9], np.int32)
    assert placeholder_runs(tokens, 0, 9, 9).tolist() == [[1, 3], [4, 7], [8, 9]]
    assert placeholder_runs(tokens, 2, 5, 9).tolist() == [[2, 3], [4, 5]]


@st.composite
def packed(draw):
    lengths = draw(st.lists(st.integers(1, 12), min_size=1, max_size=4))
    n = sum(lengths)
    tokens = np.asarray(draw(st.lists(st.integers(0, 99), min_size=n, max_size=n)), np.int32)
    loss = np.asarray(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), np.uint8)
    docs = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return PackedSequence(key="k", tokens=tokens, loss=loss, docs=docs, images=[],
                          meta={"docs": [], "images": []})


@FAST
@given(rows=st.lists(packed(), min_size=1, max_size=3))
def test_collate_labels_never_cross_documents(rows):
    spec = BatchSpec(seq_len=48, pad_id=100, image_id=101, tokens_per_tile=4, tile=8,
                     mean=(0.5,) * 3, std=(0.5,) * 3)
    batch = collate([Row(seq, [], []) for seq in rows], spec)
    labels, doc_ids = batch["labels"].numpy(), batch["doc_ids"].numpy()
    positions = batch["position_ids"].numpy()
    for b, seq in enumerate(rows):
        n = len(seq.tokens)
        has_target = labels[b, :n - 1] != -100
        assert (doc_ids[b, :n - 1][has_target] == doc_ids[b, 1:n][has_target]).all()
        assert (seq.loss[1:][has_target] == 1).all() and labels[b, n - 1] == -100
        starts = seq.docs[:-1]
        assert (positions[b, starts] == 0).all()
    cu = batch["cu_seqlens"].numpy()
    assert cu[-1] == len(rows) * 48 and (np.diff(cu) > 0).all()
    assert batch["pixel_values"].shape == (0, 3, 8, 8) and batch["num_images"] == 0
