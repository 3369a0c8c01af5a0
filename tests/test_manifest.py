"""The manifest contract: typed round trip, one reader, and errors that name the bad key."""
from __future__ import annotations

import json

import pytest
from shard_fixtures import write_stage

from mixdata.errors import MixdataError
from mixdata.manifest import FORMAT, Manifest, read_manifest, write_manifest


def test_round_trip_through_folder_path_and_file_url(tmp_path):
    manifest = write_stage(tmp_path, [3, 2], seed=1)
    path = tmp_path / "manifest.json"
    assert json.loads(path.read_text()) == manifest.to_json()
    for where in (tmp_path, path, f"file://{path}"):
        assert read_manifest(where) == manifest
    assert read_manifest(tmp_path).samples == 5
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_written_bytes_depend_only_on_content(tmp_path):
    manifest = write_stage(tmp_path / "a", [2], seed=3)
    write_manifest(tmp_path, manifest)
    assert (tmp_path / "manifest.json").read_bytes() == (tmp_path / "a" / "manifest.json").read_bytes()


def test_errors_name_what_is_wrong(tmp_path):
    data = write_stage(tmp_path, [2], seed=2).to_json()
    with pytest.raises(MixdataError, match=r"no manifest at .*missing"):
        read_manifest(tmp_path / "missing")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(MixdataError, match="not valid JSON"):
        read_manifest(tmp_path / "bad.json")
    old = {**data, "format": "mixdata-shards-v1"}
    with pytest.raises(MixdataError, match=f"format 'mixdata-shards-v1', this mixdata reads '{FORMAT}'"):
        Manifest.from_json(old, "old.json")
    broken = json.loads(json.dumps(data))
    broken["shards"][0]["samples"] = "many"
    with pytest.raises(MixdataError, match=r"shards\[0\]\.samples: found 'many', expected an integer"):
        Manifest.from_json(broken, "m.json")
    broken = {k: v for k, v in data.items() if k != "geometry"}
    with pytest.raises(MixdataError, match=r"geometry: .*required"):
        Manifest.from_json(broken, "m.json")
