"""`--engine ray` on a real two-node Ray cluster on loopback: the local engine's bytes, also
when a Ray worker is SIGKILLed in the middle of preparing a unit (Ray retries the task)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from mixdata.building import build_stage
from mixdata.building import stage as stage_module
from mixdata.building.pool import RAY_LOOPBACK
from mixdata.errors import MixdataError
from mixdata.recipe import parse_recipe

os.environ.setdefault(RAY_LOOPBACK, "0")  # read when Ray is imported: nodes on 127.0.0.1 only
import ray
from build_fixtures import write_corpus
from ocr_fixtures import make_pdf
from ray.cluster_utils import Cluster

from mixdata.building.ray_engine import RayEngine

WORDS = ["the", "a", "red", "blue", "circle", "square", "page", "text", "near", "left",
         "right", "small", "big", "scene"]


def _corpus(root: Path) -> dict:
    """Eight units of a few hundred ms each (two caption tars, four text files, two PDFs),
    in one stage without a budget, so every unit is prepared in one round."""
    write_corpus(root, n_captions=500)
    for part in range(4):
        with open(root / "text" / f"part-{part}.jsonl", "w") as fh:
            for i in range(1500):
                words = [WORDS[(i * 7 + k * part) % len(WORDS)] for k in range(40 + i % 50)]
                fh.write(json.dumps({"id": f"p{part}-{i}", "text": " ".join(words)}) + "\n")
    (root / "pdf").mkdir()
    for n in range(2):
        pages = [f"page {p} of document {n}: " + " ".join(WORDS) for p in range(4)]
        (root / "pdf" / f"doc-{n}.pdf").write_bytes(make_pdf(pages))
    image = {"preset": "none", "max_side": 32}
    return {
        "name": "ray-fixture", "seed": 3, "tokenizer": "bytes", "seq_len": 512,
        "image_tokens_per_tile": 4,
        "sources": {
            "captions": {"format": "img2dataset", "uri": f"{root}/captions/*.tar"},
            "text": {"format": "jsonl-text", "uri": f"{root}/text/part-*.jsonl",
                     "filters": {"dedup": True}},
            "pdfs": {"format": "pdf", "uri": f"{root}/pdf/*.pdf", "dpi": 36},
        },
        "stages": {"mix": {"image": image, "mixture": {"captions": 2, "text": 1, "pdfs": 1},
                           "pack": {"sequences_per_shard": 16}},
                   "budgeted": {"image": image, "budget": {"tokens": 20000},
                                "mixture": {"captions": 1, "text": 1},
                                "pack": {"sequences_per_shard": 4}}},
        "train": {"model": "tiny"},
    }


def _digest(folder: Path) -> dict[str, str]:
    files = [*sorted(folder.glob("shard-*.tar")), folder / "manifest.json",
             folder / "rejects.jsonl"]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        try:
            children = Path(f"/proc/{stack.pop()}/task").glob("*/children")
            kids = [int(c) for path in children for c in path.read_text().split()]
        except OSError:
            continue
        found += kids
        stack += kids
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _kill_a_worker_preparing(killed: list[int]):
    """on_result hook: at the first prepared unit, SIGKILL a Ray worker process that is
    preparing another one (Ray titles it `ray::prepare_unit` while the task runs)."""

    def on_result(phase: str, done: int) -> None:
        if phase != "prepare" or killed:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            busy = [p for p in _descendants(os.getpid())
                    if _cmdline(p).startswith("ray::prepare_unit")]
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])
                return
            time.sleep(0.005)
        raise AssertionError("no Ray worker was preparing a unit")
    return on_result


def _listening_addresses(pids: list[int]) -> set[str]:
    import psutil

    found = set()
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="inet")
        except psutil.Error:
            continue
        found |= {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN}
    return found


def _raise_mixdata_error(task: int) -> int:
    if task == 2:
        raise MixdataError(f"task {task} says: fix the input")
    return task


def _errors_come_back_as_themselves(address: str) -> None:
    """A MixdataError raised in a Ray task reaches the build as itself (its message is what
    the user must read), not wrapped in Ray's RayTaskError; tasks stop at the first."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers lack tests/
    engine = RayEngine(1, address=address)
    try:
        assert engine.workers == 2  # the cluster's CPUs, once connected
        with pytest.raises(MixdataError, match=r"^task 2 says: fix the input$") as caught:
            list(engine.map(_raise_mixdata_error, range(5), "test"))
        assert not isinstance(caught.value, ray.exceptions.RayTaskError)
    finally:
        engine.close()


@pytest.mark.slow
def test_ray_cluster_builds_the_local_bytes_even_when_a_worker_dies(tmp_path, monkeypatch):
    monkeypatch.setattr(stage_module, "CHUNK_DOCS", 1024)  # plan chunks are Ray tasks too
    recipe = parse_recipe(_corpus(tmp_path / "corpus"), file=str(tmp_path / "r.yaml"))
    local = {s: _digest(build_stage(recipe, s, out=tmp_path / "local" / s, progress=False))
             for s in recipe.stages}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "object_store_memory": 100 * 2 ** 20})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=100 * 2 ** 20)
        assert cluster.address.startswith("127.0.0.1:")
        phases: list[str] = []
        for stage in recipe.stages:
            out = build_stage(recipe, stage, out=tmp_path / "ray" / stage, progress=False,
                              engine="ray", address=cluster.address,
                              on_result=lambda phase, done: phases.append(phase))
            assert _digest(out) == local[stage], stage
            assert json.loads((out / "timings.json").read_text())["engine"] == "ray"
        assert phases.count("plan") > 2 and phases.count("write") > 2
        assert _listening_addresses(_descendants(os.getpid())) <= {"127.0.0.1",
                                                                  "::ffff:127.0.0.1"}
        killed: list[int] = []
        out = build_stage(recipe, "mix", out=tmp_path / "killed", progress=False,
                          engine="ray", address=cluster.address,
                          on_result=_kill_a_worker_preparing(killed))
        assert killed and _digest(out) == local["mix"]
        _errors_come_back_as_themselves(cluster.address)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
