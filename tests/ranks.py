"""Gloo ranks for the tests: a free loopback port, and `on_ranks`, which runs
`target(rank, port, *args, results)` in `world` spawned processes and returns what each sent.

A worker sends `(rank, value)` once, `value` being `failure()` when it failed (the traceback
as text, so any exception gets home, even one that does not pickle). A rank that fails or is
killed fails the test at once, with every rank's exit code and error; a hang times out."""
from __future__ import annotations

import queue
import socket
import time
import traceback

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def failure() -> RuntimeError:
    """The exception being handled, as a RuntimeError holding its traceback."""
    return RuntimeError(traceback.format_exc())


def on_ranks(target, *args, world: int = 2, timeout: float = 600) -> dict:
    """Rank -> the value it sent."""
    context = mp.get_context("spawn")
    results, port = context.Queue(), free_port()
    procs = [context.Process(target=target, args=(rank, port, *args, results))
             for rank in range(world)]
    for proc in procs:
        proc.start()
    try:
        got = _collect(results, procs, deadline=time.monotonic() + timeout)
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        results.close()
        results.join_thread()
    exits = {rank: proc.exitcode for rank, proc in enumerate(procs)}
    # every failure is reported: a rank that dies first fails the other's next collective
    failed = {rank: value for rank, value in got.items() if isinstance(value, BaseException)}
    assert len(got) == world and not failed, \
        f"exit codes {exits}; results from ranks {sorted(got)}; " \
        + "; ".join(f"rank {rank}: {error}" for rank, error in failed.items())
    assert set(exits.values()) == {0}, exits
    return got


def _collect(results, procs, deadline: float) -> dict:
    """Each rank's value, until all came, every rank has exited, or the deadline passed (a rank
    killed by a signal sends nothing)."""
    got = {}
    while len(got) < len(procs) and time.monotonic() < deadline:
        try:
            rank, value = results.get(timeout=1.0)
            got[rank] = value
        except queue.Empty:
            if not any(proc.is_alive() for proc in procs):
                break
    return got
