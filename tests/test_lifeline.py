"""Worker processes end when their parent is SIGKILLed: DataLoader workers and PDF render
workers (the build pool has its own test in test_build_faults.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ocr_fixtures import make_pdf, pdfa_json
from shard_fixtures import write_stage
from source_fixtures import write_tar

LOADER = """
import sys, time
from mixdata import load
loader = load(sys.argv[1], batch_size=2, seed=0).loader(num_workers=2)
batches = iter(loader)
next(batches)
print("ready", flush=True)
time.sleep(600)
"""

RENDERER = """
import sys, time
from mixdata.recipe import SourceSpec
from mixdata.sources import open_source
from mixdata.sources.options import Filters, PdfOptions
spec = SourceSpec(name="p", format="pdfa-wds", uri=sys.argv[1], options=PdfOptions(dpi=72),
                  filters=Filters())
source = open_source(spec)
items = source.read(source.units()[0])
next(items)
print("ready", flush=True)
time.sleep(600)
"""


def _family(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_and_watch(script: str, *args: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        family = _family(proc.pid)
        assert family, "no worker process was started"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in family):
        time.sleep(0.1)
    assert not [p for p in family if _alive(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_dataloader_workers_die_with_the_training_process(tmp_path):
    write_stage(tmp_path, [8, 8], seed=1)
    _kill_and_watch(LOADER, str(tmp_path))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pdf_render_workers_die_with_the_reader(tmp_path):
    pages = [f"page {i} text" for i in range(3)]
    tar = write_tar(tmp_path / "pdfa.tar", [("0000001.pdf", make_pdf(pages)),
                                            ("0000001.json", pdfa_json([[p] for p in pages]))])
    _kill_and_watch(RENDERER, str(tar))
