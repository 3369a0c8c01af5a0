"""Where data lives: local paths, globs, brace ranges and any fsspec URL, read as streams.

Reads retry transient errors (connection resets, 5xx, timeouts) with exponential backoff,
reopening at the byte offset already consumed, and count each retry in a `RetryCounter`.
"""
from __future__ import annotations

import gzip
import io
import itertools
import re
import time
from dataclasses import dataclass
from pathlib import Path

import fsspec

DEMO_SCHEME = "demo://"
_BRACE = re.compile(r"\{([^{}]*)\}")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass
class RetryCounter:
    retries: int = 0


def resolve_demo(uri: str) -> str:
    """`demo://caption/x.tar` -> a path in the demo corpus, generating it on first use."""
    if not uri.startswith(DEMO_SCHEME):
        return uri
    from .demo.corpus import ensure_corpus  # the demo is only imported when used

    return str(Path(ensure_corpus()) / uri[len(DEMO_SCHEME):])


def expand_braces(pattern: str) -> list[str]:
    """Expand `{000..009}` ranges (zero padding kept) and `{a,b}` alternatives, in order."""
    match = _BRACE.search(pattern)
    if not match:
        return [pattern]
    body = match.group(1)
    if ".." in body:
        lo, hi = body.split("..", 1)
        width = len(lo) if lo.startswith("0") else 0
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        choices = body.split(",")
    head, tail = pattern[:match.start()], pattern[match.end():]
    return list(itertools.chain.from_iterable(expand_braces(head + c + tail) for c in choices))


def expand(uri: str | list[str]) -> list[str]:
    """Concrete file paths/URLs for a recipe `uri`: lists, braces and globs expanded, sorted
    within each glob so unit order is deterministic."""
    out: list[str] = []
    for item in ([uri] if isinstance(uri, str) else uri):
        for pattern in expand_braces(resolve_demo(item)):
            if _GLOB_CHARS.search(pattern.split("://", 1)[-1]):
                fs, _, _ = fsspec.get_fs_token_paths(pattern)
                matches = sorted(fs.glob(_strip(pattern)))
                out.extend(_unstrip(pattern, m, fs) for m in matches)
            else:
                out.append(pattern)
    return out


def _strip(url: str) -> str:
    return url.split("://", 1)[1] if "://" in url and not url.startswith("file://") else url


def _unstrip(pattern: str, path: str, fs) -> str:
    if "://" in pattern and not pattern.startswith("file://"):
        protocol = pattern.split("://", 1)[0]
        return path if path.startswith(protocol + "://") else f"{protocol}://{path}"
    return path


def is_transient(err: BaseException) -> bool:
    """Errors worth retrying: resets, timeouts and server-side (5xx, 429) failures."""
    if isinstance(err, FileNotFoundError) and err.__cause__ is not None:
        # fsspec's HTTP info raises FileNotFoundError(url) from a 503 once HEAD and GET fail
        return is_transient(err.__cause__)
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    status = getattr(err, "status", None) or getattr(err, "code", None)
    if isinstance(status, int):
        return status >= 500 or status == 429
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    name = type(err).__name__
    text = str(err)
    return any(s in name for s in ("Timeout", "Connection", "ServerDisconnected", "Throttl",
                                   "ServiceUnavailable", "EndpointConnection", "IncompleteRead")) \
        or any(s in text for s in (" 503", " 502", " 500", " 504", "Service Unavailable"))


def with_retries(action, counter: RetryCounter | None = None, attempts: int = 5,
                 base_delay: float = 0.2):
    """Run `action()`, retrying transient errors with exponential backoff."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - filtered by is_transient
            if attempt == attempts - 1 or not is_transient(err):
                raise
            if counter is not None:
                counter.retries += 1
            time.sleep(base_delay * 2 ** attempt)
    raise AssertionError("unreachable")


class RetryingReader(io.RawIOBase):
    """A read-only binary stream that reopens at its offset after a transient failure."""

    def __init__(self, url: str, counter: RetryCounter | None = None, attempts: int = 5):
        self.url, self.counter, self.attempts = url, counter, attempts
        self.pos = 0
        self._fh = with_retries(self._open, counter, attempts)

    def _open(self):
        handle = fsspec.open(self.url, "rb").open()
        if self.pos:
            handle.seek(self.pos)
        return handle

    def readable(self) -> bool:
        return True

    # Parquet readers need random access (the footer is at the end); fsspec handles of known
    # size can seek, and a reopen after a failure lands at `pos` again.
    def seekable(self) -> bool:
        return self._fh.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset, whence = self.pos + offset, io.SEEK_SET
        self.pos = with_retries(lambda: self._fh.seek(offset, whence), self.counter, self.attempts)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        def attempt():
            try:
                data = self._fh.read(len(buffer))
            except Exception:
                self._fh = self._open_quietly()
                raise
            return data

        data = with_retries(attempt, self.counter, self.attempts)
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def _open_quietly(self):
        try:
            self._fh.close()
        except Exception:  # noqa: BLE001 - the handle is already broken
            pass
        return with_retries(self._open, self.counter, self.attempts)

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()


def open_binary(url: str, counter: RetryCounter | None = None, buffer_size: int = 1 << 20):
    """A buffered, retrying binary stream over a local path or fsspec URL (not decompressed)."""
    if "://" not in url or url.startswith("file://"):
        return open(url.removeprefix("file://"), "rb", buffering=buffer_size)
    return io.BufferedReader(RetryingReader(url, counter), buffer_size=buffer_size)


def open_decompressed(url: str, counter: RetryCounter | None = None):
    """A binary stream with `.gz` / `.zst` removed according to the file name."""
    raw = open_binary(url, counter)
    if url.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)
    if url.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return raw


def open_text(url: str, counter: RetryCounter | None = None, encoding: str = "utf-8"):
    return io.TextIOWrapper(open_decompressed(url, counter), encoding=encoding, errors="replace")


def read_bytes(url: str, counter: RetryCounter | None = None) -> bytes:
    with open_binary(url, counter) as fh:
        return fh.read()


def exists(url: str) -> bool:
    fs, _, paths = fsspec.get_fs_token_paths(url)
    return fs.exists(paths[0])
