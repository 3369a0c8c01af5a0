"""PDF and RenderedText adapters on real tiny PDFs, pdfa/idl tars and RenderedText tars."""
from __future__ import annotations

import gc
import io
import json
import multiprocessing
import time

import pymupdf
import pytest
from ocr_fixtures import (
    EMPTY_PDF,
    encrypted_pdf,
    idl_json,
    make_pdf,
    pdfa_json,
    read_counted,
    reasons,
    slow_pdf,
)
from PIL import Image
from source_fixtures import image_bytes, spec, write_tar

from mixdata.errors import RecordRejected
from mixdata.sample import ImagePart, Sample, TextPart
from mixdata.sources import open_source
from mixdata.sources.pdf import annotation_pages, open_pdf, page_lines, renderedtext_parts
from mixdata.sources.pdfrender import PageRenderer


def _decoded(sample: Sample) -> Image.Image:
    return Image.open(io.BytesIO(sample.images[0].data))


def _balanced(stats) -> None:
    assert stats.read == stats.yielded + sum(stats.rejected.values())


def test_pdfa_tar_pages_become_ocr_samples_with_annotation_text(tmp_path):
    pdf = make_pdf(["first page", "second page"])
    tar = write_tar(tmp_path / "pdfa-0000.tar", [
        ("0000001.pdf", pdf), ("0000001.json", pdfa_json([["Line A", "Line B"], ["Only line"]])),
    ])
    items, stats = read_counted(spec("pdfa-wds", tar, dpi=72))
    assert [s.id for s in items] == ["pdfa-0000-0000001/p0", "pdfa-0000-0000001/p1"]
    first = items[0]
    assert first.kind == "ocr" and isinstance(first.parts[0], ImagePart)
    assert first.parts[1] == TextPart(text="Line A\nLine B")
    assert _decoded(first).size == (300, 200) and _decoded(first).format == "JPEG"
    assert first.images[0].meta["width"] == 300 and first.meta["page"] == 0
    assert first.meta["locator"] == f"{tar}:0000001#page=0"
    assert stats.read == 2 and stats.yielded == 2


def test_idl_schema_and_dpi_scale_the_render(tmp_path):
    tar = write_tar(tmp_path / "idl.tar", [
        ("a.pdf", make_pdf(["x"], size=(144, 72))), ("a.json", idl_json([["idl line"]])),
        ("a.tif", b"ignored"),
    ])
    items, _ = read_counted(spec("idl-wds", tar, dpi=144, grayscale=True))
    assert items[0].text() == "idl line"
    image = _decoded(items[0])
    assert image.size == (288, 144) and image.mode == "L"


def test_document_level_rejects_count_once(tmp_path):
    good = make_pdf(["ok"])
    tar = write_tar(tmp_path / "bad.tar", [
        ("broken.pdf", b"%PDF-1.4 garbage"), ("broken.json", pdfa_json([["x"]])),
        ("locked.pdf", encrypted_pdf()), ("locked.json", pdfa_json([["x"]])),
        ("empty.pdf", EMPTY_PDF), ("empty.json", pdfa_json([])),
        ("mismatch.pdf", make_pdf(["a", "b"])), ("mismatch.json", pdfa_json([["only one"]])),
        ("nojson.pdf", good),
        ("badjson.pdf", good), ("badjson.json", b"{not json"),
        ("nopages.pdf", good), ("nopages.json", b'{"pagez": []}'),
        ("fine.pdf", good), ("fine.json", pdfa_json([["kept"]])),
    ])
    items, stats = read_counted(spec("pdfa-wds", tar, dpi=72))
    assert reasons(items) == ["pdf_broken", "pdf_encrypted", "pdf_empty", "page_count_mismatch",
                              "missing_member", "bad_json", "missing_field"]
    assert [s.text() for s in items if isinstance(s, Sample)] == ["kept"]
    assert stats.read == 8
    _balanced(stats)


def test_page_level_rejects_name_the_page(tmp_path):
    pdf = make_pdf(["has text", "empty annotation", "bad annotation"])
    pages = json.loads(pdfa_json([["has text"], [], ["x"]]))
    pages["pages"][2]["lines"] = {"text": "not a list"}
    tar = write_tar(tmp_path / "p.tar", [("d.pdf", pdf), ("d.json", json.dumps(pages).encode())])
    items, stats = read_counted(spec("pdfa-wds", tar, dpi=72))
    rejects = [i for i in items if not isinstance(i, Sample)]
    assert [(r.reason, r.locator.rsplit("#", 1)[1]) for r in rejects] == [
        ("no_text", "page=1"), ("missing_field", "page=2")]
    assert stats.read == 3 and stats.yielded == 1


def test_page_too_large_is_checked_before_rendering(tmp_path):
    tar = write_tar(tmp_path / "big.tar", [
        ("d.pdf", make_pdf(["small", "huge"], size=(300, 200))),
        ("d.json", pdfa_json([["small"], ["huge"]])),
    ])
    # 300x200 pt at 72 dpi = 60,000 px: the limit lets one page through at 72 dpi, none at 150
    items, _ = read_counted(spec("pdfa-wds", tar, dpi=72, max_page_pixels=60_000, max_pages=1))
    assert [type(i).__name__ for i in items] == ["Sample"]
    items, _ = read_counted(spec("pdfa-wds", tar, dpi=150, max_page_pixels=60_000))
    assert reasons(items) == ["page_too_large", "page_too_large"]


