"""Mixing: exactness, the window contract with the packer in the loop, epochs, errors, and
the streamed schedule (chunk boundaries, dropped documents, blocked permutations)."""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixdata.errors import MixdataError
from mixdata.mix import (
    ArrayTable,
    MixError,
    StreamSchedule,
    WindowDeviation,
    permutation,
    random_schedule,
    schedule,
    window_deviation,
)
from mixdata.pack import PackItem, pack

MM1 = {"interleaved": 45.0, "captions": 45.0, "text": 10.0}
ALPHA = {"general": 1.0, "math": 0.5, "code": 0.2, "science": 0.1}  # MM1.5's 1:alpha
LENGTH_MIXES = {
    "short": (4.0, 0.6, 0),      # caption-like: lognormal(mu, sigma) text + image tokens
    "medium": (5.5, 0.8, 82),
    "long": (6.8, 1.0, 0),       # text documents, chunked at seq_len
    "images": (6.3, 0.7, 246),   # interleaved with several image views
}


def lengths(kind: str, n: int, seq_len: int, seed: int) -> np.ndarray:
    mu, sigma, image_tokens = LENGTH_MIXES[kind]
    rng = np.random.default_rng(seed)
    return np.minimum(rng.lognormal(mu, sigma, n).astype(np.int64) + 2 + image_tokens, seq_len)


def packed_shares(plan, costs, seq_len):
    names = sorted(costs)
    items = [PackItem(int(costs[p.source][p.index]), group=names.index(p.source))
             for p in plan.picks]
    per_seq = []
    for seq in pack(items, seq_len):
        tokens = Counter()
        for i in seq:
            tokens[plan.picks[i].source] += items[i].length
        per_seq.append(dict(tokens))
    return per_seq


def test_every_prefix_holds_each_source_within_one_document_of_its_share():
    costs = {s: lengths(kind, 500, 2048, k) for k, (s, kind) in
             enumerate(zip(MM1, ["images", "short", "long"]))}
    plan = schedule(MM1, costs, budget=2_000_000, max_epochs=100, seed=7)
    emitted, total = Counter(), 0
    for pick in plan.picks:
        cost = int(costs[pick.source][pick.index])
        emitted[pick.source] += cost
        total += cost
        for s, share in MM1.items():
            assert abs(emitted[s] - share / 100 * total) <= 2048
    assert total >= 2_000_000 and total - cost < 2_000_000, "stops at the budget"
    assert plan.cost == dict(emitted)


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([MM1, ALPHA]), st.lists(st.sampled_from(sorted(LENGTH_MIXES)),
                                               min_size=4, max_size=4),
       st.sampled_from([1024, 2048]), st.integers(0, 2**32 - 1))
def test_window_contract_with_the_packer(shares, kinds, seq_len, seed):
    """Every window of 1,000 packed sequences holds each source within 0.5 points."""
    costs = {s: lengths(kinds[k], 3000, seq_len, seed + k) for k, s in enumerate(shares)}
    budget = 2600 * seq_len
    plan = schedule(shares, costs, budget=budget, max_epochs=100, seed=seed)
    per_seq = packed_shares(plan, costs, seq_len)
    assert len(per_seq) > 2000
    total = sum(shares.values())
    assert window_deviation(per_seq, {s: v / total for s, v in shares.items()}) <= 0.005


def test_random_sampling_drifts_far_more_than_the_schedule():
    costs = {s: lengths(kind, 3000, 2048, k) for k, (s, kind) in
             enumerate(zip(MM1, ["images", "short", "long"]))}
    target = {s: v / 100 for s, v in MM1.items()}
    exact = schedule(MM1, costs, budget=3000 * 2048, max_epochs=100, seed=1)
    drawn = random_schedule(MM1, costs, budget=3000 * 2048, max_epochs=100, seed=1)
    total = sum(drawn.cost.values())
    assert 3000 * 2048 <= total < 3000 * 2048 + 2048
    exact_dev = window_deviation(packed_shares(exact, costs, 2048), target)
    random_dev = window_deviation(packed_shares(drawn, costs, 2048), target)
    assert exact_dev <= 0.005 < random_dev


