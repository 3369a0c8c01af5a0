"""Shared pytest set-up. Area-specific fixtures live beside their tests."""
import os
import threading
import time
import uuid
from pathlib import Path

import fsspec
import pytest

# Process-wide helpers that libraries start once and keep on purpose: multiprocessing's
# forkserver and resource tracker, fsspec's event-loop thread, tqdm's monitor thread.
LONG_LIVED_PROCESSES = ("forkserver", "resource_tracker")
LONG_LIVED_THREADS = ("fsspecIO", "TMonitor", "asyncio_")
GRACE_S = 5.0


# Never let a test touch the user's real demo cache.
@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    if "MIXDATA_CACHE" not in os.environ:
        os.environ["MIXDATA_CACHE"] = str(tmp_path_factory.mktemp("mixdata-cache"))
    yield


@pytest.fixture
def s3_bucket(monkeypatch):
    """(s3fs filesystem, a fresh bucket) on a moto S3 server on 127.0.0.1 for one test."""
    from moto.server import ThreadedMotoServer  # slow to import: only tests that use S3

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    fsspec.filesystem("s3").clear_instance_cache()
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    # moto keeps its backend state per process, so a fixed name can already exist.
    bucket = f"mixdata-test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    yield fs, bucket
    fsspec.filesystem("s3").clear_instance_cache()
    server.stop()


def _children() -> set[int]:
    """This process's live child processes, less the long-lived library helpers."""
    pid = os.getpid()
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:  # not Linux: nothing to check
        return set()
    alive = set()
    for child in map(int, listed):
        try:
            stat = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if stat != "Z" and not any(name in cmdline for name in LONG_LIVED_PROCESSES):
            alive.add(child)
    return alive


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t is not threading.main_thread()
            and not any(t.name.startswith(n) or type(t).__name__ == n
                        for n in LONG_LIVED_THREADS)}


@pytest.fixture(autouse=True)
def _no_leaked_threads_or_processes(request):
    """Fail a test that leaves a thread or a child process running after it ends."""
    threads, children = _threads(), _children()
    yield
    deadline = time.monotonic() + GRACE_S
    while True:
        new_threads, new_children = _threads() - threads, _children() - children
        if not (new_threads or new_children) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    leaked = [f"thread {t.name!r}" for t in new_threads] + [f"process {p}" for p in new_children]
    if leaked:
        pytest.fail(f"{request.node.nodeid} leaked " + ", ".join(sorted(leaked)), pytrace=False)
