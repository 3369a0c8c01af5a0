"""Opening a build's engine by name: the local process pool (`pool.Executor`) or Ray
(`ray_engine.RayEngine`, the `ray` extra, imported here only when asked for).

Kept apart from `pool`, which `ray_engine` builds on, so that no module imports one that
imports it back."""
from __future__ import annotations

import os

from ..errors import MixdataError
from .pool import Engine, Executor, TaskHook

ENGINES = ("local", "ray")
RAY_LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a Ray node on 127.0.0.1 only
# Ray's waits when a driver connects to a cluster (its defaults add up to ~10 minutes when
# nothing answers at the address): 2 attempts, each at most 5 s to reach the GCS and 10 s for
# its reply. Read by Ray when it is imported.
CONNECT_ENV = {"RAY_gcs_server_port_wait_time_s": "2",
               "RAY_gcs_rpc_server_connect_timeout_s": "5",
               "RAY_py_gcs_connect_timeout_s": "10"}


def open_engine(engine: str, workers: int, on_result: TaskHook | None = None,
                address: str | None = None) -> Engine:
    """The engine named `engine` ("local" or "ray"); `address` (Ray only): an existing
    cluster's, else a private Ray instance of `workers` CPUs on this machine. Ray is imported
    here and nowhere else, only when asked for."""
    if engine == "local":
        if address is not None:
            raise MixdataError("--address is the address of a Ray cluster: use it with "
                               "--engine ray")
        return Executor(workers, on_result)
    if engine != "ray":
        raise MixdataError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    # Both read when Ray is first imported (a user's own values win).
    if address is None:  # its private node then listens on 127.0.0.1, never on the network
        os.environ.setdefault(RAY_LOOPBACK, "0")
    else:
        for key, value in CONNECT_ENV.items():
            os.environ.setdefault(key, value)
    try:
        from .ray_engine import RayEngine
    except ModuleNotFoundError as err:
        if err.name != "ray" and not (err.name or "").startswith("ray."):
            raise
        raise MixdataError("--engine ray needs Ray: pip install 'mixdata[ray]'") from None
    return RayEngine(workers, on_result, address=address)
