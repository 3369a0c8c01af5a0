"""Streaming tar reading shared by every tar-based adapter (img2dataset, wds, pdfa, idl, ...).

A tar is opened from `storage.open_binary` in stream mode (`r|*`, so `.tar.gz` works too, also
under a `.tar` name), read one member at a time, and members are grouped by their WebDataset
key: the member name up to the first dot of its base name (`00000/000000001.jpg` -> key
`00000/000000001`, ext `jpg`; `doc.3.image.png` -> key `doc`, ext `3.image.png`). Only the
current group is held in memory.

Damage is told apart precisely, because a tar cut short at a member boundary reads, to Python's
tarfile, like a clean end:
- a zero-byte file is `unit_empty`; a valid tar with no members (only its end-of-archive
  blocks) is simply a unit with no records;
- a tar whose end-of-archive marker never comes (cut inside a header, inside a member or at a
  block boundary) is `unit_truncated`; a header that is not a tar header is `unit_unreadable`.
  Both raise `UnitDamaged` naming the byte offset and the last key read, after every group
  before the damage has been yielded. The group being read when the damage came is not
  yielded: nothing says it was complete.
- Members that are links, devices or FIFOs, or whose names are absolute or climb out with
  `..`, make their sample a `unsafe_member` reject: nothing is ever extracted to disk, but a
  sample that depends on them is not what its writer meant.
- A key that comes back after other keys (not adjacent) is a `duplicate_key` reject: ids must
  be unique within a unit.
"""
from __future__ import annotations

import posixpath
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import RecordRejected, UnitDamaged
from ..storage import RetryCounter, StorageError, open_binary


@dataclass(frozen=True)
class UnsafeMember:
    """Stands in for the bytes of a member that must not be read (why, in words)."""

    why: str


def member_problem(info: tarfile.TarInfo) -> str | None:
    """Why a tar member is unsafe to treat as sample data, or None when it is a plain file."""
    name = info.name
    if name.startswith("/") or ".." in posixpath.normpath(name).split("/"):
        return f"member {name!r} has an absolute name or climbs out of the archive with '..'"
    if info.issym():
        return f"member {name!r} is a symbolic link to {info.linkname!r}"
    if info.islnk():
        return f"member {name!r} is a hard link to {info.linkname!r}"
    if not info.isreg():
        return f"member {name!r} is not a regular file (type {info.type!r})"
    return None


# webdataset's own key rule (`webdataset.tariterators.base_plus_ext`; a test checks they agree).
# Not imported from there: `import webdataset` imports torch, 2-4 s in every build worker.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def split_key(name: str) -> tuple[str, str] | tuple[None, None]:
    """`(key, ext)` of a member name, split at the first dot of its base name; `(None, None)`
    for a name without an extension."""
    match = _KEY_EXT.match(name)
    return (match.group(1), match.group(2)) if match else (None, None)


def group_members(members: Iterator[tuple[str, bytes | UnsafeMember]]
                  ) -> Iterator[tuple[str, dict[str, bytes | UnsafeMember]]]:
    """Pure grouping of consecutive `(member name, bytes)` pairs into `(key, {ext: bytes})`.

    WebDataset writers keep a sample's members adjacent; a key that reappears later starts a
    new group, exactly as webdataset itself reads it. Names without an extension are skipped
    (they cannot belong to a sample). A repeated ext inside one group keeps the later member.
    """
    key, group = None, {}
    for name, data in members:
        prefix, ext = split_key(name)
        if prefix is None:
            continue
        if prefix != key:
            if group:
                yield key, group
            key, group = prefix, {}
        group[ext.lower()] = data
    if group:
        yield key, group


def group_problem(members: dict) -> RecordRejected | None:
    """The rejection of a group holding an unsafe member, else None."""
    unsafe = [m.why for m in members.values() if isinstance(m, UnsafeMember)]
    return RecordRejected("unsafe_member", "; ".join(unsafe)) if unsafe else None


