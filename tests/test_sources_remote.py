"""Remote reads: a loopback HTTP server (Range requests, a 503 on the first request to one file),
S3 through moto's server mode, and memory while streaming a ~1 GB tar."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from loopback import serve_ranged
from ocr_fixtures import make_pdf, pdfa_json, read_counted
from source_fixtures import image_bytes, spec, write_tar

from mixdata.sources import open_source
from mixdata.storage import RetryCounter, open_binary


@pytest.fixture
def http_root(tmp_path):
    """(served folder, base URL, server) on 127.0.0.1, stopped and joined afterwards."""
    root = tmp_path / "served"
    root.mkdir()
    with serve_ranged(root) as (url, server):
        yield root, url, server


def _fixtures(root: Path) -> dict[str, Path]:
    """A pdfa tar, a RenderedText tar and a FineWeb parquet (two row groups)."""
    pages = [["page one text"], ["page two text"]]
    pdfa = write_tar(root / "pdfa-0000.tar", [
        ("0000001.pdf", make_pdf(["page one text", "page two text"])),
        ("0000001.json", pdfa_json(pages)),
        ("0000002.pdf", b"%PDF broken"), ("0000002.json", pdfa_json([["x"]])),
    ])
    rendered = write_tar(root / "rt-0.tar", [
        (name, data) for i in range(3) for name, data in (
            (f"k{i}.png", image_bytes(16, 8, shade=i)),
            (f"k{i}.json", json.dumps({"ocr_annotation": {"text": [f"w{i}"]}}).encode()))])
    web = root / "web.parquet"
    pq.write_table(pa.table({"text": [f"doc {i}" for i in range(5)], "id": list("abcde")}),
                   web, row_group_size=3)
    return {"pdfa-wds": pdfa, "renderedtext": rendered, "parquet-text": web}


def _same_items(remote: list, local: list) -> None:
    """Equal samples and rejects, up to the location prefix in locators."""
    def strip(item):
        return {**vars(item), "meta": {k: v for k, v in getattr(item, "meta", {}).items()
                                       if k != "locator"}, "locator": None}
    assert [strip(i) for i in remote] == [strip(i) for i in local]


@pytest.mark.parametrize("fmt", ["pdfa-wds", "renderedtext", "parquet-text"])
def test_http_read_retries_a_503_and_equals_the_local_read(http_root, fmt):
    root, base, server = http_root
    path = _fixtures(root)[fmt]
    # fsspec asks HEAD, then falls back to GET by itself: failing both makes the 503 reach
    # mixdata's retry, which must count it
    server.fail_first[path.name] = 2
    local, local_stats = read_counted(spec(fmt, str(path), dpi=72) if fmt == "pdfa-wds"
                                      else spec(fmt, str(path)))
    url = f"{base}/{path.name}"
    remote, stats = read_counted(spec(fmt, url, dpi=72) if fmt == "pdfa-wds" else spec(fmt, url))
    assert server.failures == [path.name] * 2
    assert stats.retries == 1
    assert local and len(remote) == len(local)
    _same_items(remote, local)
    assert (stats.read, stats.yielded, stats.rejected) == \
        (local_stats.read, local_stats.yielded, local_stats.rejected)


def test_open_binary_resumes_at_its_offset_after_a_503(http_root):
    """A ranged GET in the middle of a stream fails: the reader reopens at its offset."""
    root, base, server = http_root
    data = os.urandom(12 << 20)   # beyond fsspec's first 5 MiB block
    (root / "blob.bin").write_bytes(data)
    counter = RetryCounter()
    with open_binary(f"{base}/blob.bin", counter) as stream:
        head = stream.read(1 << 20)
        server.fail_first["blob.bin"] = 1   # the next request, for a later block, fails
        rest = stream.read()
    assert head + rest == data
    assert server.failures == ["blob.bin"] and counter.retries == 1
    ranges = [r for method, name, r in server.log if method == "GET" and r]
    assert len(ranges) >= 3   # streamed in blocks, never one whole-file GET


def test_s3_read_equals_the_local_read(tmp_path, s3_bucket):
    fs, bucket = s3_bucket
    fixtures = _fixtures(tmp_path)
    for path in fixtures.values():
        fs.put(str(path), f"{bucket}/data/{path.name}")
    for fmt, path in fixtures.items():
        options = {"dpi": 72} if fmt == "pdfa-wds" else {}
        local, _ = read_counted(spec(fmt, str(path), **options))
        remote, stats = read_counted(spec(fmt, f"s3://{bucket}/data/{path.name}", **options))
        _same_items(remote, local)
        assert stats.read == len(local) > 0
    globbed, _ = read_counted(spec("parquet-text", f"s3://{bucket}/data/*.parquet"))
    assert [i.text() for i in globbed] == [f"doc {i}" for i in range(5)]


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("where", ["local", "http"])
def test_a_1gb_tar_streams_in_bounded_memory(http_root, where):
    root, base, _ = http_root
    member = os.urandom(8 << 20)    # one random buffer reused: writing stays fast
    count = 128                     # 128 x 8 MiB = 1 GiB of image members
    path = write_tar(root / "big.tar", [
        (name, data) for i in range(count) for name, data in (
            (f"k{i:03d}.png", member),
            (f"k{i:03d}.json", b'{"ocr_annotation": {"text": ["big"]}}'))])
    del member
    assert path.stat().st_size > 1 << 30
    source = open_source(spec("renderedtext", str(path) if where == "local" else f"{base}/big.tar"))
    before, growth = _rss_kib(), []
    for item in source.read(source.units()[0]):
        growth.append((_rss_kib() - before) // 1024)
        del item
    path.unlink()
    assert len(growth) == count
    first, second = max(growth[:count // 2]), max(growth[count // 2:])
    print(f"{where}: RSS grew by {first} MiB over the first half, {second} MiB over the second")
    assert max(first, second) < 100
    assert second <= first + 8   # flat: reading more of the tar does not hold more
