"""`mixdata build --engine ray`: the build's tasks as Ray tasks (the `ray` extra).

`RayEngine` implements `pool.Engine` on Ray: each prepare unit, plan chunk and shard is one
Ray task, submitted from the build's process (the Ray driver) at most `window` at a time and
collected in task order, so the output is byte-identical to the local engine's whatever the
cluster's size. Ray does the scheduling, the transport and the retries; mixdata adds none of
its own.

Retries: a task whose worker process or node dies is resubmitted by Ray up to `RETRIES`
times (`max_retries`). That is safe because every task writes only through atomic renames,
and a task that finds its result already final (a unit's sidecar, a shard with the same plan
hash) returns it. A task that *raises* is not retried (`retry_exceptions=False`): mixdata's
tasks are deterministic, so the same input raises again, and storage reads already retry
their transient errors themselves. Each result comes back with Ray's attempt number for its
task, so the engine counts the re-run attempts per phase (`retries`), which the build records
in the manifest's `run` section.

Where it runs: with `address` None, a private Ray instance on this machine (`workers` CPUs,
no dashboard) that listens on 127.0.0.1 only and stops with the build; `engines.open_engine`
sets `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` before Ray is imported, which is Ray's switch for
a loopback-only node. With an address (`host:port` of `ray start --head`, or "auto"), the
existing cluster, which the build leaves running. Every node must see the build's output
folder at the same path (it holds the prepared units) and have the same mixdata installed.
Ray starts on the first task that needs a worker, so a build with nothing to do never
connects. An address nothing answers at is a MixdataError after about half a minute (Ray
alone keeps trying for about ten: `engines.open_engine` shortens its waits, `CONNECT_ENV`,
unless they are set, before Ray is imported, which is when Ray reads them).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import NodeDiedError, OutOfMemoryError, RayTaskError, WorkerCrashedError

from ..errors import MixdataError
from .pool import OrderedEngine, TaskHook

RETRIES = 3                            # resubmissions of a task whose worker or node died
OBJECT_STORE_BYTES = 256 * 1024 ** 2   # a private instance's: results and chunks are small


def _attempted(fn: Callable, task) -> tuple[Any, int]:
    """Runs on a Ray worker: `fn(task)`, and which attempt of this Ray task it is (0 the
    first)."""
    return fn(task), _attempt_number()


def _attempt_number() -> int:
    # Ray's own count. Its public reader is the state API, which needs the dashboard (off on
    # a private instance, optional on a cluster); the core worker has it for every task.
    try:
        return int(ray._private.worker.global_worker.core_worker
                   .get_current_task_attempt_number())
    except AttributeError:  # a Ray without it: retries are not counted
        return 0


class RayEngine(OrderedEngine):
    """The Ray engine (module docstring). `workers`: CPUs of a private instance; on an
    existing cluster, its CPU count once connected."""

    name = "ray"

    def __init__(self, workers: int, on_result: TaskHook | None = None,
                 address: str | None = None) -> None:
        super().__init__(on_result)
        self.address, self._requested = address, max(1, int(workers))
        self._connected = self._owned = False
        self._cpus: int | None = None
        self._remotes: dict[Callable, Any] = {}

    @property
    def workers(self) -> int:
        if not self._connected and self.address is None:
            return self._requested
        self._start()
        if self._cpus is None:  # asked once: the map reads it for every task
            self._cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        return self._cpus

    @property
    def started(self) -> bool:
        return self._connected

    def _ready(self) -> bool:
        return self._connected

    def _can_start(self) -> bool:
        return True

    def _start(self) -> None:
        if self._connected:
            return
        if not ray.is_initialized():  # else: the caller's own connection, left to it
            if self.address is None:
                ray.init(address="local", num_cpus=self._requested, num_gpus=0,
                         include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
                         logging_level=logging.WARNING)
            else:
                self._connect()
            self._owned = True
        self._connected = True

    def _connect(self) -> None:
        try:
            ray.init(address=self.address, logging_level=logging.WARNING)
        except ConnectionError as err:
            raise MixdataError(
                f"cannot reach a Ray cluster at --address {self.address} ({err}). Start one "
                "with 'ray start --head' (it prints the address to pass), check the host, "
                "port and firewall, or leave out --address to run a private Ray instance on "
                "this machine") from None

    def _submit(self, fn: Callable, task) -> ray.ObjectRef:
        if fn not in self._remotes:  # named after fn: the task and its worker's title
            self._remotes[fn] = ray.remote(max_retries=RETRIES, retry_exceptions=False,
                                           num_cpus=1)(_attempted).options(name=fn.__name__)
        return self._remotes[fn].remote(fn, task)

    def _wait(self, handle: ray.ObjectRef) -> tuple[Any, int]:
        try:
            return ray.get(handle)
        except RayTaskError as err:
            if isinstance(err.cause, MixdataError):
                raise err.cause from None  # its message says what to do; Ray's wrapper not
            raise
        except (WorkerCrashedError, NodeDiedError, OutOfMemoryError) as err:
            raise MixdataError(f"a Ray task died {RETRIES + 1} times ({type(err).__name__}); "
                               "see the Ray logs (/tmp/ray/session_latest/logs on each node) "
                               "for why its worker or node was lost") from err

    def _abandon(self, handles: list) -> None:
        for ref in handles:
            ray.cancel(ref)

    def close(self) -> None:
        if self._owned:
            ray.shutdown()
        self._connected = self._owned = False
        self._cpus = None
        self._remotes.clear()
