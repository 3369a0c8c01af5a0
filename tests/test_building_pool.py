"""The build's local engine: results in task order, the hook after each, no pool for one task
or for a phase with little work, tasks pulled lazily (further with `ahead`), cached results
answered in the parent. Tests of the pool itself start it at once (`start_work_s=0`)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from mixdata.building.engines import open_engine
from mixdata.building.pool import Executor
from mixdata.errors import MixdataError


def _pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_back_in_task_order_and_the_hook_counts_per_phase(workers):
    seen = []
    executor = Executor(workers, on_result=lambda phase, done: seen.append((phase, done)),
                        start_work_s=0)
    try:
        first = list(executor.map(_pid_and_square, range(6), "prepare"))
        second = list(executor.map(_pid_and_square, range(6, 8), "prepare"))
        third = list(executor.map(_pid_and_square, [3], "write"))
    finally:
        executor.close()
    assert [r[1] for r in first + second + third] == [x * x for x in range(8)] + [9]
    assert seen == [("prepare", n) for n in range(1, 9)] + [("write", 1)]
    in_parent = {r[0] for r in first} == {os.getpid()}
    assert in_parent == (workers == 1)


def test_a_single_task_never_starts_the_pool():
    executor = Executor(4)
    assert list(executor.map(_pid_and_square, [5], "prepare")) == [(os.getpid(), 25)]
    assert not executor.started
    executor.close()


def _pid_after_a_nap(x: int) -> int:
    time.sleep(0.05)
    return os.getpid()


def test_without_an_estimate_the_pool_starts_after_the_phases_own_inline_work():
    small = Executor(2)  # the default: START_WORK_S of inline work first (2.5 s)
    try:
        assert set(small.map(_pid_after_a_nap, range(8), "prepare")) == {os.getpid()}
        assert not small.started  # 0.4 s of work: cheaper here than starting two workers
    finally:
        small.close()
    executor = Executor(2, start_work_s=0.3)
    try:  # another phase's inline time does not count
        assert set(executor.map(_pid_after_a_nap, range(8), "prepare", work=lambda: 0.0)) \
            == {os.getpid()} and not executor.started
        pids = list(executor.map(_pid_after_a_nap, range(40), "write"))
        inline = pids.index(next(p for p in pids if p != os.getpid()))
        assert 4 <= inline <= 8 and executor.started  # ~6 naps of 0.05 s, then the pool
        assert os.getpid() not in pids[inline + 2:]
    finally:
        executor.close()


def test_the_estimate_decides_when_given():
    executor = Executor(2, start_work_s=1.0)
    try:
        assert set(executor.map(_pid_after_a_nap, range(30), "prepare", work=lambda: 0.5)) \
            == {os.getpid()}  # 1.5 s ran here: the estimate, not the time, says no
        assert not executor.started
        pids = list(executor.map(_pid_after_a_nap, range(6), "prepare", work=lambda: 5.0))
        assert executor.started and os.getpid() not in pids  # the first two start it
        pids = {r[0] for r in executor.map(_pid_and_square, range(4), "plan",
                                           work=lambda: 0.0)}
        assert os.getpid() not in pids  # a running pool serves any map
    finally:
        executor.close()


def _square_or_fail(x: int) -> int:
    if x == 13:
        raise ValueError("thirteen")
    return x * x


def test_cached_results_come_from_the_parent_and_one_miss_starts_no_pool():
    asked = []

    def cached(x):
        asked.append(os.getpid())
        return None if x == 3 else -x

    executor = Executor(2, start_work_s=0)
    try:
        out = list(executor.map(_pid_and_square, range(6), "prepare", cached=cached))
        assert out == [0, -1, -2, (os.getpid(), 9), -4, -5]
        assert not executor.started and set(asked) == {os.getpid()}
    finally:
        executor.close()


def test_tasks_are_pulled_lazily_within_the_window():
    pulled, delivered, ahead = [0], [0], []

    def tasks():
        for x in range(200):
            pulled[0] += 1
            ahead.append(pulled[0] - delivered[0])
            yield x

    executor = Executor(2, start_work_s=0)
    try:
        for n, result in enumerate(executor.map(_pid_and_square, tasks(), "write")):
            assert result[1] == n * n
            delivered[0] += 1
        assert executor.started and max(ahead) <= executor.window
    finally:
        executor.close()


def test_ahead_pulls_past_the_window_while_the_head_task_runs():
    def pulled_at_first_result(**kwargs) -> int:
        pulled = [0]

        def tasks():
            for x in range(100):
                pulled[0] += 1
                yield x

        executor = Executor(2, start_work_s=0)
        try:
            results = executor.map(_pid_and_square, tasks(), "prepare", **kwargs)
            assert next(results)[1] == 0
            count = pulled[0]
            assert [r[1] for r in results] == [x * x for x in range(1, 100)]
            return count
        finally:
            executor.close()

    # without `ahead`, a long first task would hold all but `window` tasks back
    assert pulled_at_first_result() == Executor(2).window == 16
    assert pulled_at_first_result(ahead=64) == 64


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_task_raises_in_order_and_later_tasks_are_dropped(workers):
    executor = Executor(workers, start_work_s=0)
    seen = []
    try:
        with pytest.raises(ValueError, match="thirteen"):
            for result in executor.map(_square_or_fail, range(10, 40), "write"):
                seen.append(result)
        assert seen == [100, 121, 144]
    finally:
        executor.close()


def test_open_engine_names_what_is_wrong():
    with pytest.raises(MixdataError, match="unknown engine 'spark'"):
        open_engine("spark", 1)
    with pytest.raises(MixdataError, match=r"--address .* --engine ray"):
        open_engine("local", 1, address="127.0.0.1:6379")
    assert open_engine("local", 3).workers == 3


def test_the_local_engine_never_imports_ray():
    code = ("import sys; from mixdata.building import build_stage; "
            "from mixdata.commands import build; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_engine_ray_without_ray_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    monkeypatch.delitem(sys.modules, "mixdata.building.ray_engine", raising=False)
    with pytest.raises(MixdataError, match=r"needs Ray: pip install 'mixdata\[ray\]'"):
        open_engine("ray", 2)