def iter_tar_groups(url: str, counter: RetryCounter | None = None
                    ) -> Iterator[tuple[str, dict[str, bytes] | RecordRejected, str]]:
    """Yield `(key, {ext: bytes}, locator)` for every sample of the tar at `url`, in order.

    `locator` is `url:key`, the form rejects use to name a tar record. In place of the members
    comes a `RecordRejected` (`unsafe_member`, `duplicate_key`) for a sample to reject. Damage
    raises `UnitDamaged` once the groups before it have been yielded (see the module
    docstring); a remote read that keeps failing raises `StorageError`.
    """
    last, seen = None, set()
    with open_binary(url, counter) as stream:
        if not stream.peek(1):
            raise UnitDamaged("unit_empty", url, "the file is empty (0 bytes)")
        reader = _TarReader(stream)
        try:
            for key, group in group_members(reader.members()):
                locator = f"{url}:{key}"
                last = key
                if key in seen:
                    yield key, RecordRejected("duplicate_key", f"key {key!r} appears again "
                                              "after other keys"), locator
                    continue
                seen.add(key)
                yield key, group_problem(group) or group, locator
        except StorageError:
            raise
        except _Damage:
            pass
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            reader.fail(err)
        if reader.damage is not None:
            reason, message = reader.damage
            after = f", after key {last!r}" if last is not None else ", before any sample"
            raise UnitDamaged(reason, url, message, where=f"byte {reader.offset}{after}")


class _Damage(Exception):
    """Ends the member stream at damage, before the group being read is yielded."""


class _EndAwareTarInfo(tarfile.TarInfo):
    """Records on the archive how its header reading ended: Python's tarfile ends iteration
    silently on a missing, partial or invalid header after the first member, so the kind of
    header error is what tells a clean end from damage."""

    @classmethod
    def fromtarfile(cls, archive):
        try:
            return super().fromtarfile(archive)
        except tarfile.EOFHeaderError:
            archive.ending = "end"
            raise
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):
            archive.ending = "truncated"
            raise
        except tarfile.HeaderError:
            archive.ending = "invalid"
            raise


BROKEN = UnsafeMember("its data could not be read")


class _TarReader:
    """Members of one tar stream, and what damage, if any, ended them."""

    def __init__(self, stream) -> None:
        self.stream, self.archive = stream, None
        self.damage: tuple[str, str] | None = None

    @property
    def offset(self) -> int:
        return int(getattr(self.archive, "offset", 0) or 0)

    def members(self) -> Iterator[tuple[str, bytes | UnsafeMember]]:
        """(name, bytes or UnsafeMember) of each member, skipping folders and the `__meta__`
        style names webdataset skips too."""
        # the stream is the caller's: closing it is theirs too, the archive only reads it
        self.archive = tarfile.open(fileobj=self.stream, mode="r|*",  # noqa: SIM115
                                    tarinfo=_EndAwareTarInfo)
        for info in self.archive:
            self.archive.members = []  # stream mode: do not keep every header in memory
            if info.isdir() or posixpath.basename(info.name).startswith("__"):
                continue
            problem = member_problem(info)
            if problem:
                yield info.name, UnsafeMember(problem)
                continue
            try:
                data = self.archive.extractfile(info).read()
            except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
                self.fail(err)
                # the member's header was read, so the group before it is complete: let the
                # grouping close it, then end the stream before this member's group
                yield info.name, BROKEN
                raise _Damage from err
            yield info.name, data
        ending = getattr(self.archive, "ending", "end")
        if ending == "invalid":
            self.damage = ("unit_unreadable", "a header that is not a tar header")
        elif ending != "end":
            self.damage = ("unit_truncated", "the tar ends without its end-of-archive marker")
        if self.damage is not None:
            raise _Damage

    def fail(self, err: BaseException) -> None:
        """Classify an error raised while reading (opening, a header or a member's data)."""
        text = f"{type(err).__name__}: {err}"
        truncated = isinstance(err, EOFError) or "unexpected end" in str(err) \
            or "truncated" in str(err).lower()
        if self.archive is None and not truncated:
            self.damage = ("unit_unreadable", f"not a tar or compressed tar ({text})")
        else:
            self.damage = ("unit_truncated" if truncated else "unit_unreadable", text)
