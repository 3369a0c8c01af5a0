"""The demo corpus: byte-identical across runs, every file readable by its format's own
library, malformed records where MANIFEST.json says, and an eval split disjoint from
training content."""
import base64
import gzip
import hashlib
import io
import json
import tarfile
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pymupdf
import pytest
import webdataset as wds
from PIL import Image

from mixdata.cli import main
from mixdata.demo import content, corpus
from mixdata.recipe import load_recipe
from mixdata.sources.registry import open_source
from mixdata.storage import expand

ROOT = Path(__file__).resolve().parent.parent

SCALE = 0.1


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "corpus"
    corpus.write_corpus(root, SCALE)
    return root


@pytest.fixture(scope="module")
def manifest(demo) -> dict:
    return json.loads((demo / "MANIFEST.json").read_text())


def decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
        return True
    except OSError:
        return False


def tar_groups(path: Path) -> dict[str, dict[str, bytes]]:
    """Members by WebDataset key, read with webdataset itself (no decoding)."""
    samples = wds.WebDataset(str(path), shardshuffle=False, empty_check=False)
    return {s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")} for s in samples}


def test_two_runs_are_byte_identical(demo, manifest, tmp_path):
    again = corpus.write_corpus(tmp_path / "again", SCALE)
    assert again == manifest
    ours = sorted(p.relative_to(demo) for p in demo.rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*")
                    if p.is_file())
    assert ours == theirs
    for relative in ours:
        assert (demo / relative).read_bytes() == (tmp_path / "again" / relative).read_bytes(), relative


def test_manifest_lists_every_file_with_size_and_sha256(demo, manifest):
    on_disk = {p.relative_to(demo).as_posix() for p in demo.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {"MANIFEST.json"}
    for relative, entry in manifest["files"].items():
        data = (demo / relative).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert manifest["scale"] == SCALE and manifest["version"] == corpus.VERSION
    for name, kind in manifest["kinds"].items():
        assert list(demo.glob(kind["files"])), name
        assert kind["valid"] == kind["records"] - sum(kind["malformed"].values())


def test_fractional_scale_keeps_a_floor_of_records(manifest):
    assert manifest["kinds"]["caption"]["records"] == 120
    assert manifest["kinds"]["pdfa"]["records"] == corpus.MIN_RECORDS  # 40 x 0.1 = 4 < floor
    assert all(k["valid"] >= 4 for k in manifest["kinds"].values())


def test_obelics_parquet(demo, manifest):
    table = pq.read_table(sorted(demo.glob("interleaved/*.parquet")))
    assert table.column_names == ["images", "texts", "metadata", "general_metadata"]
    assert table.num_rows == manifest["kinds"]["interleaved"]["records"]
    found = Counter()
    for row in table.to_pylist():
        meta = json.loads(row["metadata"])
        assert set(json.loads(row["general_metadata"])) == {
            "url", "warc_filename", "warc_record_offset", "warc_record_length"}
        if len(row["images"]) != len(row["texts"]):
            found["mismatched_lists"] += 1
            continue
        assert len(meta) == len(row["images"])
        for image, text, info in zip(row["images"], row["texts"], meta):
            assert bool(image) != bool(text)  # exactly one set; the other null or ""
            if image:
                assert info["format"] == "png" and info["alt_text"]
                path = demo / "interleaved" / image
                if not path.exists():
                    found["image_missing"] += 1
                elif not decodes(path.read_bytes()):
                    found["image_broken"] += 1
    assert found == manifest["kinds"]["interleaved"]["malformed"]


IMG2DATASET_FIELDS = {"url", "caption", "key", "status", "error_message", "width", "height",
                      "original_width", "original_height", "exif", "sha256"}


def test_img2dataset_tars_parquet_and_stats(demo, manifest):
    found, failed, samples = Counter(), 0, 0
    for tar_path in sorted(demo.glob("caption/*.tar")):
        groups = tar_groups(tar_path)
        with tarfile.open(tar_path) as tar:
            assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
        rows = pq.read_table(tar_path.with_suffix(".parquet")).to_pylist()
        stats = json.loads(tar_path.with_name(tar_path.stem + "_stats.json").read_text())
        failed_rows = [r for r in rows if r["status"] == "failed_to_download"]
        assert stats["count"] == len(rows) == len(groups) + len(failed_rows)
        assert stats["failed_to_download"] == len(failed_rows)
        assert not {r["key"] for r in failed_rows} & set(groups)
        for key, members in groups.items():
            assert len(key) == 9 and key.isdigit()
            meta = json.loads(members["json"])
            assert meta["key"] == key and meta["sha256"] == hashlib.sha256(members["jpg"]).hexdigest()
            if "txt" not in members:
                assert IMG2DATASET_FIELDS - set(meta) == {"caption"}
                found["missing_caption"] += 1
            else:
                assert set(meta) == IMG2DATASET_FIELDS
                assert members["txt"].decode() == meta["caption"]
            if not decodes(members["jpg"]):
                found["image_broken" if members["jpg"][:2] != b"\xff\xd8" else "image_truncated"] += 1
        failed, samples = failed + len(failed_rows), samples + len(groups)
    caption = manifest["kinds"]["caption"]
    assert (samples, failed) == (caption["records"], caption["failed_rows"])
    assert found == caption["malformed"]


def test_pdfa_tar_pdfs_match_their_json(demo, manifest):
    found, pages = Counter(), 0
    groups = tar_groups(demo / "pdfa" / "pdfa-eng-train-0000.tar")
    for key, members in groups.items():
        assert len(key) == 7
        try:
            doc = pymupdf.open(stream=members["pdf"], filetype="pdf")
        except pymupdf.FileDataError:
            found["not_a_pdf"] += 1
            continue
        if "json" not in members:
            found["missing_json"] += 1
            continue
        annotation = json.loads(members["json"])["pages"]
        assert doc.page_count == len(annotation) >= 2
        pages += doc.page_count
        for page, ann in zip(doc, annotation):
            drawn = page.get_text("words")
            assert ann["words"]["text"] == [w[4] for w in drawn]
            x0, y0, width, height = ann["words"]["bbox"][0]
            assert x0 == pytest.approx(drawn[0][0] / page.rect.width, abs=1e-4)
            assert y0 == pytest.approx(drawn[0][1] / page.rect.height, abs=1e-4)
            assert 0 < width < 1 and 0 < height < 1
            start, end = ann["lines"]["word_slice"][0]
            assert ann["lines"]["text"][0] == " ".join(ann["words"]["text"][start:end])
    assert found == manifest["kinds"]["pdfa"]["malformed"]
    assert pages == manifest["kinds"]["pdfa"]["pages"]


def test_raw_pdfs_open_with_pymupdf(demo, manifest):
    found, pages, without_text = Counter(), 0, 0
    for path in sorted(demo.glob("pdf/*.pdf")):
        try:
            doc = pymupdf.open(path)
        except pymupdf.FileDataError:
            found["not_a_pdf"] += 1
            continue
        if doc.needs_pass:
            found["encrypted"] += 1
            assert doc.authenticate("demo-password") and doc[0].get_text().strip()
        elif doc.page_count == 0:
            found["zero_pages"] += 1
        else:
            pages += doc.page_count
            without_text += sum(not page.get_text().strip() for page in doc)
    kind = manifest["kinds"]["pdf"]
    assert found == kind["malformed"]
    assert (pages, without_text) == (kind["pages"], kind["pages_without_text"])


def test_renderedtext_tar(demo, manifest):
    found = Counter()
    for _key, members in tar_groups(demo / "renderedtext" / "renderedtext-0000.tar").items():
        annotation = json.loads(members["json"])
        if not decodes(members["png"]):
            found["image_broken"] += 1
        elif "ocr_annotation" not in annotation:
            found["missing_field"] += 1
        else:
            assert Image.open(io.BytesIO(members["png"])).size == content.CODE_SIZE
            codes = annotation["ocr_annotation"]["text"]  # a training-split code per tile
            assert len(codes) == content.CODE_SIZE[0] // content.CODE_TILE
            for code in codes:
                assert len(code) == content.CODE_LENGTH and code.isdigit()
                assert not content.held_out(f"code:{code}")
    assert found == manifest["kinds"]["renderedtext"]["malformed"]


def test_text_sources(demo, manifest):
    table = pq.read_table(demo / "text" / "fineweb-00000.parquet")
    assert table.column_names == ["text", "id", "dump", "url", "date", "language",
                                  "language_score", "token_count"]
    assert table.num_rows == manifest["kinds"]["fineweb"]["records"]
    assert {"missing_field": table.column("text").null_count} == \
        manifest["kinds"]["fineweb"]["malformed"]
    raw = (demo / "text" / "dolma-00000.jsonl.gz").read_bytes()
    assert raw[4:8] == b"\0\0\0\0"  # gzip header mtime pinned to 0
    found = Counter()
    lines = gzip.decompress(raw).decode().splitlines()
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            found["bad_json"] += 1
            continue
        assert {"id", "source", "added", "created", "metadata"} <= set(row)
        if "text" not in row:
            found["missing_field"] += 1
    assert len(lines) == manifest["kinds"]["dolma"]["records"]
    assert found == manifest["kinds"]["dolma"]["malformed"]


def test_cauldron_parquets(demo, manifest):
    for category in ("scenes", "ocr", "counting"):
        table = pq.read_table(demo / "sft" / "cauldron" / f"{category}-00000.parquet")
        assert str(table.schema.field("images").type) == \
            "list<element: struct<bytes: binary, path: string>>"
        assert str(table.schema.field("texts").type) == \
            "list<element: struct<user: string, assistant: string, source: string>>"
        found = Counter()
        for row in table.to_pylist():
            if not row["texts"]:
                found["no_turns"] += 1
            elif any(t["assistant"] is None for t in row["texts"]):
                found["missing_field"] += 1
            elif not decodes(row["images"][0]["bytes"]):
                found["image_broken"] += 1
        assert found == manifest["kinds"][f"cauldron_{category}"]["malformed"]


def test_llava_json(demo, manifest):
    entries = json.loads((demo / "sft" / "llava.json").read_text())
    found = Counter()
    for entry in entries:
        if "conversations" not in entry:
            found["missing_field"] += 1
            continue
        images = entry.get("image", [])
        images = [images] if isinstance(images, str) else images
        tags = sum(turn["value"].count("<image>") for turn in entry["conversations"])
        assert [t["from"] for t in entry["conversations"]][:2] == ["human", "gpt"]
        if tags != len(images):
            found["image_tag_count"] += 1
        elif not all(decodes((demo / "sft" / name).read_bytes()) for name in images):
            found["image_broken"] += 1
    assert any(isinstance(e.get("image"), list) for e in entries)  # InternVL multi-image
    assert any("image" not in e for e in entries)                  # text-only
    assert found == manifest["kinds"]["llava"]["malformed"]


def _chat_images(demo: Path, row: dict) -> list[bytes]:
    out = []
    for message in row["messages"]:
        for part in message["content"] if isinstance(message["content"], list) else []:
            if part["type"] == "image":
                out.append((demo / "sft" / part["path"]).read_bytes())
            elif part["type"] == "image_url":
                out.append(base64.b64decode(part["image_url"]["url"].split(",", 1)[1]))
    return out


def test_chat_messages_jsonl(demo, manifest):
    found, kinds = Counter(), Counter()
    for line in (demo / "sft" / "chat.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            found["bad_json"] += 1
            continue
        if "messages" not in row:
            found["missing_field"] += 1
            continue
        assert row["messages"][-1]["role"] == "assistant"
        kinds.update(p["type"] for m in row["messages"] if isinstance(m["content"], list)
                     for p in m["content"])
        if not all(decodes(data) for data in _chat_images(demo, row)):
            found["image_broken"] += 1
    assert kinds["image"] and kinds["image_url"]
    assert found == manifest["kinds"]["chat"]["malformed"]


def _training_captions(demo: Path) -> set[str]:
    """Every scene description the training files contain, wherever it appears."""
    out = set()
    for tar_path in demo.glob("caption/*.tar"):
        out |= {m["txt"].decode() for m in tar_groups(tar_path).values() if "txt" in m}
    for path in demo.glob("interleaved/*.parquet"):
        for row in pq.read_table(path, columns=["metadata"]).column(0).to_pylist():
            out |= {m["alt_text"] for m in json.loads(row) if m}
    for entry in json.loads((demo / "sft" / "llava.json").read_text()):
        out |= {t["value"] for t in entry.get("conversations", []) if t["from"] == "gpt"}
    return out


def _training_codes(demo: Path) -> set[str]:
    """Every code a training file transcribes or answers with."""
    out = set()
    for _key, members in tar_groups(demo / "renderedtext" / "renderedtext-0000.tar").items():
        out |= set(json.loads(members["json"]).get("ocr_annotation", {}).get("text", []))
    table = pq.read_table(demo / "sft" / "cauldron" / "ocr-00000.parquet", columns=["texts"])
    out |= {t["assistant"] for texts in table.column(0).to_pylist() for t in texts}
    for line in (demo / "sft" / "chat.jsonl").read_text().splitlines():
        try:
            messages = json.loads(line).get("messages", [])
        except ValueError:
            continue
        out |= {p["text"] for m in messages if m["role"] == "assistant" for p in m["content"]}
    assert len({c for c in out if c and c.isdigit()}) > 50
    return out


def _training_image_hashes(demo: Path) -> set[str]:
    files = [p for p in demo.rglob("*.png") if "eval" not in p.parts]
    hashes = {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    for path in demo.glob("sft/cauldron/*.parquet"):
        for images in pq.read_table(path, columns=["images"]).column(0).to_pylist():
            hashes |= {hashlib.sha256(i["bytes"]).hexdigest() for i in images}
    return hashes


def test_eval_split_is_held_out(demo, manifest):
    rows = {split: [json.loads(line) for line in (demo / "eval" / f"{split}.jsonl").open()]
            for split in ("vqa", "ocr", "captions")}
    counts = {split: len(r) for split, r in rows.items()}
    assert counts == {k: manifest["kinds"]["eval"][k] for k in counts}
    captions = {r["image"]: r["caption"] for r in rows["captions"]}
    assert all(r["image"] in captions and r["answer"] in r["choices"] for r in rows["vqa"])
    codes = {r["answer"] for r in rows["ocr"]}
    assert all(len(c) == content.CODE_LENGTH and c.isdigit() for c in codes)
    assert not codes & _training_codes(demo)  # an eval code is read, never remembered
    training = _training_captions(demo)
    assert len(training) > 50
    assert not set(captions.values()) & training
    eval_images = {r["image"] for split in rows.values() for r in split}
    eval_hashes = {hashlib.sha256((demo / "eval" / i).read_bytes()).hexdigest() for i in eval_images}
    assert not eval_hashes & _training_image_hashes(demo)


def test_generation_time_at_scale_1(tmp_path, record_property):
    start = time.perf_counter()
    manifest = corpus.write_corpus(tmp_path / "full", 1)
    seconds = time.perf_counter() - start
    record_property("demo_generation_seconds", round(seconds, 2))
    print(f"\ndemo corpus at scale 1: {len(manifest['files'])} files in {seconds:.1f} s")
    assert manifest["kinds"]["caption"]["records"] == 1200
    assert seconds < 120  # the target is well under 60 s on one core; this only catches blow-ups


def test_ensure_corpus_generates_once_for_concurrent_callers(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXDATA_CACHE", str(tmp_path))
    stale = tmp_path / "demo" / f".v{corpus.VERSION}-scale0.05.tmp-99999999"
    stale.mkdir(parents=True)  # left by a crashed generation
    reports, roots = [], []
    callers = [threading.Thread(target=lambda: roots.append(corpus.ensure_corpus(
        0.05, progress=lambda kind, report, seconds: reports.append(kind)))) for _ in range(3)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(set(roots)) == 1 and roots[0] == tmp_path / "demo" / f"v{corpus.VERSION}-scale0.05"
    assert sorted(reports) == sorted(corpus.KINDS)  # one generation, not three
    assert not stale.exists() and corpus.read_manifest(roots[0])["scale"] == 0.05


def test_demo_uris_resolve_into_the_cached_corpus(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXDATA_CACHE", str(tmp_path))
    monkeypatch.setenv("MIXDATA_DEMO_SCALE", "0.05")
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml")
    root = tmp_path / "demo" / f"v{corpus.VERSION}-scale0.05"
    assert recipe.demo.root == str(root) and not root.exists()  # loading generates nothing
    assert recipe.sources["laion"].uri == f"{root}/caption/{{00000..00001}}.tar"
    assert recipe.demo.ensure() == root
    tars = expand(recipe.sources["laion"].uri)
    assert [Path(t).name for t in tars] == ["00000.tar", "00001.tar"]
    assert all(Path(t).is_file() for t in tars)
    assert len(expand(f"{root}/sft/cauldron/*.parquet")) == 3
    monkeypatch.setenv("MIXDATA_DEMO_SCALE", "0.06")  # another corpus: another recipe hash
    assert load_recipe(ROOT / "recipes" / "demo.yaml").sha256 != recipe.sha256


def test_demo_command(tmp_path, capsys):
    out = tmp_path / "corpus"
    assert main(["demo", "--out", str(out), "--scale", "0.05"]) == 0
    first = (out / "MANIFEST.json").read_bytes()
    assert main(["demo", "--out", str(out), "--scale", "0.05"]) == 0
    assert "already at" in capsys.readouterr().out
    assert main(["demo", "--out", str(out), "--scale", "0.06"]) == 1
    assert "pass --force" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--scale", "0.05", "--force"]) == 0
    assert (out / "MANIFEST.json").read_bytes() == first
    other = tmp_path / "not-a-corpus"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["demo", "--out", str(other), "--force"]) == 1
    assert (other / "keep.txt").read_text() == "mine"


SOURCE_KINDS = {"obelics": "interleaved", "laion": "caption", "pdfs": "pdf",
                "cauldron_count": "cauldron_counting"}


def test_adapters_reject_exactly_the_malformed_records(monkeypatch, demo, manifest):
    """Through the demo recipe's own adapters: every record is read, and the rejects are the
    defects a reader can see without decoding images."""
    monkeypatch.setattr(corpus, "cache_root", lambda scale=None: demo)
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml")
    checked = 0
    for name, spec in recipe.sources.items():
        source = open_source(spec)
        kind = manifest["kinds"][SOURCE_KINDS.get(name, name)]
        items = [item for unit in source.units() for item in source.read(unit)]
        rejects = [item for item in items if not hasattr(item, "parts")]
        seen = sum(n for defect, n in kind["malformed"].items()
                   if defect not in manifest["decode_time_defects"])
        # PDF adapters read a good document page by page, a broken one as one record.
        read = kind.get("pages", kind["valid"]) + sum(kind["malformed"].values()) \
            + kind.get("failed_rows", 0)
        assert (name, len(items)) == (name, read)
        assert (name, len(rejects)) == (name, seen + kind.get("failed_rows", 0)
                                        + kind.get("pages_without_text", 0))
        checked += 1
    if not checked:
        pytest.skip("no source adapters in this checkout yet")
