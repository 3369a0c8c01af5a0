"""mixdata.load over HTTP, over mixtures of stages, and through corrupt and missing shards."""
from __future__ import annotations

import io
import shutil
import tarfile

import numpy as np
import pytest
import torch
from loopback import serve
from resume_check import assert_same, check_resume
from shard_fixtures import write_stage
from test_load import _all_sequences, _rows

from mixdata import load
from mixdata.errors import MixdataError


@pytest.fixture
def http_root(tmp_path):
    """(folder, base URL): `folder` served over loopback HTTP for the test's duration."""
    with serve(tmp_path) as (url, _):
        yield tmp_path, url


def _epoch(where, **kwargs):
    return list(load(where, batch_size=3, seed=7, shuffle_buffer=4, epochs=1, streams=1,
                     **kwargs))


def test_http_streaming_equals_local_reading(http_root):
    root, url = http_root
    write_stage(root / "stage", [5, 6, 4], seed=2)
    local = _epoch(root / "stage")
    assert_same(_epoch(f"{url}/stage"), local)
    assert_same(_epoch(f"{url}/stage/manifest.json"), local)
    (root / "stage" / "shard-000001.tar").unlink()
    with pytest.raises(MixdataError, match=r"shard-000001\.tar is missing"):
        _epoch(f"{url}/stage")
    with pytest.raises(MixdataError, match="no manifest at"):
        load(f"{url}/elsewhere", batch_size=2)


