"""The shared resume check: stop after k items, restore a fresh object, continue == uninterrupted.

Any stateful iterator can use it: pass a factory that builds a fresh iterable from nothing
(a new dataset, loader or pipeline stage), and how to save and restore its state. The state
goes through `roundtrip` (JSON by default, as a checkpoint would store it) before restoring.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch


def take(iterable, count: int) -> list:
    """The first `count` items of a fresh iterator over `iterable` (which then is dropped)."""
    iterator = iter(iterable)
    items = [next(iterator) for _ in range(count)]
    del iterator
    return items


def assert_same(a: Any, b: Any, where: str = "item") -> None:
    """Deep equality over dicts, lists, tensors, arrays and scalars, naming the first gap."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys differ"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), \
            f"{where}: tensors differ"
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b), \
            f"{where}: arrays differ"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def json_roundtrip(state: Any) -> Any:
    return json.loads(json.dumps(state))


def check_resume(make: Callable[[], Any], total: int, stop: int | Iterable[int] | None = None,
                 *, save: Callable[[Any], Any] = lambda obj: obj.state_dict(),
                 restore: Callable[[Any, Any], None] = lambda obj, s: obj.load_state_dict(s),
                 roundtrip: Callable[[Any], Any] = json_roundtrip,
                 make_resumed: Callable[[], Any] | None = None) -> list:
    """Assert that, for every stop k (default: each of 0..total), a fresh object restored
    from the state taken after k items continues with exactly items k..total-1 of the
    uninterrupted run.

    `make_resumed` builds the object restored into, when it differs from `make`'s (e.g. the
    same job on another number of ranks). The states come from one run that is saved after
    every item; returns its items so callers can check more about them.
    """
    stops = range(total + 1) if stop is None else [stop] if isinstance(stop, int) else list(stop)
    assert all(0 <= k <= total for k in stops)
    expected = take(make(), total)
    states = _states_along(make(), total, set(stops), save, roundtrip, expected)
    for k in stops:
        resumed = (make_resumed or make)()
        restore(resumed, states[k])
        assert_same(take(resumed, total - k), expected[k:], f"after restoring at {k}")
        del resumed
    return expected


def _states_along(obj, total: int, stops: set[int], save, roundtrip, expected) -> dict:
    """One pass over `obj`, checked against `expected`, saving the state after each item
    whose count is in `stops`."""
    states = {0: roundtrip(save(obj))} if 0 in stops else {}
    iterator = iter(obj)
    for k in range(1, max(stops, default=0) + 1):
        assert_same(next(iterator), expected[k - 1], f"item {k - 1} before any stop")
        if k in stops:
            states[k] = roundtrip(save(obj))
    del iterator
    return states
