"""Builds over damaged inputs and flaky networks: nothing stops them but too many rejects, and
every record read is accounted for."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from build_fixtures import recipe_dict as fixture_recipe
from build_fixtures import write_corpus
from damage_fixtures import write_damaged_corpus
from loopback import Fault, serve_ranged

from mixdata.building import build_stage
from mixdata.building.rejects import RejectLimitError
from mixdata.cli import main
from mixdata.manifest import read_manifest
from mixdata.recipe import load_recipe, parse_recipe
from mixdata.shards import iter_shard

RUNNER = str(Path(__file__).with_name("build_runner.py"))


def _recipe(uri: str, **source) -> dict:
    return {"name": "damaged", "seed": 3, "tokenizer": "bytes", "seq_len": 512,
            "image_tokens_per_tile": 4,
            "sources": {"caps": {"format": "img2dataset", "uri": uri, **source}},
            "stages": {"s": {"image": {"preset": "none", "max_side": 16},
                             "mixture": {"caps": 1}, "pack": {"sequences_per_shard": 8}}}}


def _written_texts(folder: Path) -> list[str]:
    texts = []
    for tar in sorted(folder.glob("shard-*.tar")):
        with open(tar, "rb") as fh:
            for seq in iter_shard(fh):
                ids = seq.tokens
                for start, end in zip(seq.docs[:-1], seq.docs[1:]):
                    raw = bytes(int(t) for t in ids[start:end] if t < 256)
                    texts.append(raw.decode("utf-8", errors="replace").strip())
    return texts


def _outside(root: Path, out: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if out not in p.parents and p != out}


def test_damaged_units_are_counted_rejects_and_the_build_goes_on(tmp_path):
    corpus = tmp_path / "corpus"
    expected = write_damaged_corpus(corpus)
    before = _outside(tmp_path, tmp_path / "out")
    recipe = parse_recipe(_recipe(f"{corpus}/*.tar"))
    out = build_stage(recipe, "s", out=tmp_path / "out", progress=False)
    account = read_manifest(out).sources["caps"]
    assert account.balanced
    for reason, count in expected.rejects.items():
        assert account.rejected_by_reason.get(reason) == count, reason
    assert account.rejected == sum(expected.rejects.values())
    assert account.written == len(expected.written)          # every good record, every record
    assert sorted(_written_texts(out)) == sorted(expected.written)  # before a cut
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == account.rejected
    assert Counter(r["reason"] for r in rejects) == Counter(account.rejected_by_reason)
    truncated = [r for r in rejects if r["reason"] == "unit_truncated"]
    assert {r["locator"].split("@")[0] for r in truncated} == {
        str(corpus / f"cut-{how}.tar") for how in ("header", "member", "boundary")}
    assert all("@byte " in r["locator"] and "after key '000000005'" in r["locator"]
               for r in truncated)
    unsafe = {r["locator"].rsplit(":", 1)[1]: r["message"] for r in rejects
              if r["reason"] == "unsafe_member"}
    assert "symbolic link" in unsafe["000000002"] and "hard link" in unsafe["000000003"]
    assert _outside(tmp_path, tmp_path / "out") == before   # nothing written outside `out`
    assert not Path("/tmp/mixdata-absolute-escape.txt").exists()


def test_a_mostly_broken_source_stops_the_build_and_says_what_to_check(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n_sft=120)
    for i in range(84):  # 70% of the conversations lose their image
        (corpus / "sft" / "images" / f"{i}.jpg").unlink()
    recipe = fixture_recipe(corpus)
    with pytest.raises(RejectLimitError) as err:
        build_stage(parse_recipe(recipe), "sft", out=tmp_path / "out", progress=False)
    message = str(err.value)
    assert "source 'chat' rejected 84 of the 120 records read" in message
    assert "above its max_reject_ratio 0.5" in message
    assert "image_missing: 83, e.g. " + str(corpus / "sft" / "llava.json") in message
    assert "check images_root and image_key" in message
    recipe["sources"]["chat"]["max_reject_ratio"] = 1.0  # the check is off: the build finishes
    out = build_stage(parse_recipe(recipe), "sft", out=tmp_path / "out", progress=False)
    chat = read_manifest(out).sources["chat"]
    assert chat.rejected_by_reason["image_missing"] == 83 and chat.written == 36


def test_strict_stops_at_the_first_reject(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(fixture_recipe(corpus)))
    assert main(["build", str(path), "--stage", "pretrain", "--out", str(tmp_path / "o"),
                 "--quiet", "--workers", "1", "--strict"]) == 1
    err = capsys.readouterr().err
    assert "--strict: source 'captions' rejected" in err and "00000.tar:000000003" in err
    assert main(["build", str(path), "--stage", "pretrain", "--out", str(tmp_path / "o"),
                 "--quiet", "--workers", "1"]) == 0


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_a_sigkilled_build_leaves_no_process_behind(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n_captions=600, n_text=400)
    recipe = fixture_recipe(corpus)
    recipe["sources"]["captions"]["uri"] = f"{corpus}/captions/*.tar"
    recipe["stages"]["pretrain"]["budget"] = None
    for shard in range(2, 40):  # many units, so prepare is still running when it is killed
        (corpus / "captions" / f"{shard:05d}.tar").write_bytes(
            (corpus / "captions" / f"{shard % 2:05d}.tar").read_bytes())
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.Popen([sys.executable, RUNNER, str(path), "pretrain", str(tmp_path / "o"),
                             "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, family = time.time() + 120, set()
    while time.time() < deadline:
        family |= _descendants(proc.pid)
        done = list((tmp_path / "o" / ".prepare").rglob("*.json"))
        if len([p for p in family if _alive(p)]) >= 2 and done:
            break
        assert proc.poll() is None, "the build finished before it could be killed"
        time.sleep(0.05)
    family |= _descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in family):
        time.sleep(0.1)
    assert family and not [p for p in family if _alive(p)]


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob("shard-*.tar"))}


@pytest.fixture(scope="module")
def local_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("net")
    corpus = write_corpus(root / "corpus")
    recipe = load_recipe(_write(root / "local.yaml", fixture_recipe(corpus)))
    return corpus, {s: _digests(build_stage(recipe, s, out=root / "local" / s, progress=False))
                    for s in ("pretrain", "sft")}


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("kind", ["503", "cut", "reset"])
def test_a_flaky_network_still_builds_the_same_bytes(local_build, tmp_path, kind):
    corpus, expected = local_build
    with serve_ranged(corpus, Fault(kind, every=10)) as (url, server):
        remote = fixture_recipe(url)  # every uri and images_root is an http URL
        recipe = load_recipe(_write(tmp_path / "remote.yaml", remote))
        for stage in ("pretrain", "sft"):
            out = build_stage(recipe, stage, out=tmp_path / stage, progress=False)
            assert _digests(out) == expected[stage], stage
        assert server.faults and all(k == kind for k, _ in server.faults)
        retries = sum(read_manifest(tmp_path / s).run.retries.get(n, 0)
                      for s in ("pretrain", "sft") for n in ("captions", "text", "chat"))
        assert retries >= len(server.faults) > 0
