"""Where data lives: local paths, globs, brace ranges and any fsspec URL, read as streams.

Reads retry transient errors (connection resets, 5xx, timeouts) with exponential backoff,
reopening at the byte offset already consumed, and count each retry in a `RetryCounter`.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import json
import os
import re
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import fsspec
import zstandard

from .errors import MixdataError

_BRACE = re.compile(r"\{([^{}]*)\}")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass
class RetryCounter:
    retries: int = 0


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
        for pattern in expand_braces(item):
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


# Exception type names (from aiohttp, botocore, urllib3, requests, fsspec, gcsfs) that mean
# the network failed mid-request rather than the request being wrong.
_TRANSIENT_NAMES = ("Timeout", "Connection", "ServerDisconnected", "Throttl", "ServiceUnavailable",
                    "EndpointConnection", "IncompleteRead", "ClientPayloadError",
                    "ContentLengthError", "ProtocolError", "ChunkedEncodingError",
                    "ResponseStreamingError", "ClientOSError")
_TRANSIENT_TEXT = (" 503", " 502", " 500", " 504", "Service Unavailable",
                   "payload is not completed", "Connection reset", "Connection aborted")


def is_transient(err: BaseException) -> bool:
    """Errors worth retrying: resets, timeouts, bodies cut short and server-side (5xx, 429)
    failures, also when they arrive wrapped (fsspec re-raises some as FileNotFoundError or
    OSError with the network error as cause or context)."""
    seen = 0
    while err is not None and seen < 8:
        verdict = _transient_here(err)
        if verdict is not None:
            return verdict
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def _transient_here(err: BaseException) -> bool | None:
    """True or False when `err` itself decides; None to look at what caused it."""
    name = type(err).__name__
    if any(s in name for s in _TRANSIENT_NAMES) or isinstance(err, (ConnectionError,
                                                                     TimeoutError)):
        return True
    status = getattr(err, "status", None) or getattr(err, "code", None)
    if isinstance(status, int) and 100 <= status < 600:
        return status >= 500 or status == 429
    if any(s in str(err) for s in _TRANSIENT_TEXT):
        return True
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return None if err.__cause__ is not None else False
    return None


class StorageError(MixdataError, OSError):
    """A read that kept failing with transient network errors after every retry; names the
    URL. The build turns it into a reject (`unit_unreachable`, `image_unreachable`)."""


def with_retries(action, counter: RetryCounter | None = None, attempts: int = 5,
                 base_delay: float = 0.2, what: str = "a read"):
    """Run `action()`, retrying transient errors with exponential backoff. A transient error
    that outlasts the retries raises StorageError naming `what`; others pass through."""
    for attempt in range(attempts):
        try:
            return action()
        except StorageError:
            raise
        except Exception as err:
            if not is_transient(err):
                raise
            if attempt == attempts - 1:
                raise StorageError(f"{what}: {type(err).__name__}: {err} (still failing after "
                                   f"{attempts} attempts)") from err
            if counter is not None:
                counter.retries += 1
            time.sleep(base_delay * 2 ** attempt)
    raise AssertionError("unreachable")


class RetryingReader(io.RawIOBase):
    """A read-only binary stream that reopens at its offset after a transient failure."""

    def __init__(self, url: str, counter: RetryCounter | None = None, attempts: int = 5):
        self.url, self.counter, self.attempts = url, counter, attempts
        self.pos = 0
        self._fh = with_retries(self._open, counter, attempts, what=url)

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
        self.pos = with_retries(lambda: self._fh.seek(offset, whence), self.counter,
                                self.attempts, what=self.url)
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

        data = with_retries(attempt, self.counter, self.attempts, what=self.url)
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def _open_quietly(self):
        with contextlib.suppress(Exception):  # the handle is already broken
            self._fh.close()
        return with_retries(self._open, self.counter, self.attempts, what=self.url)

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    """The file system path of a local path or `file://` URL. A URL's path is percent-decoded
    (`file:///data/my%20photo.jpg` is `/data/my photo.jpg`), as every URL list writes them;
    a plain path is taken as it is."""
    if not url.startswith("file://"):
        return url
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.unquote(parts.path if not parts.netloc else f"//{parts.netloc}{parts.path}")


def open_binary(url: str, counter: RetryCounter | None = None, buffer_size: int = 1 << 20):
    """A buffered, retrying binary stream over a local path or fsspec URL (not decompressed)."""
    if is_local(url):
        return open(local_path(url), "rb", buffering=buffer_size)
    return io.BufferedReader(RetryingReader(url, counter), buffer_size=buffer_size)


def open_decompressed(url: str, counter: RetryCounter | None = None):
    """A binary stream with `.gz` / `.zst` removed according to the file name."""
    raw = open_binary(url, counter)
    if url.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)
    if url.endswith(".zst"):
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return raw


def open_text(url: str, counter: RetryCounter | None = None, encoding: str = "utf-8"):
    return io.TextIOWrapper(open_decompressed(url, counter), encoding=encoding, errors="replace")


def read_bytes(url: str, counter: RetryCounter | None = None) -> bytes:
    with open_binary(url, counter) as fh:
        return fh.read()


def exists(url: str) -> bool:
    if is_local(url):
        return Path(local_path(url)).exists()
    fs, _, paths = fsspec.get_fs_token_paths(url)
    return fs.exists(paths[0])


# --- writing: every file mixdata writes goes through `atomic_file` ---------------------------

TEMP_MARK = ".tmp-"  # what a temp name holds; a folder's leftovers of crashed runs match it


def temp_name(path: Path) -> Path:
    """A unique sibling temp name: two writers of the same file never share one."""
    return path.with_name(f"{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb"):
    """Open a unique temp sibling of `path` for writing; on success fsync it, rename it to
    `path` and fsync the folder, so `path` is either the complete new file or untouched; on
    failure remove the temp file."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (POSIX: the folder entry is flushed)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_file(path, "wb") as fh:
        fh.write(data)


def write_json_atomic(path: str | Path, payload, *, indent: int | None = 1,
                      sort_keys: bool = True) -> None:
    """`payload` as JSON, keys sorted unless their order means something (equal content then
    gives equal bytes)."""
    with atomic_file(path, "w") as fh:
        json.dump(payload, fh, indent=indent, sort_keys=sort_keys)
        fh.write("\n")


def remove_temp_files(folder: Path) -> None:
    """Delete what crashed writers left in `folder` (never a final name)."""
    for leftover in Path(folder).glob(f"*{TEMP_MARK}*"):
        leftover.unlink(missing_ok=True)
