"""Writing the demo corpus, and finding (or generating) the cached copy recipes refer to.

`write_corpus(out_dir, scale)` writes every kind into `out_dir` and `MANIFEST.json` last.
`ensure_corpus(scale)` returns `$MIXDATA_CACHE/demo/v<VERSION>-scale<scale>`, generating it
first when absent: under an exclusive file lock, into a temporary folder that is renamed into
place, so concurrent callers wait for one generation and a crash never leaves a half-written
corpus.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..errors import MixdataError
from . import evalset, ocr, pretrain, sft
from .files import SEED, KindReport, rng_for

VERSION = 6  # 2: OCR digit codes instead of words and sentences in RenderedText; 3: one
             # digit per image token (`content.CODE_ROW`), a copy of the code per tile;
             # 4: eval VQA rows name their question kind; 5: the code in every token
             # row of each tile (`content.CODE_ROWS`); 6: 4-5x the SFT records, so the
             # SFT stage reads each about twice (at v5 it read ~1,000 scenes 5 times)
MANIFEST = "MANIFEST.json"
GENERATOR = "mixdata.demo"
MIN_RECORDS = 8  # per kind at tiny scales: room for the malformed records and some good ones
# Defects a reader cannot see without decoding the image: adapters pass these records on and
# the image step rejects them. Every other defect is for the adapter to reject.
DECODE_TIME_DEFECTS = ("image_broken", "image_truncated")


@dataclass(frozen=True)
class Kind:
    write: Callable  # (root, count, rng) -> KindReport
    base_count: int  # records at scale 1
    files: str       # glob of the files it writes, relative to the root (a recipe's uri)


KINDS: dict[str, Kind] = {
    "interleaved": Kind(pretrain.write_interleaved, 400, "interleaved/obelics-*.parquet"),
    "caption": Kind(pretrain.write_caption, 1200, "caption/*.tar"),
    "fineweb": Kind(pretrain.write_fineweb, 400, "text/fineweb-*.parquet"),
    "dolma": Kind(pretrain.write_dolma, 200, "text/dolma-*.jsonl.gz"),
    "pdfa": Kind(ocr.write_pdfa, 40, "pdfa/pdfa-eng-train-*.tar"),
    "pdf": Kind(ocr.write_pdf, 20, "pdf/*.pdf"),
    "renderedtext": Kind(ocr.write_renderedtext, 3000, "renderedtext/renderedtext-*.tar"),
    "cauldron_scenes": Kind(partial(sft.write_cauldron, category="scenes"), 2000,
                            "sft/cauldron/scenes-*.parquet"),
    "cauldron_ocr": Kind(partial(sft.write_cauldron, category="ocr"), 160,
                         "sft/cauldron/ocr-*.parquet"),
    "cauldron_counting": Kind(partial(sft.write_cauldron, category="counting"), 400,
                              "sft/cauldron/counting-*.parquet"),
    "llava": Kind(sft.write_llava, 2000, "sft/llava.json"),
    "chat": Kind(sft.write_chat, 1200, "sft/chat.jsonl"),
    # eval: N held-out scenes (a caption and two VQA questions each) and N OCR words
    "eval": Kind(lambda root, n, rng: evalset.write_eval(root, n, n, rng), 100, "eval/*.jsonl"),
}

Progress = Callable[[str, KindReport, float], None]


def count_for(kind: str, scale: float) -> int:
    return max(MIN_RECORDS, round(KINDS[kind].base_count * scale))


def write_corpus(out_dir: str | Path, scale: float = 1, progress: Progress | None = None) -> dict:
    """Write the corpus into `out_dir` (created; must hold no files yet) and return its
    manifest. The bytes written depend only on `scale` and the generator version."""
    scale = check_scale(scale)
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        raise MixdataError(f"{root} is not empty; the demo corpus is written into a new folder")
    root.mkdir(parents=True, exist_ok=True)
    kinds = {}
    for name, kind in KINDS.items():
        start = time.perf_counter()
        report = kind.write(root, count_for(name, scale), rng_for(name))
        kinds[name] = {"files": kind.files, **report.to_json()}
        if progress:
            progress(name, report, time.perf_counter() - start)
    manifest = {"generator": GENERATOR, "version": VERSION, "scale": scale, "seed": SEED,
                "decode_time_defects": list(DECODE_TIME_DEFECTS), "kinds": kinds,
                "files": file_table(root)}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def check_scale(scale: float) -> float:
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0:
        raise MixdataError(f"demo scale must be a positive number, got {scale!r}")
    return float(scale)


def file_table(root: Path) -> dict[str, dict]:
    """Size and sha256 of every file under `root` except the manifest, by relative path."""
    table = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative != MANIFEST:
            data = path.read_bytes()
            table[relative] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return table


def read_manifest(root: str | Path) -> dict | None:
    """The manifest of a complete demo corpus at `root`, or None when there is none."""
    try:
        manifest = json.loads((Path(root) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == GENERATOR \
        else None


def default_scale() -> float:
    raw = os.environ.get("MIXDATA_DEMO_SCALE", "1")
    try:
        return check_scale(float(raw))
    except ValueError:
        raise MixdataError(f"MIXDATA_DEMO_SCALE must be a positive number, got {raw!r}") from None


def cache_root(scale: float | None = None) -> Path:
    """Where `ensure_corpus(scale)` keeps the corpus (it may not exist yet)."""
    scale = default_scale() if scale is None else check_scale(scale)
    cache = Path(os.environ.get("MIXDATA_CACHE", "~/.cache/mixdata")).expanduser()
    return cache / "demo" / f"v{VERSION}-scale{scale:g}"


def ensure_corpus(scale: float | None = None, *, force: bool = False,
                  progress: Progress | None = None) -> Path:
    """The root of the cached demo corpus at `scale`, generated first if needed (or if
    `force`). Safe against concurrent callers and against crashes mid-generation."""
    root = cache_root(scale)
    if not force and read_manifest(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even on a crash
        if force and root.exists():
            shutil.rmtree(root)
        if read_manifest(root):
            return root  # another process generated it while this one waited
        # Holding the lock, any temporary folder left here belongs to a crashed run.
        for stale in root.parent.glob(f".{root.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
        write_corpus(tmp, float(root.name.rsplit("scale", 1)[1]), progress)
        if root.exists():
            shutil.rmtree(root)  # a folder without a manifest is incomplete
        os.rename(tmp, root)
    return root
