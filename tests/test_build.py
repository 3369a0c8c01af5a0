"""End-to-end builds on a tiny generated corpus: accounting, determinism, re-mix, crash-resume."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from build_fixtures import write_corpus, write_recipe

from mixdata.building import build_stage
from mixdata.building import plan as plan_module
from mixdata.building import pool as pool_module
from mixdata.building import stage as stage_module
from mixdata.building.accounts import AccountingError
from mixdata.errors import MixdataError
from mixdata.manifest import read_manifest
from mixdata.recipe import load_recipe


def _digest(folder: Path) -> dict:
    files = [*sorted(folder.glob("shard-*.tar")), folder / "manifest.json",
             folder / "rejects.jsonl"]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    recipe = load_recipe(write_recipe(corpus))
    out = tmp_path_factory.mktemp("built")
    return recipe, {s: build_stage(recipe, s, out=out / s, progress=False) for s in recipe.stages}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_manifest_accounts_for_every_record(built):
    _, outs = built
    for folder in outs.values():
        manifest = read_manifest(folder)
        rejects = _lines(folder / "rejects.jsonl")
        for name, src in manifest.sources.items():
            assert src.read == src.written + src.rejected + src.unused, name
            mine = [r for r in rejects if r["source"] == name]
            assert src.rejected == len(mine) == sum(src.rejected_by_reason.values())
            assert src.rejected_by_reason == dict(Counter(r["reason"] for r in mine))
            assert src.unused == sum(src.unused_by_reason.values())
            assert set(src.unused_by_reason) <= {"duplicate", "budget", "single_pass",
                                                 "sequence_budget"}
        for reject in rejects:
            assert set(reject) == {"source", "locator", "reason", "message"} and reject["reason"]
        assert manifest.shards
        for shard in manifest.shards:
            data = (folder / shard.name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard.sha256
        assert manifest.packing.sequences == manifest.samples
        assert 0 < manifest.packing.efficiency <= 1


def test_rejects_and_unused_name_their_reasons(built):
    _, outs = built
    pretrain = read_manifest(outs["pretrain"])
    assert pretrain.sources["text"].unused_by_reason.get("duplicate") == 1  # the copied doc
    assert pretrain.sources["text"].unused_by_reason.get("budget", 0) > 0
    reasons = {r["reason"] for r in _lines(outs["pretrain"] / "rejects.jsonl")}
    assert any(r.startswith("image") for r in reasons)  # the broken jpeg
    assert "bad_json" in reasons
    sft = {r["reason"] for r in _lines(outs["sft"] / "rejects.jsonl")}
    assert "image_count_mismatch" in sft  # the llava entry whose <image> count mismatches
    assert read_manifest(outs["sft"]).sources["chat"].unused_by_reason == {}


def test_dropping_a_record_fails_the_accounting_check(corpus, tmp_path, monkeypatch):
    real_pack = plan_module.pack_arrays

    def lossy_pack(lengths, *args, **kwargs):
        packed = real_pack(lengths, *args, **kwargs)
        k = next(k for k in range(len(packed.offsets) - 1)
                 if packed.offsets[k + 1] - packed.offsets[k] > 1)
        keep = np.ones(len(packed.order), bool)
        keep[packed.offsets[k]] = False  # one scheduled document never reaches a sequence
        offsets = packed.offsets - (np.arange(len(packed.offsets)) > k)
        return packed._replace(order=packed.order[keep], offsets=offsets)

    monkeypatch.setattr(plan_module, "pack_arrays", lossy_pack)
    recipe = load_recipe(write_recipe(corpus))
    with pytest.raises(AccountingError, match="unaccounted for"):
        build_stage(recipe, "pretrain", out=tmp_path / "lossy", progress=False)
    assert not (tmp_path / "lossy" / "manifest.json").exists()


def test_budget_and_shares(built):
    _recipe, outs = built
    manifest = read_manifest(outs["pretrain"])
    assert manifest.packing.tokens >= 3000
    for src in manifest.sources.values():
        assert abs(src.share_tokens - src.target_share) < 0.1
    sft = read_manifest(outs["sft"]).sources
    assert sft["chat"].target_share == pytest.approx(2 / 3, abs=1e-6)


def test_shards_read_with_stock_webdataset_and_datasets(built):
    import webdataset as wds
    from datasets import load_dataset

    _, outs = built
    folder = outs["pretrain"]
    urls = [str(p) for p in sorted(folder.glob("shard-*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == read_manifest(folder).packing.sequences
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


def test_same_bytes_for_any_worker_count(corpus, built, tmp_path, monkeypatch):
    recipe, outs = built
    small = build_stage(recipe, "pretrain", out=tmp_path / "small", workers=2, progress=False)
    assert not json.loads((small / "timings.json").read_text())["pool_started"]  # little work
    monkeypatch.setattr(pool_module, "START_WORK_S", 0)  # the pool, though the build is small
    again = build_stage(recipe, "pretrain", out=tmp_path / "w2", workers=2, progress=False)
    assert json.loads((again / "timings.json").read_text())["pool_started"]
    assert _digest(again) == _digest(small) == _digest(outs["pretrain"])


def test_plan_chunks_packed_on_the_pool_give_the_same_bytes(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(stage_module, "CHUNK_DOCS", 16)  # several chunks from the tiny corpus
    monkeypatch.setattr(pool_module, "START_WORK_S", 0)
    recipe = load_recipe(write_recipe(corpus))
    digests, chunks = {}, {}
    for workers in (1, 2):
        seen: list[str] = []
        out = build_stage(recipe, "sft", out=tmp_path / f"w{workers}", workers=workers,
                          progress=False, on_result=lambda phase, done: seen.append(phase))
        digests[workers], chunks[workers] = _digest(out), seen.count("plan")
        assert json.loads((out / "timings.json").read_text())["pool_started"] == (workers > 1)
    assert digests[1] == digests[2] and chunks[1] == chunks[2] > 2


def test_remix_reuses_prepared_units(corpus, tmp_path):
    recipe = load_recipe(write_recipe(corpus))
    out = tmp_path / "stage"
    build_stage(recipe, "pretrain", out=out, progress=False)
    before = {p: p.stat().st_mtime_ns for p in (out / ".prepare").rglob("*.arrow")}
    remixed = load_recipe(write_recipe(corpus, pretrain_weights=(1, 3)))
    build_stage(remixed, "pretrain", out=out, progress=False)
    after = {p: p.stat().st_mtime_ns for p in (out / ".prepare").rglob("*.arrow")}
    assert all(after[p] == t for p, t in before.items())
    assert read_manifest(out).sources["text"].target_share == pytest.approx(0.75)


def test_too_small_source_names_itself(corpus):
    recipe = load_recipe(write_recipe(corpus, budget_tokens=10_000_000))
    with pytest.raises(MixdataError, match=r"captions|text"):
        build_stage(recipe, "pretrain", out=corpus / "never", progress=False)


RUNNER = str(Path(__file__).with_name("build_runner.py"))


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["prepare:1", "prepare:2", "write:1", "write:2"])
def test_kill_and_rerun_equals_uninterrupted(corpus, built, tmp_path, fault):
    recipe_path = str(write_recipe(corpus))
    out = str(tmp_path / "crashy")
    killed = subprocess.run([sys.executable, RUNNER, recipe_path, "pretrain", out, "1", fault],
                            capture_output=True)
    assert killed.returncode == -9
    assert not (tmp_path / "crashy" / "manifest.json").exists()
    done = subprocess.run([sys.executable, RUNNER, recipe_path, "pretrain", out],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _digest(tmp_path / "crashy") == _digest(built[1]["pretrain"])
