"""Folders served over loopback HTTP for one test (shared by the remote-read tests).

`serve(folder)` is a plain static server. `serve_ranged(folder)` answers single-range
`Range: bytes=a-b` requests too, as object stores do, and can misbehave on purpose:
`server.fail_first[name] = n` answers the first n requests to a file 503; `server.fault =
Fault(kind, every)` spoils every `every`-th GET with a body: `"503"`, `"cut"` (the connection
closes after half the body, before Content-Length is reached) or `"reset"` (a TCP reset after
the first bytes). `server.log` records (method, name, Range) and `server.faults` what was
spoiled.
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output readable
        pass


@contextlib.contextmanager
def serve(folder, handler=QuietHandler):
    """Yield (base URL, server) for `folder`; the server stops when the block ends."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class Fault:
    kind: str    # "503", "cut" or "reset"
    every: int   # spoil every n-th GET that has a body


class RangeHandler(QuietHandler):
    """Static files with single-range support and the faults described above."""

    def send_head(self):
        name = self.path.lstrip("/")
        server = self.server
        server.log.append((self.command, name, self.headers.get("Range")))
        if server.fail_first.get(name, 0) > 0:
            server.fail_first[name] -= 1
            server.failures.append(name)
            self.send_error(503, "Service Unavailable")
            return None
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return None
        self.spoil = self._next_fault()
        if self.spoil == "503":
            self.send_error(503, "Service Unavailable")
            return None
        size = path.stat().st_size
        start, end = 0, size - 1
        ranged = self.headers.get("Range", "").startswith("bytes=")
        if ranged:
            first, _, last = self.headers["Range"][6:].partition("-")
            start, end = int(first or 0), min(int(last) if last else size - 1, size - 1)
        handle = open(path, "rb")  # noqa: SIM115 - closed by the base handler after copyfile
        handle.seek(start)
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        self.remaining = end - start + 1
        return handle

    def _next_fault(self) -> str | None:
        fault = self.server.fault
        if fault is None or self.command != "GET":
            return None
        with self.server.lock:
            self.server.gets += 1
            spoil = self.server.gets % fault.every == 0
        if spoil:
            self.server.faults.append((fault.kind, self.path))
            return fault.kind
        return None

    def copyfile(self, source, outputfile) -> None:
        if self.spoil in ("cut", "reset"):
            allowed = self.remaining // 2 if self.spoil == "cut" else min(self.remaining, 64)
            outputfile.write(source.read(allowed))
            outputfile.flush()
            self.close_connection = True
            if self.spoil == "reset":  # SO_LINGER 0: close() sends a RST, not a FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()
            return
        while self.remaining > 0:
            chunk = source.read(min(self.remaining, 1 << 20))
            if not chunk:
                break
            outputfile.write(chunk)
            self.remaining -= len(chunk)


@contextlib.contextmanager
def serve_ranged(folder, fault: Fault | None = None):
    """Yield (base URL, server) serving `folder` with RangeHandler."""
    with serve(folder, RangeHandler) as (url, server):
        server.fail_first, server.failures, server.log, server.faults = {}, [], [], []
        server.fault, server.gets, server.lock = fault, 0, threading.Lock()
        yield url, server