def test_documents_appear_as_often_as_their_epochs_say():
    costs = {"big": [5] * 40, "small": [3, 7, 4]}
    plan = schedule({"big": 1, "small": 1}, costs, budget=900, max_epochs=50, seed=3)
    for source, docs in costs.items():
        picks = [p for p in plan.picks if p.source == source]
        assert plan.epochs[source] == pytest.approx(len(picks) / len(docs))
        full, partial = divmod(len(picks), len(docs))
        counts = Counter(p.index for p in picks)
        assert all(full <= counts[i] <= full + 1 for i in range(len(docs)))
        for epoch in range(full + (partial > 0)):
            order = [p.index for p in picks if p.epoch == epoch]
            perm = permutation(source, epoch, len(docs), 3).tolist()
            assert order == perm[:len(order)], "an epoch visits its permutation in order"
            assert len(order) == (len(docs) if epoch < full else partial)
    assert plan.epochs["small"] > 10


def test_deterministic_and_seeded():
    costs = {s: lengths(kind, 200, 1024, 5) for s, kind in zip(MM1, ["images", "short", "long"])}
    one = schedule(MM1, costs, budget=300_000, max_epochs=30, seed=11)
    assert one == schedule(MM1, costs, budget=300_000, max_epochs=30, seed=11)
    assert one.picks != schedule(MM1, costs, budget=300_000, max_epochs=30, seed=12).picks
    assert random_schedule(MM1, costs, budget=300_000, max_epochs=30, seed=11) == \
        random_schedule(MM1, costs, budget=300_000, max_epochs=30, seed=11)


@pytest.mark.parametrize("scheduler", [schedule, random_schedule])
def test_no_budget_uses_all_data_without_repeating_any(scheduler):
    costs = {"a": [10] * 30, "b": [1, 2, 3] * 10, "c": [50] * 3}
    plan = scheduler({"a": 2, "b": 1, "c": 0}, costs, budget=None, max_epochs=1, seed=0)
    assert "c" not in plan.epochs and all(p.source != "c" for p in plan.picks)
    assert max(plan.epochs.values()) == 1.0
    assert len(set(plan.picks)) == len(plan.picks)
    assert all(p.epoch == 0 for p in plan.picks)


@pytest.mark.parametrize("scheduler", [schedule, random_schedule])
def test_source_too_small_for_its_share_is_an_error_naming_it(scheduler):
    costs = {"web": [100] * 100, "tiny": [100] * 2}
    with pytest.raises(MixError, match=r"'tiny'.*max_epochs=3") as info:
        scheduler({"web": 1, "tiny": 1}, costs, budget=5000, max_epochs=3, seed=0)
    assert isinstance(info.value, MixdataError)
    plan = scheduler({"web": 1, "tiny": 1}, costs, budget=5000, max_epochs=20, seed=0)
    assert 10 <= plan.epochs["tiny"] <= 20


def test_empty_or_invalid_sources_are_errors():
    with pytest.raises(MixError, match="'b' has share"):
        schedule({"a": 1, "b": 1}, {"a": [1], "b": []}, budget=None, max_epochs=1, seed=0)
    with pytest.raises(MixError, match="'b' has share"):
        schedule({"a": 1, "b": 1}, {"a": [1]}, budget=None, max_epochs=1, seed=0)
    with pytest.raises(MixError, match="positive share"):
        schedule({"a": 0}, {"a": [1]}, budget=None, max_epochs=1, seed=0)
    with pytest.raises(ValueError, match="shares"):
        schedule({"a": -1}, {"a": [1]}, budget=None, max_epochs=1, seed=0)
    with pytest.raises(ValueError, match="budget"):
        schedule({"a": 1}, {"a": [1]}, budget=0, max_epochs=1, seed=0)


def test_sample_weighting_counts_documents():
    costs = {"a": np.ones(1000, np.int64), "b": np.ones(10, np.int64)}
    plan = schedule({"a": 3, "b": 1}, costs, budget=400, max_epochs=30, seed=0)
    assert plan.cost == {"a": 300, "b": 100}
    assert plan.epochs == {"a": 0.3, "b": 10.0}


