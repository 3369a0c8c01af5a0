"""Streaming tar reading shared by every tar-based adapter (img2dataset, wds, pdfa, idl, ...).

A tar is opened from `io.open_binary` in stream mode (`r|*`, so `.tar.gz` works too), read one
member at a time, and members are grouped by their WebDataset key: the member name up to the
first dot of its base name (`00000/000000001.jpg` -> key `00000/000000001`, ext `jpg`;
`doc.3.image.png` -> key `doc`, ext `3.image.png`). Only the current group is held in memory.
"""
from __future__ import annotations

import tarfile
from collections.abc import Iterator

from webdataset.tariterators import base_plus_ext

from ..errors import MixdataError
from ..storage import RetryCounter, open_binary


def group_members(members: Iterator[tuple[str, bytes]]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Pure grouping of consecutive `(member name, bytes)` pairs into `(key, {ext: bytes})`.

    WebDataset writers keep a sample's members adjacent; a key that reappears later starts a
    new group, exactly as webdataset itself reads it. Names without an extension are skipped
    (they cannot belong to a sample). A repeated ext inside one group keeps the later member.
    """
    key, group = None, {}
    for name, data in members:
        prefix, ext = base_plus_ext(name)
        if prefix is None:
            continue
        if prefix != key:
            if group:
                yield key, group
            key, group = prefix, {}
        group[ext.lower()] = data
    if group:
        yield key, group


def iter_tar_groups(url: str, counter: RetryCounter | None = None
                    ) -> Iterator[tuple[str, dict[str, bytes], str]]:
    """Yield `(key, {ext: bytes}, locator)` for every sample of the tar at `url`, in order.

    `locator` is `url:key`, the form rejects use to name a tar record. A truncated or corrupt
    tar (including one cut at a member boundary, which Python's tarfile reads as a clean end)
    raises `MixdataError` naming the file and the last key read; groups before it have already
    been yielded.
    """
    last = None
    with open_binary(url, counter) as stream:
        try:
            for key, group in group_members(_members(stream)):
                last = key
                yield key, group, f"{url}:{key}"
        except (tarfile.TarError, EOFError, OSError) as err:
            after = f" after key {last!r}" if last is not None else ""
            raise MixdataError(f"{url}: unreadable tar{after} ({type(err).__name__}: {err})") from err


class _EndAwareTarInfo(tarfile.TarInfo):
    """Marks the archive when its end-of-archive block (all zeros) is read.

    Python's tarfile also ends iteration silently on a missing or partial header, which is what
    a tar cut short at a member boundary looks like; the mark tells the two apart.
    """

    @classmethod
    def fromtarfile(cls, archive):
        try:
            return super().fromtarfile(archive)
        except tarfile.EOFHeaderError:
            archive.saw_end_marker = True
            raise


def _members(stream) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular member, one at a time.

    webdataset's `tar_file_iterator` does the same but cannot detect a truncated tar, so this
    reads the stream itself, skipping `__meta__` names as webdataset does.
    """
    archive = tarfile.open(fileobj=stream, mode="r|*", tarinfo=_EndAwareTarInfo)
    archive.saw_end_marker = False
    for info in archive:
        if info.isreg() and not info.name.startswith("__"):
            yield info.name, archive.extractfile(info).read()
        archive.members = []  # stream mode: do not keep every header in memory
    if not archive.saw_end_marker:
        raise tarfile.ReadError("no end-of-archive marker: the tar is truncated")
