"""Damaged input units of the kinds real corpora hold, beside good ones (generated, real tars).

`write_damaged_corpus(root)` writes caption tars in the img2dataset layout (`KEY.jpg`,
`KEY.txt`) and returns what a build must make of each unit: the keys it must write, and the
rejects (reason, count) it must report.
"""
from __future__ import annotations

import gzip
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

RECORDS = 10  # samples per tar


@dataclass
class Expected:
    written: set[str] = field(default_factory=set)        # caption texts that must be written
    rejects: dict[str, int] = field(default_factory=dict)  # reason -> count


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def caption(unit: str, index: int) -> str:
    return f"caption {index} of unit {unit} with a few words"


def _member(name: str, data: bytes, kind: bytes = tarfile.REGTYPE, link: str = ""):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.type, info.linkname = len(data), 0, kind, link
    if kind != tarfile.REGTYPE:
        info.size = 0
    return info, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def sample_members(unit: str, index: int) -> list[tuple[tarfile.TarInfo, io.BytesIO | None]]:
    key = f"{index:09d}"
    return [_member(f"{key}.jpg", jpeg(hash((unit, index)) % 2**32)),
            _member(f"{key}.txt", caption(unit, index).encode())]


def tar_bytes(members) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, data)
    return out.getvalue()


def header_offsets(data: bytes) -> list[tuple[str, int, int]]:
    """(name, header offset, data offset) of every member of a tar."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, m.offset, m.offset_data) for m in tar.getmembers()]


def write_damaged_corpus(root: Path) -> Expected:
    root.mkdir(parents=True, exist_ok=True)
    expected = Expected()

    def good(unit: str) -> bytes:
        members = [m for i in range(RECORDS) for m in sample_members(unit, i)]
        expected.written.update(caption(unit, i) for i in range(RECORDS))
        return tar_bytes(members)

    for n in range(4):
        (root / f"good-{n}.tar").write_bytes(good(f"good-{n}"))
    _cut_tars(root, expected)
    (root / "zero.tar").write_bytes(b"")
    expected.rejects["unit_empty"] = 1
    (root / "no-members.tar").write_bytes(tar_bytes([]))  # valid: only end-of-archive blocks
    (root / "gzipped.tar").write_bytes(gzip.compress(good("gzipped"), mtime=0))
    _unsafe_tar(root, expected)
    _duplicate_tar(root, expected)
    return expected


def _cut_tars(root: Path, expected: Expected) -> None:
    """Three tars cut in record 6: inside its .txt header, inside its .jpg data, and at the
    block boundary where its .txt header starts. Records 0-5 come before the cut."""
    for how in ("header", "member", "boundary"):
        unit = f"cut-{how}"
        data = tar_bytes([m for i in range(RECORDS) for m in sample_members(unit, i)])
        offsets = {name: (head, body) for name, head, body in header_offsets(data)}
        _jpg_head, jpg_body = offsets["000000006.jpg"]
        txt_head, _ = offsets["000000006.txt"]
        cut = {"header": txt_head + 100, "member": jpg_body + 50, "boundary": txt_head}[how]
        (root / f"{unit}.tar").write_bytes(data[:cut])
        expected.written.update(caption(unit, i) for i in range(6))
    expected.rejects["unit_truncated"] = 3


def _unsafe_tar(root: Path, expected: Expected) -> None:
    unit = "unsafe"
    members = sample_members(unit, 0)
    members += [_member("../escape.txt", b"climbs out"),
                _member("/tmp/mixdata-absolute-escape.txt", b"absolute"),
                _member("000000002.jpg", b"", tarfile.SYMTYPE, "/etc/passwd"),
                _member("000000002.txt", caption(unit, 2).encode()),
                _member("000000003.jpg", b"", tarfile.LNKTYPE, "000000000.jpg"),
                _member("000000003.txt", caption(unit, 3).encode())]
    members += sample_members(unit, 4)
    (root / f"{unit}.tar").write_bytes(tar_bytes(members))
    expected.written.update({caption(unit, 0), caption(unit, 4)})
    expected.rejects["unsafe_member"] = 4


def _duplicate_tar(root: Path, expected: Expected) -> None:
    unit = "dupkeys"
    members = sample_members(unit, 0) + sample_members(unit, 1)
    again = sample_members(unit, 0)
    again[1] = _member("000000000.txt", b"a second sample under an earlier key")
    (root / f"{unit}.tar").write_bytes(tar_bytes(members + again))
    expected.written.update({caption(unit, 0), caption(unit, 1)})
    expected.rejects["duplicate_key"] = 1
