"""Child processes that end when their parent dies, however it dies.

A worker blocked in a long task does not notice that its parent was SIGKILLed (an OOM kill, a
preempted node): it is re-parented to init and holds its memory until someone kills it.
`die_with_parent()`, called first thing in a worker, makes that impossible:

- On Linux, `prctl(PR_SET_PDEATHSIG, SIGKILL)`: the kernel kills the worker the moment its
  parent exits. (The parent's *thread* that started it counts; mixdata starts workers from the
  main thread.)
- Everywhere, a daemon thread that polls the parent's pid once a second and exits the process
  when it changes: the fallback where prctl is missing.

Both check for the race where the parent died before the call.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
POLL_S = 1.0
_armed: set[int] = set()  # pids (this process, after a fork too) already watching a parent


def die_with_parent(parent_pid: int | None = None) -> None:
    """Arrange for this process to end when its parent (`parent_pid`, default the current
    parent) exits. Calling it again in the same process does nothing."""
    if os.getpid() in _armed:
        return
    _armed.add(os.getpid())
    parent = os.getppid() if parent_pid is None else parent_pid
    if sys.platform.startswith("linux"):
        _pdeathsig()
    if os.getppid() != parent:  # the parent is already gone
        os._exit(1)
    watcher = threading.Thread(target=_watch, args=(parent,), daemon=True,
                               name="mixdata-lifeline")
    watcher.start()


def _pdeathsig() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the watcher thread still covers it


def _watch(parent: int) -> None:
    while True:
        time.sleep(POLL_S)
        if os.getppid() != parent:
            os._exit(1)
