"""The shared resume check: stop after k items, restore a fresh object, continue == uninterrupted.

Any stateful iterator can use it: pass a factory that builds a fresh iterable from nothing
(a new dataset, loader or pipeline stage), and how to save and restore its state. The state
goes through `roundtrip` (JSON by default, as a checkpoint would store it) before restoring.
"""
from __future__ import annotations

import json
from collections.abc import Callable
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


def check_resume(make: Callable[[], Any], total: int, stop: int, *,
                 save: Callable[[Any], Any] = lambda obj: obj.state_dict(),
                 restore: Callable[[Any, Any], None] = lambda obj, s: obj.load_state_dict(s),
                 roundtrip: Callable[[Any], Any] = json_roundtrip,
                 make_resumed: Callable[[], Any] | None = None) -> list:
    """Assert that items stop..total-1 after a restore equal the uninterrupted run's.

    `make_resumed` builds the object restored into, when it differs from `make`'s (e.g. the
    same job on another number of ranks). Returns the uninterrupted items so callers can
    check more about them.
    """
    assert 0 <= stop <= total
    expected = take(make(), total)
    first = make()
    assert_same(take(first, stop), expected[:stop], "before the stop")
    state = roundtrip(save(first))
    del first
    resumed = (make_resumed or make)()
    restore(resumed, state)
    assert_same(take(resumed, total - stop), expected[stop:], f"after restoring at {stop}")
    return expected
