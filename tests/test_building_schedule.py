"""Prepare's task order and the work estimate that starts the local pool: the pure pieces, then
the engine fed by them on the demo's measured unit figures (fake clock), where a small build
never starts a pool and a large one starts it once each source ran a unit."""
from __future__ import annotations

import os
from contextlib import closing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mixdata.building import pool as pool_module
from mixdata.building.pool import Executor
from mixdata.building.prepare import UnitStats
from mixdata.building.schedule import PrepareWork, estimate_s, task_order, unit_sizes
from mixdata.building.stage import PREPARE_AHEAD, _in_order, _projected, _timed


def test_largest_first_and_with_sample_each_sources_largest_ahead():
    sources = ["a", "a", "b", "a", "c", "b"]
    sizes = [5.0, 9.0, 1.0, 9.0, 2.0, 3.0]
    assert task_order(sources, sizes, sample=False) == [1, 3, 0, 5, 4, 2]
    assert task_order(sources, sizes, sample=True) == [1, 5, 4, 3, 0, 2]
    assert task_order(sources, [1.0] * 6, sample=False) == list(range(6))  # sizes unknown


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(1, 1e9)), max_size=30),
       st.booleans())
def test_the_order_is_a_permutation_largest_first_after_the_samples(units, sample):
    sources, sizes = [s for s, _ in units], [z for _, z in units]
    order = task_order(sources, sizes, sample)
    assert sorted(order) == list(range(len(units)))
    rest = order[len(set(sources)):] if sample else order
    assert [sizes[k] for k in rest] == sorted((sizes[k] for k in rest), reverse=True)


def test_unit_sizes_share_a_files_bytes_and_count_units_when_remote(tmp_path):
    big, small = tmp_path / "big.parquet", tmp_path / "small.tar"
    big.write_bytes(b"x" * 1000)
    small.write_bytes(b"")
    assert unit_sizes([f"{big}#rg=0", f"{big}#rg=1", str(small)]) == [500.0, 500.0, 1.0]
    assert unit_sizes([str(big), "s3://bucket/x.tar"]) == [1.0, 1.0]
    assert unit_sizes([str(tmp_path / "gone.tar")]) == [1.0]
    spaced = tmp_path / "my shard.tar"  # a file:// URL is percent-decoded, as storage reads it
    spaced.write_bytes(b"x" * 300)
    assert unit_sizes([f"file://{tmp_path}/my%20shard.tar"]) == [300.0]


def test_the_estimate_uses_each_sources_rate_else_the_overall_one():
    assert estimate_s({}, {"a": 100.0}) == 0.0  # nothing timed: nothing to extrapolate
    timed = {"a": (2.0, 100.0), "b": (6.0, 100.0)}  # 0.02 and 0.06 s per byte; 0.04 overall
    assert estimate_s(timed, {"a": 50.0, "b": 10.0, "c": 100.0}) == pytest.approx(
        50 * 0.02 + 10 * 0.06 + 100 * 0.04)


def test_prepare_work_counts_each_unit_once_and_times_only_inline_ones():
    work = PrepareWork()
    work.expect([(("a", 0), "a", 10.0), (("a", 1), "a", 10.0), (("b", 0), "b", 30.0)])
    assert work() == 0.0
    work.done(("a", 0), 0.0)  # cached: no longer to come, and no rate from it
    assert work() == 0.0
    work.done(("a", 1), 1.0)
    assert work() == pytest.approx(30 * 0.1)
    work.expect([(("b", 0), "b", 30.0), (("b", 1), "b", 30.0)])  # b 0 again: counted once
    work.done(("b", 0), 6.0)
    assert work() == pytest.approx(30 * 0.2)


class _Clock:
    """Stands in for the engine's clock: inline units advance it by their seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


CLOCK = _Clock()


def _unit(item: tuple[str, float, float]) -> int:
    CLOCK.now += item[2]  # in a worker this moves that process's copy only
    return os.getpid()


def _inline(units: list[tuple[str, float, float]], monkeypatch) -> list[int]:
    """Each (source, size, seconds) unit through a 2-worker engine as `stage._prepare` feeds
    it (its order, `PrepareWork`, `_timed`, `_in_order`): the units that ran inline."""
    monkeypatch.setattr(pool_module, "time", CLOCK)
    executor, work = Executor(2), PrepareWork()
    order = task_order([s for s, _, _ in units], [z for _, z, _ in units], sample=True)
    work.expect((k, *units[k][:2]) for k in order)
    try:
        with closing(executor.map(_unit, (units[k] for k in order), "prepare", work=work,
                                  ahead=PREPARE_AHEAD)) as results:
            pids = [pid for _, pid in _in_order(order, _timed(results, order, work, executor))]
    finally:
        executor.close()
    return [k for k, pid in enumerate(pids) if pid == os.getpid()]


MB = 1e6


def test_a_small_stage_never_starts_the_pool(monkeypatch):
    # demo scale 1, high-res stage (its heaviest): one RenderedText tar, one PDFA tar, 20 PDFs
    units = [("renderedtext", 16.8 * MB, 1.7), ("pdfa", 0.53 * MB, 0.7)]
    units += [("pdfs", 8e3, 0.01)] * 20
    assert len(_inline(units, monkeypatch)) == len(units)


def test_a_large_stage_starts_the_pool_once_each_source_ran_a_unit(monkeypatch):
    # demo scale 20, pretraining stage (7 s); the first unit alone (a caption tar) would
    # take the others for cheap, as its bytes are; obelics's 128 small parquet units are not
    units = [("laion", 2.39 * MB, 0.4)] * 2 + [("dolma", 0.145 * MB, 0.3)]
    units += [("fineweb", 0.17 * MB, 0.02)] * 32 + [("obelics", 0.0115 * MB, 0.042)] * 128
    assert _inline(units, monkeypatch) == [0, 2, 3, 35]  # the largest unit of each source


def test_a_budgeted_stage_expects_the_units_its_need_takes():
    def unit(tokens: int) -> UnitStats:
        return UnitStats(unit="u", path="p", read=1, rejected={}, docs=1, tokens=tokens)

    stats = {"a": [unit(100), None, None, None, None], "b": [unit(0), None, None]}
    assert _projected(stats, {"a": 250.0, "b": 10.0}, "tokens") == [
        ("a", 1), ("a", 2), ("b", 1), ("b", 2)]  # a: 3 units of 100; b: no cost known, all
