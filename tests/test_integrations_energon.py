"""Megatron-Energon reads mixdata shards: `energon prepare` (its CLI, non-interactive) indexes a
built stage as it is, and energon's own loader with mixdata's task encoder gives exactly the
batches `mixdata.load` gives for the same sequences."""
import hashlib
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from build_fixtures import write_corpus, write_recipe
from megatron.energon import WorkerConfig, get_loader, get_train_dataset

from mixdata import load
from mixdata.building import build_stage
from mixdata.integrations.energon import task_encoder
from mixdata.manifest import read_manifest
from mixdata.recipe import load_recipe

ENERGON = Path(sys.executable).with_name("energon")   # the CLI the package installs


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The fixture corpus's sft stage (chat with images + captions), prepared by energon."""
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"))
    folder = Path(build_stage(load_recipe(write_recipe(corpus)), "sft",
                              out=tmp_path_factory.mktemp("built") / "sft", progress=False))
    entries, before = {p.name for p in folder.iterdir()}, digests(folder)
    done = subprocess.run([str(ENERGON), "prepare", str(folder), "--non-interactive",
                           "--split-ratio", "1,0,0", "--sample-type", "CrudeWebdataset",
                           "--no-progress", "--num-workers", "1"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    # energon added its index (.nv-meta/, a .tar.idx per shard) and changed none of our files
    added = {p.name for p in folder.iterdir()} - entries
    assert added == {".nv-meta"} | {f"{name}.idx" for name in before if name.endswith(".tar")}
    assert digests(folder, only=before) == before
    assert (folder / ".nv-meta" / "dataset.yaml").read_text().split() == [
        "__module__:", "megatron.energon", "__class__:", "CrudeWebdataset"]
    return folder


def digests(folder: Path, only=None) -> dict[str, str]:
    names = only or [p.name for p in folder.iterdir() if p.is_file()]
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in names}


def energon_batches(folder: Path, batch_size: int, workers: int = 0) -> list[dict]:
    """One pass of energon's own loader (no shuffle, no repeat), its watchdog thread off."""
    dataset = get_train_dataset(
        str(folder), batch_size=batch_size, shuffle_buffer_size=None,
        max_samples_per_sequence=None, repeat=False, task_encoder=task_encoder(folder),
        worker_config=WorkerConfig(rank=0, world_size=1, num_workers=workers))
    loader = get_loader(dataset, watchdog_timeout_seconds=None)
    batches = list(loader)
    del loader   # its worker processes end with it
    return batches


def mixdata_rows(folder: Path) -> dict[bytes, dict]:
    """Every sequence of the stage as mixdata.load's one-row batch, keyed by its tokens."""
    rows = {}
    for batch in load(str(folder), batch_size=1, shuffle_buffer=0, epochs=1):
        rows[batch["input_ids"][0].numpy().tobytes()] = batch
    return rows


def assert_same_batch(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("workers", [0, 1])   # 1: the task encoder runs in a worker process
def test_energon_batches_equal_mixdata_batches_row_for_row(prepared, workers):
    expected = mixdata_rows(prepared)
    got = energon_batches(prepared, 1, workers)
    assert len(got) == len(expected) == read_manifest(prepared).samples
    assert sum(b["num_images"] for b in got) > 0
    seen = set()
    for batch in got:
        key = batch["input_ids"][0].numpy().tobytes()
        assert_same_batch(batch, expected[key])
        seen.add(key)
    assert seen == expected.keys()   # every sequence once


def test_multi_row_energon_batches_hold_the_same_rows(prepared):
    """Rows batched together keep their own labels, positions, documents and pixel views."""
    expected = mixdata_rows(prepared)
    batches = energon_batches(prepared, 4)
    samples = read_manifest(prepared).samples
    assert [len(b["input_ids"]) for b in batches] == [4] * (samples // 4) + [samples % 4] * (
        samples % 4 > 0)
    for batch in batches:
        assert batch["pixel_values"].dtype == torch.uint8
        for row in range(len(batch["input_ids"])):
            alone = expected[batch["input_ids"][row].numpy().tobytes()]
            for key in ("labels", "position_ids", "doc_ids"):
                assert torch.equal(batch[key][row], alone[key][0]), key
            mine = batch["tile_spans"][:, 0] == row
            assert torch.equal(batch["pixel_values"][mine], alone["pixel_values"])
            assert torch.equal(batch["tile_spans"][mine][:, 1:], alone["tile_spans"][:, 1:])
        rows = [expected[r.numpy().tobytes()] for r in batch["input_ids"]]
        assert batch["num_tokens"] == sum(r["num_tokens"] for r in rows)
        assert batch["num_images"] == sum(r["num_images"] for r in rows)


def test_a_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "megatron.energon", None)   # import now fails
    monkeypatch.delitem(sys.modules, "mixdata.integrations.energon")
    with pytest.raises(ImportError, match=r"pip install mixdata\[energon\]"):
        importlib.import_module("mixdata.integrations.energon")