def test_raw_pdfs_use_the_text_layer_and_reject_scans(tmp_path):
    folder = tmp_path / "pdfs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.pdf").write_bytes(make_pdf(["text layer words", None]))
    (folder / "sub" / "b.pdf").write_bytes(make_pdf(["more words"]))
    (folder / "notes.txt").write_text("not a pdf")
    items, stats = read_counted(spec("pdf", str(folder), dpi=72))
    assert [i.text() if isinstance(i, Sample) else i.reason for i in items] == [
        "text layer words", "no_text_layer", "more words"]
    assert items[0].id.startswith("a-") and items[0].id.endswith("/p0")
    kept, _ = read_counted(spec("pdf", str(folder / "a.pdf"), dpi=72, keep_scans=True))
    assert [len(s.parts) for s in kept] == [2, 1]   # the scan keeps its image only
    _balanced(stats)


def test_page_timeout_kills_the_render_and_the_next_page_renders(tmp_path):
    (tmp_path / "slow.pdf").write_bytes(slow_pdf())
    start = time.monotonic()
    items, stats = read_counted(spec("pdf", str(tmp_path / "slow.pdf"), dpi=150,
                                     page_timeout_s=1.0))
    assert reasons(items) == ["page_timeout"]
    assert items[1].text() == "after the slow page"
    assert time.monotonic() - start < 8   # the slow page alone renders for over 10 s
    _balanced(stats)


def test_renderer_reports_a_missing_page_and_stops_its_worker():
    with PageRenderer(timeout_s=30, dpi=72) as renderer:
        results = list(renderer.render(make_pdf(["one", "two"]), [0, 5, 1]))
        assert [page for page, _ in results] == [0, 5, 1]
        jpeg, width, height = results[0][1]
        assert (width, height) == (300, 200) and jpeg[:2] == b"\xff\xd8"
        assert isinstance(results[1][1], RecordRejected) and results[1][1].reason == "page_broken"
        assert renderer._proc.is_alive()   # a page error keeps the worker
        # a document abandoned half way must not leak its replies into the next one
        partial = renderer.render(make_pdf(["a", "b", "c"]), [0, 1, 2])
        next(partial)
        partial.close()
        (page, (jpeg, width, height)), = renderer.render(make_pdf(["x"], size=(100, 50)), [0])
        assert (page, width, height) == (0, 100, 50)
    assert renderer._proc is None and multiprocessing.active_children() == []


def test_render_workers_are_reused_across_units_and_reads_may_interleave(tmp_path):
    for name in "abc":
        (tmp_path / f"{name}.pdf").write_bytes(make_pdf([f"{name} one", f"{name} two"]))
    source = open_source(spec("pdf", str(tmp_path), dpi=72))
    units = source.units()
    first, second = source.read(units[0]), source.read(units[1])
    interleaved = [next(first), next(second), next(first), next(second)]
    assert [s.text() for s in interleaved] == ["a one", "b one", "a two", "b two"]
    assert list(first) == [] and list(second) == []
    assert len(source._idle) == 2   # two reads at once needed two workers
    pids = {r._proc.pid for r in source._idle}
    assert [s.text() for s in source.read(units[2])] == ["c one", "c two"]
    assert {r._proc.pid for r in source._idle} == pids   # reused, not restarted
    source.close()
    assert multiprocessing.active_children() == []
    source.read(units[0]).__next__()
    del source
    gc.collect()
    assert multiprocessing.active_children() == []


def test_pure_helpers_reject_with_reasons():
    with pytest.raises(RecordRejected, match="pdf_broken"):
        open_pdf(b"nothing")
    with pytest.raises(RecordRejected, match="pdf_encrypted"):
        open_pdf(encrypted_pdf())
    assert open_pdf(make_pdf(["x"])).page_count == 1
    assert annotation_pages(idl_json([["a"], []])) == json.loads(idl_json([["a"], []]))["pages"]
    assert page_lines({"lines": {"text": ["a", None, "", "b"]}}, "pdfa-wds") == ["a", "b"]
    with pytest.raises(RecordRejected, match="missing_field"):
        page_lines({"lines": {"text": ["a"]}}, "idl-wds")


def test_renderedtext_tar(tmp_path):
    png = image_bytes(40, 20)
    tar = write_tar(tmp_path / "rt-00.tar", [
        ("k1.png", png),
        ("k1.json", json.dumps({"ocr_annotation": {"text": ["two", "lines"]}}).encode()),
        ("k2.png", png), ("k2.json", b'{"ocr_annotation": {}}'),
        ("k3.json", json.dumps({"ocr_annotation": {"text": "no image"}}).encode()),
        ("k4.png", png), ("k4.json", json.dumps({"ocr_annotation": {"text": ["", " "]}}).encode()),
    ])
    items, stats = read_counted(spec("renderedtext", tar))
    assert items[0].id == "rt-00-k1" and items[0].kind == "ocr"
    assert items[0].parts == (ImagePart(data=png), TextPart(text="two\nlines"))
    assert reasons(items) == ["missing_field", "missing_member", "no_text"]
    assert stats.read == 4
    _balanced(stats)


def test_renderedtext_parts_accepts_hf_image_dicts():
    parts = renderedtext_parts({"image": None, "jpg": {"bytes": b"jpgbytes", "path": None},
                                "json": {"ocr_annotation": {"text": "one string"}}})
    assert parts == [ImagePart(data=b"jpgbytes"), TextPart(text="one string")]


def test_pymupdf_pages_match_our_render(tmp_path):
    """The adapter's image is exactly PyMuPDF's pixmap at the recipe dpi (before JPEG)."""
    pdf = make_pdf(["compare"])
    (tmp_path / "c.pdf").write_bytes(pdf)
    items, _ = read_counted(spec("pdf", str(tmp_path / "c.pdf"), dpi=100))
    pix = pymupdf.open(stream=pdf, filetype="pdf")[0].get_pixmap(dpi=100)
    assert _decoded(items[0]).size == (pix.width, pix.height)
