"""The build's process pool: results in task order, the hook after each, no pool for one task."""
from __future__ import annotations

import os

import pytest

from mixdata.building.pool import Executor


def _pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_back_in_task_order_and_the_hook_counts_per_phase(workers):
    seen = []
    executor = Executor(workers, on_result=lambda phase, done: seen.append((phase, done)))
    try:
        first = executor.map(_pid_and_square, range(6), "prepare")
        second = executor.map(_pid_and_square, range(6, 8), "prepare")
        third = executor.map(_pid_and_square, [3], "write")
    finally:
        executor.close()
    assert [r[1] for r in first + second + third] == [x * x for x in range(8)] + [9]
    assert seen == [("prepare", n) for n in range(1, 9)] + [("write", 1)]
    in_parent = {r[0] for r in first} == {os.getpid()}
    assert in_parent == (workers == 1)


def test_a_single_task_never_starts_the_pool():
    executor = Executor(4)
    assert executor.map(_pid_and_square, [5], "prepare") == [(os.getpid(), 25)]
    assert not executor.started
    executor.close()
