"""The shard format: packed sequences as byte-deterministic WebDataset tars, plus the manifest.

One WebDataset sample is one packed sequence. Its members, always in this order:
`KEY.json`, `KEY.tokens.npy` (int32), `KEY.loss.npy` (uint8), `KEY.docs.npy` (int32
cu_seqlens-style offsets `[0, ..., len(tokens)]`), then `KEY.000.jpg`, `KEY.001.png`, ... one
per image in order of appearance. `KEY.json` (sorted keys, compact) is
`{"docs": [{"source", "id"}], "images": [{"plan", "span": [start, end], "doc"}]}`.

Every header field that could vary between machines or runs is fixed (mtime 0, uid/gid 0, no
user names, mode 0o644, PAX format), and `.npy` files are written with `np.save`, so the same
sequences always give the same bytes. Nothing is pickled: readers use `allow_pickle=False`.
The stage's manifest is `mixdata.manifest`.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MixdataError
from .storage import atomic_file

ARRAY_MEMBERS = (("tokens", np.int32), ("loss", np.uint8), ("docs", np.int32))
_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")  # WebDataset splits the key at the first dot
_EXT = re.compile(r"^[a-z0-9]+$")


class ShardError(MixdataError):
    """A shard or one of its members is unreadable or breaks the format; names the member."""


@dataclass(frozen=True, kw_only=True)
class PackedSequence:
    """One packed training sequence (see the module docstring for the on-disk form).

    `tokens` int32 [n]; `loss` uint8 [n], 1 where the token is a supervised target;
    `docs` int32 [d + 1] document offsets from 0 to n; `images` as (encoded bytes, extension)
    in order of appearance; `meta` the JSON described above.
    """

    key: str
    tokens: np.ndarray
    loss: np.ndarray
    docs: np.ndarray
    images: list
    meta: dict


@dataclass(frozen=True)
class ShardInfo:
    name: str
    samples: int
    tokens: int
    images: int
    bytes: int
    sha256: str


def check_sequence(seq: PackedSequence) -> None:
    """Raise ShardError unless `seq` is a well-formed packed sequence."""
    where = f"sample {seq.key!r}"
    if not _KEY.match(seq.key):
        raise ShardError(f"{where}: a key may hold only letters, digits, '_' and '-'")
    for name, dtype in ARRAY_MEMBERS:
        array = getattr(seq, name)
        if not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim != 1:
            raise ShardError(f"{where}: {name} must be a 1-D {np.dtype(dtype).name} array")
    n = len(seq.tokens)
    if len(seq.loss) != n:
        raise ShardError(f"{where}: {len(seq.loss)} loss flags for {n} tokens")
    docs = seq.docs
    if len(docs) < 2 or docs[0] != 0 or docs[-1] != n or np.any(np.diff(docs) <= 0):
        raise ShardError(f"{where}: docs must rise strictly from 0 to {n}, got {docs.tolist()}")
    images = seq.meta.get("images", [])
    if len(images) != len(seq.images):
        raise ShardError(f"{where}: {len(seq.images)} images but {len(images)} in its json")
    for data, ext in seq.images:
        if not isinstance(data, (bytes, bytearray, memoryview)) or not _EXT.match(str(ext)):
            raise ShardError(f"{where}: an image must be (bytes, lower-case extension)")


def sequence_members(seq: PackedSequence) -> Iterator[tuple[str, bytes]]:
    """(member name, payload) of one sequence, in the documented order."""
    yield f"{seq.key}.json", json.dumps(seq.meta, sort_keys=True, separators=(",", ":")).encode()
    for name, _ in ARRAY_MEMBERS:
        buffer = io.BytesIO()
        np.save(buffer, getattr(seq, name), allow_pickle=False)
        yield f"{seq.key}.{name}.npy", buffer.getvalue()
    for index, (data, ext) in enumerate(seq.images):
        yield f"{seq.key}.{index:03d}.{ext}", bytes(data)


class _HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through it."""

    def __init__(self, fh):
        self.fh, self.sha256, self.size = fh, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.fh.write(data)


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_shard(path: str | Path, sequences: Iterable[PackedSequence]) -> ShardInfo:
    """Write `sequences` to the tar `path` atomically: temp name, fsync, rename.

    The bytes depend only on the sequences. Returns the counts and sha256 the manifest
    records. A failure leaves no file at `path` (and removes the temp file).
    """
    path = Path(path)
    samples = tokens = images = 0
    with atomic_file(path, "wb") as fh:
        writer = _HashingWriter(fh)
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for seq in sequences:
                check_sequence(seq)
                for name, payload in sequence_members(seq):
                    tar.addfile(_tar_member(name, len(payload)), io.BytesIO(payload))
                samples, tokens = samples + 1, tokens + len(seq.tokens)
                images += len(seq.images)
    return ShardInfo(name=path.name, samples=samples, tokens=tokens, images=images,
                     bytes=writer.size, sha256=writer.sha256.hexdigest())


def _split_name(name: str) -> tuple[str, str]:
    """`dir/KEY.tokens.npy` -> (`dir/KEY`, `tokens.npy`): WebDataset's key rule."""
    head, _, base = name.rpartition("/")
    key, _, suffix = base.partition(".")
    return (f"{head}/{key}" if head else key), suffix


