"""End-to-end builds on a tiny generated corpus: accounting, determinism, re-mix, crash-resume."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from build_fixtures import write_corpus, write_recipe
from mixdata.building import build_stage
from mixdata.errors import MixdataError
from mixdata.recipe import load_recipe

pytest.importorskip("mixdata.tokens")


def _digest(folder: Path) -> dict:
    files = sorted(folder.glob("shard-*.tar")) + [folder / "manifest.json", folder / "rejects.jsonl"]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    recipe = load_recipe(write_recipe(corpus))
    out = tmp_path_factory.mktemp("built")
    return recipe, {s: build_stage(recipe, s, out=out / s, progress=False) for s in recipe.stages}


def test_manifest_accounts_for_every_record(built):
    _, outs = built
    for folder in outs.values():
        manifest = json.loads((folder / "manifest.json").read_text())
        rejects = [json.loads(line) for line in (folder / "rejects.jsonl").read_text().splitlines()]
        for name, src in manifest["sources"].items():
            assert src["read"] == src["written"] + src["rejected"] + src["unused"], name
            assert src["rejected"] == sum(1 for r in rejects if r["source"] == name)
            assert set(src) >= {"read", "written", "rejected", "unused", "tokens", "images",
                                "epochs", "share_tokens", "share_samples", "target_share"}
        for reject in rejects:
            assert set(reject) == {"source", "locator", "reason", "message"} and reject["reason"]
        shards = manifest["shards"]
        assert shards and all({"name", "samples", "sha256"} <= set(s) for s in shards)
        for shard in shards:
            data = (folder / shard["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        pack = manifest["packing"]
        assert pack["sequences"] == sum(s["samples"] for s in shards)
        assert 0 < pack["efficiency"] <= 1


def test_rejects_name_the_bad_records(built):
    _, outs = built
    reasons = {json.loads(line)["reason"]
               for line in (outs["pretrain"] / "rejects.jsonl").read_text().splitlines()}
    assert "duplicate" in reasons  # exact duplicate text doc
    assert any(r.startswith("image") for r in reasons)  # the broken jpeg
    sft = {json.loads(line)["reason"] for line in (outs["sft"] / "rejects.jsonl").read_text().splitlines()}
    assert sft  # the llava entry whose <image> count mismatches


def test_budget_and_shares(built):
    recipe, outs = built
    manifest = json.loads((outs["pretrain"] / "manifest.json").read_text())
    assert manifest["packing"]["tokens"] >= 3000
    for src in manifest["sources"].values():
        assert abs(src["share_tokens"] - src["target_share"]) < 0.1
    sft = json.loads((outs["sft"] / "manifest.json").read_text())["sources"]
    assert sft["chat"]["target_share"] == pytest.approx(2 / 3, abs=1e-6)


def test_shards_read_with_stock_webdataset_and_datasets(built):
    import webdataset as wds
    from datasets import load_dataset

    _, outs = built
    folder = outs["pretrain"]
    urls = [str(p) for p in sorted(folder.glob("shard-*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(samples) == manifest["packing"]["sequences"]
    assert {"tokens.npy", "loss.npy", "docs.npy", "json"} <= set(samples[0])
    from mixdata.shards import hf_features, iter_shard

    with open(urls[0], "rb") as fh:
        sequences = list(iter_shard(fh))
    richest = max(sequences, key=lambda s: len(s.images))
    most = max(len(s["json"]["images"]) if isinstance(s["json"], dict)
               else len(json.loads(s["json"])["images"]) for s in samples)
    ds = load_dataset("webdataset", data_files={"train": urls}, split="train",
                      features=hf_features(richest, max_images=most))
    assert len(ds) == len(samples)


def test_same_bytes_for_any_worker_count(corpus, built, tmp_path):
    recipe, outs = built
    again = build_stage(recipe, "pretrain", out=tmp_path / "w2", workers=2, progress=False)
    assert _digest(again) == _digest(outs["pretrain"])


def test_remix_reuses_prepared_units(corpus, tmp_path):
    recipe = load_recipe(write_recipe(corpus))
    out = tmp_path / "stage"
    build_stage(recipe, "pretrain", out=out, progress=False)
    before = {p: p.stat().st_mtime_ns for p in (out / ".prepare").rglob("*.arrow")}
    remixed = load_recipe(write_recipe(corpus, pretrain_weights=(1, 3)))
    build_stage(remixed, "pretrain", out=out, progress=False)
    after = {p: p.stat().st_mtime_ns for p in (out / ".prepare").rglob("*.arrow")}
    assert all(after[p] == t for p, t in before.items())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"]["text"]["target_share"] == pytest.approx(0.75)


def test_too_small_source_names_itself(corpus):
    recipe = load_recipe(write_recipe(corpus, budget_tokens=10_000_000))
    with pytest.raises(MixdataError, match="captions|text"):
        build_stage(recipe, "pretrain", out=corpus / "never", progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["prepare:1", "prepare:2", "write:1", "write:2"])
def test_kill_and_rerun_equals_uninterrupted(corpus, built, tmp_path, fault):
    recipe_path = write_recipe(corpus)
    out = tmp_path / "crashy"
    cmd = [sys.executable, "-m", "mixdata.cli", "build", str(recipe_path), "--stage", "pretrain",
           "--out", str(out), "--workers", "1", "--quiet"]
    env = {**os.environ, "MIXDATA_FAULT_AFTER": fault}
    killed = subprocess.run(cmd, env=env, capture_output=True)
    assert killed.returncode == -9
    assert not (out / "manifest.json").exists()
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _digest(out) == _digest(built[1]["pretrain"])