def test_window_deviation_measures_the_worst_window():
    seqs = [{"a": 10}, {"b": 10}] * 50 + [{"a": 10}] * 10
    assert window_deviation(seqs[:100], {"a": 1, "b": 1}, window=2) == 0.0
    assert window_deviation(seqs, {"a": 1, "b": 1}, window=10) == pytest.approx(0.5)
    assert window_deviation(seqs, {"a": 1, "b": 1}, window=1000) == pytest.approx(60 / 110 - 0.5)
    assert window_deviation([{"a": 5, "c": 5}], {"a": 1}) == pytest.approx(0.5)
    assert window_deviation([], {"a": 1}) == 0.0


# --- streaming --------------------------------------------------------------------------

def _concatenated(shares, tables, span, budget, seed=5):
    stream = StreamSchedule(shares, tables, budget=budget, max_epochs=50, seed=seed, span=span)
    chunks = list(stream)
    source = np.concatenate([c.source for c in chunks])
    index = np.concatenate([c.columns["index"] for c in chunks])
    return len(chunks), source, index, stream.epochs


@settings(max_examples=20, deadline=None)
@given(spans=st.lists(st.sampled_from([300.0, 5_000.0, 77_777.0, 1e9]), min_size=2,
                      max_size=2),
       budget=st.one_of(st.none(), st.integers(10_000, 400_000)))
def test_chunk_boundaries_never_change_the_schedule(spans, budget):
    costs = {s: lengths(kind, 400, 1024, k) for k, (s, kind) in
             enumerate(zip(MM1, ["images", "short", "long"]))}
    tables = {s: ArrayTable(c) for s, c in costs.items()}
    shares = {s: v / 100 for s, v in MM1.items()}
    one, two = (_concatenated(shares, tables, span, budget) for span in spans)
    assert np.array_equal(one[1], two[1]) and np.array_equal(one[2], two[2])
    assert one[3] == two[3]
    whole = schedule(MM1, costs, budget=budget, max_epochs=50, seed=5)
    assert [(list(MM1)[s], int(i)) for s, i in zip(one[1], one[2])] == \
        [(p.source, p.index) for p in whole.picks]


def test_documents_not_kept_never_appear():
    class Halved(ArrayTable):
        def read(self, start, stop):
            cols = super().read(start, stop)
            return {**cols, "keep": np.arange(start, stop) % 2 == 0}

    table = Halved(np.full(100, 10))
    table.kept, table.kept_cost = 50, 500.0
    stream = StreamSchedule({"a": 1.0}, {"a": table}, budget=1500, max_epochs=5, seed=0,
                            span=200.0)
    index = np.concatenate([c.columns["index"] for c in stream])
    assert (index % 2 == 0).all() and len(index) == 150
    assert stream.epochs == {"a": 3.0}


def test_large_sources_are_permuted_a_window_of_blocks_at_a_time(monkeypatch):
    import mixdata.mix as mix

    monkeypatch.setattr(mix, "BLOCK", 10)
    monkeypatch.setattr(mix, "WINDOW_BLOCKS", 3)
    order = permutation("big", 2, 95, seed=1)
    assert sorted(order.tolist()) == list(range(95))
    windows = list(mix.epoch_windows("big", 2, 95, seed=1))
    assert len(windows) == 4 and sum(len(p) for _, p in windows) == 95
    start = 0
    for ranges, perm in windows:
        blocks = {a // 10 for a, _ in ranges}
        part = order[start:start + len(perm)]
        assert {int(i) // 10 for i in part} == blocks  # a window never reaches outside
        start += len(perm)
    assert not np.array_equal(order, permutation("big", 3, 95, seed=1))


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(0, 60), window=st.integers(1, 25), cuts=st.lists(st.integers(0, 60)),
       seed=st.integers(0, 99))
def test_streamed_window_deviation_equals_the_whole(rows, window, cuts, seed):
    tokens = np.random.default_rng(seed).integers(0, 50, (rows, 3))
    shares = {"a": 0.5, "b": 0.3, "c": 0.2}
    names = ["a", "b", "c"]
    tracker = WindowDeviation(shares, names, window)
    bounds = sorted({0, rows, *(c for c in cuts if c <= rows)})
    for a, b in itertools.pairwise(bounds):
        tracker.add(tokens[a:b])
    dicts = [dict(zip(names, map(int, r))) for r in tokens]
    assert tracker.value == pytest.approx(window_deviation(dicts, shares, window))