@functools.lru_cache(maxsize=1024)
def _npy_header(head: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """numpy's own parse of a .npy header (magic to the end of the header dict), cached: a
    stage has few distinct shapes, and the parse (ast.literal_eval) was 8% of loading."""
    stream = io.BytesIO(head)
    version = np.lib.format.read_magic(stream)
    read = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}[version]
    return read(stream)


def _parse_npy(payload: bytes) -> np.ndarray:
    if payload[:6] != b"\x93NUMPY" or payload[6:8] not in (b"\x01\x00", b"\x02\x00"):
        return np.load(io.BytesIO(payload), allow_pickle=False)  # numpy's own error
    wide = payload[6] == 2
    size = int.from_bytes(payload[8:12] if wide else payload[8:10], "little")
    start = (12 if wide else 10) + size
    shape, fortran, dtype = _npy_header(payload[:start])
    if dtype.hasobject:
        raise ValueError("object arrays cannot be loaded")
    count = math.prod(shape)
    if len(payload) - start != count * dtype.itemsize:
        raise ValueError(f"{len(payload) - start} data bytes for shape {shape} of {dtype}")
    array = np.frombuffer(payload, dtype, count, start)
    return array.reshape(shape, order="F" if fortran else "C")


def load_array(key: str, suffix: str, payload: bytes | None) -> np.ndarray:
    """The array of one `.npy` member (read-only, over `payload`); ShardError naming the
    sample and member when it is missing or not a valid, pickle-free .npy."""
    if payload is None:
        raise ShardError(f"sample {key!r}: member {suffix} is missing")
    try:
        return _parse_npy(payload)
    except (ValueError, OSError, EOFError) as err:
        raise ShardError(f"sample {key!r}: member {suffix} is not a valid .npy: {err}") from None


def decode_sequence(key: str, members: dict[str, bytes]) -> PackedSequence:
    """Build a PackedSequence from one sample's members (suffix -> bytes); ShardError if bad."""
    try:
        meta = json.loads(members.pop("json"))
    except KeyError:
        raise ShardError(f"sample {key!r}: member json is missing") from None
    except ValueError as err:
        raise ShardError(f"sample {key!r}: member json is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise ShardError(f"sample {key!r}: member json must hold an object")
    arrays = {name: load_array(key, f"{name}.npy", members.pop(f"{name}.npy", None))
              for name, _ in ARRAY_MEMBERS}
    images = []
    for index, suffix in enumerate(sorted(members)):
        number, _, ext = suffix.partition(".")
        if number != f"{index:03d}":
            raise ShardError(f"sample {key!r}: unexpected member {suffix} "
                             f"(image {index:03d} expected)")
        images.append((members[suffix], ext))
    seq = PackedSequence(key=key, images=images, meta=meta, **arrays)
    check_sequence(seq)
    return seq


def iter_shard(fileobj, *, name: str = "shard", strict: bool = True, skip: int = 0
               ) -> Iterator[PackedSequence | ShardError]:
    """Stream the packed sequences of one tar from a binary file object (read once, `r|`).

    Every member is validated. A bad sample raises ShardError naming it, or, with
    `strict=False`, is yielded as a ShardError in its place so callers can count positions.
    A broken tar (truncated, garbage) always raises: nothing after it can be trusted. The
    first `skip` samples are passed over without parsing.
    """
    key, members, seen = None, {}, 0
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                member_key, suffix = _split_name(info.name)
                if member_key != key:
                    if key is not None and seen >= skip:
                        yield _decoded(key, members, strict, name)
                    key, members, seen = member_key, {}, seen + (key is not None)
                if seen >= skip:
                    members[suffix] = tar.extractfile(info).read()
            if key is not None and seen >= skip:
                yield _decoded(key, members, strict, name)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ShardError(f"{name}: unreadable tar after sample {key!r}: {err}") from err


def _decoded(key: str, members: dict, strict: bool, shard: str) -> PackedSequence | ShardError:
    try:
        return decode_sequence(key, members)
    except ShardError as err:
        err = ShardError(f"{shard}: {err}")
        if strict:
            raise err from None
        return err


def hf_features(example: PackedSequence, max_images: int):
    """`datasets.Features` for `load_dataset("webdataset", ..., features=...)` over shards
    whose sequences hold up to `max_images` images.

    HF's webdataset builder infers columns from the first 5 samples and refuses shards
    whose samples differ in members, which packed sequences with varying image counts do;
    explicit features (inferred here from `example`, which should hold at least one image)
    let it read any stage, absent images coming back as None.
    """
    import datasets
    import pyarrow as pa

    row = {"json": example.meta, **{f"{name}.npy": getattr(example, name).tolist()
                                    for name, _ in ARRAY_MEMBERS}}
    schema = pa.Table.from_pylist([row]).schema
    features = datasets.Features.from_arrow_schema(schema)
    for name, dtype in ARRAY_MEMBERS:
        features[f"{name}.npy"] = datasets.Sequence(datasets.Value(np.dtype(dtype).name))
    ext = example.images[0][1] if example.images else "jpg"
    for index in range(max_images):
        features[f"{index:03d}.{ext}"] = datasets.Image()
    features["__key__"] = features["__url__"] = datasets.Value("string")
    return features