def _rewrite(path, change) -> None:
    """Rewrite a tar with `change(name, payload) -> payload` applied to every member."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, payload in members:
            payload = change(name, payload)
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    path.write_bytes(out.getvalue())


def test_corrupt_shard_is_skipped_counted_and_made_up(tmp_path, caplog):
    write_stage(tmp_path, [6, 6, 6], seed=3)
    clean = _epoch(tmp_path)
    shard = tmp_path / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])  # truncated in its first samples
    ds = load(tmp_path, batch_size=3, seed=7, shuffle_buffer=4, epochs=1, streams=1)
    batches = list(ds)
    assert len(batches) == len(clean) == 6  # same work: the lost samples are made up
    stats = ds.stats
    assert stats["shards_failed"] == 1 and stats["samples_failed"] >= 4
    assert stats["samples_repeated"] == stats["samples_failed"]
    assert "shard-000001.tar" in caplog.text
    good = set(_all_sequences_except(tmp_path, "shard-000001.tar"))
    assert all(key in good for batch in batches for key in _rows(batch))


def test_reading_past_a_corrupt_shard_resumes_exactly_at_every_batch(tmp_path):
    write_stage(tmp_path, [6, 6, 6], seed=3)
    shard = tmp_path / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])

    def make():
        return load(tmp_path, batch_size=3, seed=7, shuffle_buffer=4, epochs=2,
                    streams=2).loader(num_workers=2)

    check_resume(make, total=8)  # 6 batches per epoch: into epoch 1


def _all_sequences_except(folder, name):
    keep = folder.parent / f"{folder.name}-keep"
    keep.mkdir()
    for path in folder.glob("shard-*.tar"):
        if path.name != name:
            shutil.copy(path, keep / path.name)
    return _all_sequences(keep)


def test_corrupt_member_and_image_are_skipped(tmp_path):
    write_stage(tmp_path, [8, 8], seed=4, image_rate=1.0)
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard) as tar:
        names = tar.getnames()
    bad_npy = names[2]  # the first sample's loss.npy
    bad_jpg = [n for n in names if n.endswith(".jpg")][-1]  # in a sample not made up
    _rewrite(shard, lambda n, p: b"junk" if n == bad_npy else
             (p[:40] + b"\0" * (len(p) - 40) if n == bad_jpg else p))
    ds = load(tmp_path, batch_size=4, seed=1, shuffle_buffer=0, epochs=1, streams=1)
    batches = list(ds)
    assert len(batches) == 4 and all(b["input_ids"].shape[0] == 4 for b in batches)
    stats = ds.stats
    assert (stats["samples_failed"], stats["shards_failed"]) == (1, 0)
    assert stats["images_failed"] == 1 and stats["samples_repeated"] == 1
    for batch in batches:
        assert len(batch["tile_spans"]) == len(batch["pixel_values"])


def test_an_image_that_fails_only_when_decoded_replaces_its_row(tmp_path, caplog):
    write_stage(tmp_path, [8], seed=4, image_rate=1.0)
    reference = list(load(tmp_path, batch_size=4, seed=1, shuffle_buffer=0, epochs=1,
                          streams=1))
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard) as tar:
        bad = next(n for n in tar.getnames() if n.endswith(".jpg"))
    # header intact, so cut_row passes it; the entropy-coded data is garbage
    _rewrite(shard, lambda n, p: p[:len(p) // 2] + b"\xff\x00" * 64 if n == bad else p)
    ds = load(tmp_path, batch_size=4, seed=1, shuffle_buffer=0, epochs=1, streams=1)
    batches = list(ds)
    assert ds.stats["images_failed"] == 1 and "does not decode" in caplog.text
    first = batches[0]
    assert torch.equal(first["input_ids"][0], first["input_ids"][1])  # row 0 took row 1's
    assert not torch.equal(first["input_ids"][0], reference[0]["input_ids"][0])
    assert torch.equal(batches[1]["pixel_values"], reference[1]["pixel_values"])
    for batch in batches:
        assert len(batch["tile_spans"]) == len(batch["pixel_values"])


def test_failures_in_a_row_past_the_limit_raise_naming_the_shard(tmp_path):
    write_stage(tmp_path, [4, 4], seed=5)
    shard = tmp_path / "shard-000001.tar"
    _rewrite(shard, lambda n, p: b"junk" if n.endswith("tokens.npy") else p)
    with pytest.raises(MixdataError, match=r"4 read failures in a row .*shard-000001.tar"):
        list(load(tmp_path, batch_size=8, epochs=1, streams=1, max_failures=3))
    (tmp_path / "shard-000000.tar").unlink()
    with pytest.raises(MixdataError, match=r"shard-000000\.tar is missing"):
        _epoch(tmp_path)


def _source_of(batches, stages) -> list[int]:
    keys = [set(_all_sequences(stage)) for stage in stages]
    return [next(i for i, k in enumerate(keys) if row in k)
            for batch in batches for row in _rows(batch)]


def test_mixing_stages_follows_the_exact_schedule(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_stage(a, [6, 6], seed=6)
    write_stage(b, [10, 10], seed=7)
    ds = load([a, b], weights=[1, 3], batch_size=2, seed=3, shuffle_buffer=0, epochs=3,
              streams=1)
    batches = list(ds)
    assert len(batches) == 3 * ds.batches_per_epoch == 3 * 16
    sources = np.asarray(_source_of(batches, [a, b]))
    exact = 0.75 * np.arange(1, len(sources) + 1)
    assert np.abs(np.cumsum(sources == 1) - exact).max() <= 1
    # a is repeated in its own order: its 12 sequences fill its 24 slots twice over
    rows = [row for batch in batches for row in _rows(batch)]
    from_a = [row for row, source in zip(rows, sources) if source == 0]
    assert len(from_a) == 24 and len(set(from_a)) == 12


def test_mixture_resumes_exactly_and_refuses_mismatched_stages(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_stage(a, [6, 6], seed=6)
    write_stage(b, [10, 10], seed=7)

    def make():
        return load([a, b], weights=[2, 1], batch_size=4, seed=5, shuffle_buffer=6,
                    streams=2).loader(num_workers=2)

    check_resume(make, total=10)
    import json
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["seq_len"] = 64
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MixdataError, match="does not batch like"):
        load([a, b], batch_size=2)
    with pytest.raises(MixdataError, match="2 weights for 1 datasets"):
        load([a], weights=[1, 2], batch_size=2)


def test_pixels_survive_http_and_workers_bit_for_bit(http_root):
    root, url = http_root
    write_stage(root / "s", [6, 6], seed=8, image_rate=1.0)
    local = list(load(root / "s", batch_size=2, epochs=1, streams=2))
    remote = list(load(f"{url}/s", batch_size=2, epochs=1, streams=2).loader(num_workers=2))
    assert_same(remote, local)
    assert sum(int(b["pixel_values"].shape[0]) for b in local) > 0
    assert all(b["pixel_values"].dtype == torch.uint8 for b in remote)


def test_s3_streaming_equals_local_reading(tmp_path, s3_bucket):
    fs, bucket = s3_bucket
    write_stage(tmp_path / "stage", [4, 5], seed=9)
    for path in (tmp_path / "stage").iterdir():
        fs.put(str(path), f"{bucket}/stage/{path.name}")
    local = _epoch(tmp_path / "stage")
    assert_same(_epoch(f"s3://{bucket}/stage"), local)
    remote = load(f"s3://{bucket}/stage/manifest.json", batch_size=3, seed=7,
                  shuffle_buffer=4, epochs=1, streams=1).loader(num_workers=1)
    assert_same(list(remote), local)
