"""`--engine ray` on a real two-node Ray cluster on loopback: the local engine's bytes, also
when a Ray worker is SIGKILLed in the middle of preparing a unit (Ray retries the task, and
the manifest's `run` section says so); an address nothing answers at is a clear error."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mixdata.building import build_stage
from mixdata.building import stage as stage_module
from mixdata.building.engines import RAY_LOOPBACK
from mixdata.building.prepare import prepare_unit
from mixdata.errors import MixdataError
from mixdata.manifest import read_manifest
from mixdata.recipe import parse_recipe

os.environ.setdefault(RAY_LOOPBACK, "0")  # read when Ray is imported: nodes on 127.0.0.1 only
import ray  # in the dev extra
from build_fixtures import write_corpus
from ocr_fixtures import make_pdf
from ray.cluster_utils import Cluster

from mixdata.building.ray_engine import RayEngine

ROOT = Path(__file__).resolve().parent.parent

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


def _digest(folder: Path, *, without_run: bool = False) -> dict[str, str]:
    """sha256 of every shard, the manifest and rejects.jsonl; `without_run`: of the
    manifest less its `run` section (what depends on the run, not the recipe)."""
    files = [*sorted(folder.glob("shard-*.tar")), folder / "manifest.json",
             folder / "rejects.jsonl"]
    digests = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    if without_run:
        manifest = json.loads((folder / "manifest.json").read_text())
        del manifest["run"]
        digests["manifest.json"] = hashlib.sha256(
            json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return digests


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


KILLED_UNIT = "part-2.jsonl"


def _prepare_killing_its_worker_once(task):
    """prepare_unit, except that the first attempt at KILLED_UNIT SIGKILLs its own Ray worker
    process halfway (a marker beside the unit's cache files says it happened): what a node
    losing a worker to the OOM killer looks like to Ray."""
    marker = Path(task.path + ".killed")
    if task.unit.endswith(KILLED_UNIT) and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return prepare_unit(task)


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


def _a_killed_worker_changes_nothing_but_the_run(recipe, address: str, monkeypatch,
                                                 tmp_path: Path) -> None:
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers lack tests/
    monkeypatch.setattr(stage_module, "prepare_unit", _prepare_killing_its_worker_once)
    out = build_stage(recipe, "mix", out=tmp_path / "killed", progress=False, engine="ray",
                      address=address)
    monkeypatch.undo()
    killed = list((out / ".prepare" / "text").glob("*.killed"))
    assert len(killed) == 1  # one worker died, on the first attempt at that unit
    assert _digest(out, without_run=True) == _digest(tmp_path / "local" / "mix",
                                                     without_run=True)
    assert read_manifest(out).run.task_retries == {"prepare": 1}
    assert read_manifest(tmp_path / "local" / "mix").run.task_retries == {}
    assert json.loads((out / "timings.json").read_text())["task_retries"] == {"prepare": 1}


def test_an_address_nothing_answers_at_is_a_clear_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_corpus(tmp_path / "corpus")))
    env = {**os.environ, "PYTHONPATH": str(ROOT), RAY_LOOPBACK: "0",
           # Ray's connect waits, shorter still than the engine's (its CONNECT_ENV)
           "RAY_gcs_server_port_wait_time_s": "1", "RAY_gcs_rpc_server_connect_timeout_s": "2",
           "RAY_py_gcs_connect_timeout_s": "5"}
    done = subprocess.run([sys.executable, "-m", "mixdata.cli", "build", str(recipe),
                           "--stage", "mix", "--out", str(tmp_path / "out"), "--quiet",
                           "--engine", "ray", "--address", "127.0.0.1:1"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "cannot reach a Ray cluster at --address 127.0.0.1:1" in done.stderr
    assert "ray start --head" in done.stderr
    assert not list((tmp_path / "out").glob("shard-*"))


@pytest.mark.slow
def test_ray_cluster_builds_the_local_bytes_even_when_a_worker_dies(tmp_path, monkeypatch):
    monkeypatch.setattr(stage_module, "CHUNK_DOCS", 256)  # plan chunks are Ray tasks too
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
        _a_killed_worker_changes_nothing_but_the_run(recipe, cluster.address, monkeypatch,
                                                     tmp_path)
        _errors_come_back_as_themselves(cluster.address)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
