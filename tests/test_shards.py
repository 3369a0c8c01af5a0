"""The shard format: byte-determinism, atomic writes, validation, stock-reader compatibility."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
from shard_fixtures import fixture_sequence, write_stage

from mixdata.shards import (
    PackedSequence,
    ShardError,
    hf_features,
    iter_shard,
    load_array,
    write_shard,
)


def _sequences(seed: int, count: int) -> list[PackedSequence]:
    rng = np.random.default_rng(seed)
    return [fixture_sequence(rng, f"k{i:04d}") for i in range(count)]


def _same(a: PackedSequence, b: PackedSequence) -> bool:
    return (a.key == b.key and a.meta == b.meta and a.images == b.images
            and all(np.array_equal(getattr(a, n), getattr(b, n)) and
                    getattr(a, n).dtype == getattr(b, n).dtype for n in ("tokens", "loss", "docs")))


def test_round_trip_and_info(tmp_path):
    sequences = _sequences(1, 7)
    info = write_shard(tmp_path / "a.tar", sequences)
    data = (tmp_path / "a.tar").read_bytes()
    assert info.name == "a.tar" and info.samples == 7 and info.bytes == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.tokens == sum(len(s.tokens) for s in sequences)
    assert info.images == sum(len(s.images) for s in sequences) > 0
    with open(tmp_path / "a.tar", "rb") as fh:
        back = list(iter_shard(fh))
    assert len(back) == 7 and all(_same(a, b) for a, b in zip(sequences, back))
    assert [p.name for p in tmp_path.iterdir()] == ["a.tar"]  # no temp file left


def test_bytes_are_deterministic_and_headers_fixed(tmp_path):
    first = write_shard(tmp_path / "a.tar", _sequences(2, 5))
    second = write_shard(tmp_path / "b.tar", _sequences(2, 5))
    assert first.sha256 == second.sha256
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
    assert all((m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)
               for m in members)
    key = members[0].name.split(".")[0]
    names = [m.name for m in members if m.name.startswith(key + ".")]
    assert names[:4] == [f"{key}.json", f"{key}.tokens.npy", f"{key}.loss.npy", f"{key}.docs.npy"]


def test_failed_write_leaves_nothing(tmp_path):
    good = _sequences(3, 2)
    bad = PackedSequence(key="bad", tokens=np.zeros(3, np.int64), loss=np.zeros(3, np.uint8),
                         docs=np.asarray([0, 3], np.int32), images=[], meta={})
    with pytest.raises(ShardError, match="tokens must be a 1-D int32"):
        write_shard(tmp_path / "x.tar", [*good, bad])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("field,value,message", [
    ("docs", np.asarray([0, 2], np.int32), "docs must rise"),
    ("loss", np.zeros(1, np.uint8), "loss flags"),
    ("key", "a.b", "a key may hold only"),
])
def test_malformed_sequences_are_refused(tmp_path, field, value, message):
    seq = _sequences(4, 1)[0]
    fields = {**seq.__dict__, field: value}
    with pytest.raises(ShardError, match=message):
        write_shard(tmp_path / "x.tar", [PackedSequence(**fields)])


def _tar_with(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return out.getvalue()


def _members(seq: PackedSequence) -> list[tuple[str, bytes]]:
    from mixdata.shards import sequence_members
    return list(sequence_members(seq))


def test_corrupt_member_is_named_or_yielded_in_place():
    a, b, c = _sequences(5, 3)
    broken = [(n, b"not an npy" if n.endswith(".loss.npy") else p) for n, p in _members(b)]
    data = _tar_with(_members(a) + broken + _members(c))
    with pytest.raises(ShardError, match=r"x\.tar: sample 'k0001': member loss\.npy"):
        list(iter_shard(io.BytesIO(data), name="x.tar"))
    items = list(iter_shard(io.BytesIO(data), name="x.tar", strict=False))
    assert isinstance(items[1], ShardError) and _same(items[0], a) and _same(items[2], c)


def test_pickled_arrays_are_refused():
    seq = _sequences(6, 1)[0]
    buffer = io.BytesIO()
    np.save(buffer, np.asarray([{"x": 1}], dtype=object), allow_pickle=True)
    members = [(n, buffer.getvalue() if n.endswith("tokens.npy") else p) for n, p in _members(seq)]
    with pytest.raises(ShardError, match=r"tokens\.npy is not a valid \.npy"):
        list(iter_shard(io.BytesIO(_tar_with(members))))


@pytest.mark.parametrize("array", [
    np.arange(7, dtype=np.int32), np.zeros(0, np.uint8), np.ones((3, 4), np.float64),
    np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4)), np.int64(5)])
def test_npy_members_parse_as_numpy_loads_them(array):
    for version in ((1, 0), (2, 0)):
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, array, version=version)
        parsed = load_array("k", "x.npy", buffer.getvalue())
        loaded = np.load(io.BytesIO(buffer.getvalue()))
        assert parsed.dtype == loaded.dtype and np.array_equal(parsed, loaded)
        assert parsed.flags.f_contiguous == loaded.flags.f_contiguous


def test_npy_with_the_wrong_data_length_is_refused():
    buffer = io.BytesIO()
    np.save(buffer, np.arange(8, dtype=np.int32))
    for payload in (buffer.getvalue()[:-4], buffer.getvalue() + b"\0" * 4):
        with pytest.raises(ShardError, match=r"x\.npy is not a valid \.npy: \d+ data bytes"):
            load_array("k", "x.npy", payload)


def test_truncated_tar_raises_and_skip_passes_over(tmp_path):
    write_shard(tmp_path / "a.tar", _sequences(7, 6))
    data = (tmp_path / "a.tar").read_bytes()
    with pytest.raises(ShardError, match="unreadable tar"):
        list(iter_shard(io.BytesIO(data[: len(data) // 2 + 100]), strict=False))
    with pytest.raises(ShardError, match="unreadable tar"):
        list(iter_shard(io.BytesIO(b"garbage" * 200)))
    tail = list(iter_shard(io.BytesIO(data), skip=4))
    assert [s.key for s in tail] == ["k0004", "k0005"]


def test_reads_with_stock_webdataset_and_hf_datasets(tmp_path):
    import webdataset as wds
    from datasets import load_dataset

    manifest = write_stage(tmp_path / "stage", [5, 4], seed=3)
    urls = [str(tmp_path / "stage" / s.name) for s in manifest.shards]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(samples) == 9
    tokens = np.load(io.BytesIO(samples[0]["tokens.npy"]), allow_pickle=False)
    assert tokens.dtype == np.int32 and json.loads(samples[0]["json"])["docs"]
    # Image counts vary per sequence, so HF needs the columns spelled out.
    with open(urls[0], "rb") as fh:
        sequences = list(iter_shard(fh))
    richest = max(sequences, key=lambda s: len(s.images))
    features = hf_features(richest, max_images=4)
    ds = load_dataset("webdataset", data_files={"train": urls}, split="train",
                      features=features, cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 9
    assert np.array_equal(np.asarray(ds[0]["tokens.npy"]), tokens)
    with_image = next(i for i, s in enumerate(sequences) if s.images)
    assert ds[with_image]["000.jpg"].size == tuple(
        sequences[with_image].meta["images"][0]["plan"]["resized_size"])


def test_uniform_stage_reads_with_plain_hf_call(tmp_path):
    from datasets import load_dataset

    manifest = write_stage(tmp_path / "text", [3, 3], seed=4, image_rate=0.0)
    urls = [str(tmp_path / "text" / s.name) for s in manifest.shards]
    ds = load_dataset("webdataset", data_files={"train": urls}, split="train",
                      cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 6 and ds.features["tokens.npy"].feature.dtype == "int32"
