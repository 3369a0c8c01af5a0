"""Byte-deterministic writers for the demo corpus's container formats.

Every writer pins what would otherwise vary between runs: tar mtimes and owners, gzip header
time and name, parquet without pandas metadata, JSON key order. Image encoders take Pillow
images and write no timestamps either.
"""
from __future__ import annotations

import gzip
import io
import json
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SEED = 20241123


def rng_for(kind: str) -> np.random.Generator:
    """Each kind gets its own stream, so adding records to one kind never shifts another."""
    return np.random.default_rng([SEED, zlib.crc32(kind.encode())])


@dataclass
class KindReport:
    """What one kind's writer produced: every record, and which ones are broken on purpose.

    `records` counts records the way that format's adapter reads them (rows, tar keys, lines,
    PDF documents), the deliberately malformed ones included; `malformed` counts those by what
    is wrong with them; `extra` holds format specifics (pages, failed img2dataset rows).
    """

    records: int = 0
    malformed: Counter = field(default_factory=Counter)
    extra: dict = field(default_factory=dict)

    def add(self, broken: str | None = None) -> None:
        self.records += 1
        if broken:
            self.malformed[broken] += 1

    def to_json(self) -> dict:
        return {"records": self.records, "valid": self.records - sum(self.malformed.values()),
                "malformed": dict(sorted(self.malformed.items())), **self.extra}


def broken_slots(rng: np.random.Generator, count: int, defects: list[str]) -> dict[int, str]:
    """Spread the defects over distinct record indices (never index 0, so a quick peek at a
    source shows a good record first)."""
    if count <= len(defects):
        raise ValueError(f"{count} records cannot hold {len(defects)} defects and a good one")
    indices = rng.choice(np.arange(1, count), size=len(defects), replace=False)
    return {int(i): defect for i, defect in zip(indices, defects)}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def broken_image(rng: np.random.Generator) -> bytes:
    """Bytes that start like a PNG and then are noise: only a decoder can tell."""
    return b"\x89PNG\r\n\x1a\n" + rng.bytes(200)


def truncated(data: bytes) -> bytes:
    return data[: len(data) * 3 // 5]


def json_bytes(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()


def jsonl_bytes(rows: list) -> bytes:
    """Rows are objects, or raw `bytes` lines written as they are (for malformed lines)."""
    return b"".join((row if isinstance(row, bytes) else json_bytes(row)) + b"\n" for row in rows)


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_gzip(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                mtime=0) as out:
        out.write(data)


def write_parquet(path: Path, columns: dict[str, list], schema: pa.Schema,
                  row_group_size: int = 256) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pydict(columns, schema=schema)
    pq.write_table(table, path, row_group_size=row_group_size, compression="zstd")


class TarBuilder:
    """Writes a tar whose bytes depend only on the members added, in the order added."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # closed by close(), which the kind writers call once every member is added
        self._tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def __enter__(self) -> TarBuilder:
        return self

    def __exit__(self, *exc) -> None:
        self._tar.close()


def tar_shards(folder: Path, pattern: str, count: int, per_tar: int):
    """(index, TarBuilder) for records 0..count-1, `per_tar` to a tar named
    `pattern.format(shard)`: a corpus at a large scale gets more shards, as real ones do,
    not bigger ones (a shard is a build unit, so its size bounds the build's parallelism)."""
    for first in range(0, count, per_tar):
        with TarBuilder(folder / pattern.format(first // per_tar)) as tar:
            for index in range(first, min(first + per_tar, count)):
                yield index, tar
