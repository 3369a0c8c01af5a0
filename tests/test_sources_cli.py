"""`mixdata sources`: samples, counts, filters, selection, JSON and the balance check."""
from __future__ import annotations

import json

import pytest
import yaml
from ocr_fixtures import make_pdf, pdfa_json
from source_fixtures import image_bytes, write_tar

from mixdata.cli import main
from mixdata.commands.sources import SourceReport, describe, tally
from mixdata.errors import Reject
from mixdata.sample import ImagePart, Sample, TextPart


@pytest.fixture
def recipe(tmp_path):
    (tmp_path / "web.jsonl").write_text("\n".join([
        json.dumps({"id": "a", "text": "a short web page about cats and dogs"}),
        json.dumps({"id": "b", "text": "tiny"}),
        "{not json",
        json.dumps({"id": "c", "text": "another page that is long enough to pass"}),
    ]) + "\n")
    write_tar(tmp_path / "pdfa-0000.tar", [
        ("0000001.pdf", make_pdf(["one", "two"])),
        ("0000001.json", pdfa_json([["first page"], ["second page"]])),
        ("0000002.pdf", b"broken"), ("0000002.json", pdfa_json([["x"]])),
    ])
    (tmp_path / "img.png").write_bytes(image_bytes(20, 10))
    (tmp_path / "llava.json").write_text(json.dumps([
        {"id": "1", "image": "img.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "A box."}]},
    ]))
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump({
        "name": "mini", "seq_len": 256, "image_tokens_per_tile": 4,
        "sources": {
            "web": {"format": "jsonl-text", "uri": str(tmp_path / "web.jsonl"),
                    "filters": {"min_words": 3}},
            "pdfa": {"format": "pdfa-wds", "uri": str(tmp_path / "pdfa-*.tar"), "dpi": 72},
            "llava": {"format": "llava", "uri": str(tmp_path / "llava.json")},
        },
        "stages": {"pre": {"mixture": {"web": 1, "pdfa": 1}}, "sft": {"mixture": {"llava": 1}}},
    }, sort_keys=False))
    return str(path)


def test_text_report_shows_samples_counts_and_balance(recipe, capsys):
    assert main(["sources", recipe, "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "== web (jsonl-text)" in out and "[1] a  text" in out  # the record's own id
    assert "[2]" not in out   # -n 1
    assert "read 4  yielded 2  rejected 2  retries 0  (1 units)" in out
    assert "filter:min_words" in out and "bad_json" in out
    assert "[1] pdfa-0000-0000001/p0  ocr  images: 300x200 JPEG" in out
    assert "read 3  yielded 2  rejected 1" in out and "pdf_broken" in out
    assert "images: 20x10 PNG  roles: user assistant" in out
    assert out.rstrip().endswith(
        "3 sources read: every source balances (read = yielded + rejected)")


def test_json_report_and_selection(recipe, capsys):
    assert main(["sources", recipe, "--stage", "pre", "--source", "pdfa", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["balanced"] and [s["name"] for s in report["sources"]] == ["pdfa"]
    pdfa = report["sources"][0]
    assert (pdfa["read"], pdfa["yielded"], pdfa["rejected"]) == (3, 2, {"pdf_broken": 1})
    assert pdfa["samples"][1] == {"id": "pdfa-0000-0000001/p1", "kind": "ocr",
                                  "text": "second page", "images": ["300x200 JPEG"], "roles": []}
    assert pdfa["examples"]["pdf_broken"]["locator"].endswith("pdfa-0000.tar:0000002")


def test_unknown_stage_or_source_is_a_clear_error(recipe, capsys):
    assert main(["sources", recipe, "--source", "nope"]) == 1
    assert "no source 'nope' in the recipe; sources: web, pdfa, llava" in capsys.readouterr().err
    assert main(["sources", recipe, "--stage", "later"]) == 1
    assert "no stage 'later'" in capsys.readouterr().err


def test_help_explains_the_command(capsys):
    with pytest.raises(SystemExit):
        main(["sources", "--help"])
    out = capsys.readouterr().out
    assert "read = yielded + rejected" in out and "--stage" in out and "examples:" in out


def test_tally_flags_items_that_break_the_balance():
    report = SourceReport(name="s", format="jsonl-text")
    good = Sample(id="1", source="s", kind="text", parts=(TextPart(text="x"),))
    tally(report, good)
    tally(report, Reject(source="s", locator="f#1", reason="bad_json", message="m"))
    assert report.balanced and (report.read, report.yielded) == (2, 1)
    tally(report, Reject(source="s", locator="f#2", reason=""))                 # no reason
    tally(report, Sample(id="2", source="other", kind="text", parts=good.parts))  # wrong source
    assert not report.balanced and report.invalid == 2 and report.read == 4


def test_describe_probes_headers_and_lists_roles():
    sample = Sample(id="x", source="s", kind="sft", parts=(
        ImagePart(data=image_bytes(30, 12, fmt="JPEG")), ImagePart(data=b"not an image"),
        TextPart(text="q " * 80, role="user"), TextPart(text="a", role="assistant")))
    shown = describe(sample)
    assert shown["images"][0] == "30x12 JPEG" and shown["images"][1].startswith("unreadable")
    assert shown["roles"] == ["user", "assistant"] and len(shown["text"]) == 100
