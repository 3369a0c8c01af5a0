"""Text-only adapters: FineWeb parquet, Dolma jsonl(.gz/.zst), a configurable text field."""
from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st
from ocr_fixtures import read_counted, reasons
from source_fixtures import spec

from mixdata.errors import RecordRejected
from mixdata.sample import Sample, TextPart
from mixdata.sources import open_source
from mixdata.sources.options import TextOptions
from mixdata.sources.plaintext import text_sample

FINEWEB = {
    "text": ["First web page.", None, "   ", "Third page, caf\u00e9."],
    "id": ["<urn:1>", "<urn:2>", "<urn:3>", "<urn:4>"],
    "dump": ["CC-MAIN-2024-10"] * 4, "url": [f"https://e.x/{i}" for i in range(4)],
    "date": ["2024-03-01"] * 4, "language": ["en"] * 4,
    "language_score": [0.98, 0.5, 0.7, 0.91], "token_count": [4, 0, 0, 5],
}


def _dolma_lines() -> list[bytes]:
    docs = [{"id": "d1", "text": "dolma one", "source": "c4", "added": "2023", "created": "2020",
             "metadata": {"x": 1}},
            {"id": "d2", "body": "wrong field"},
            {"id": "d3", "text": "dolma three", "source": "c4"}]
    return [json.dumps(d).encode() for d in docs] + [b"{broken", b"", b"[1, 2]"]


def test_fineweb_parquet_row_groups_and_rejects(tmp_path):
    path = tmp_path / "000_00000.parquet"
    pq.write_table(pa.table(FINEWEB), path, row_group_size=2)
    source = open_source(spec("parquet-text", path))
    assert source.units() == [f"{path}#rg=0", f"{path}#rg=1"]
    items, stats = read_counted(spec("parquet-text", path))
    samples = [i for i in items if isinstance(i, Sample)]
    assert [s.id for s in samples] == ["<urn:1>", "<urn:4>"]  # the records' own ids
    assert samples[1].parts == (TextPart(text="Third page, caf\u00e9."),)
    assert samples[1].kind == "text"
    assert samples[1].meta["scores"] == {"language_score": 0.91}
    assert samples[1].meta["url"] == "https://e.x/3"
    assert samples[1].meta["locator"] == f"{path}#row=3"
    assert reasons(items) == ["missing_field", "no_content"]
    assert stats.read == 4 == stats.yielded + sum(stats.rejected.values())


@pytest.mark.parametrize("suffix,compress", [
    (".jsonl", lambda b: b), (".jsonl.gz", gzip.compress),
    (".json.gz", gzip.compress), (".jsonl.zst", lambda b: zstandard.ZstdCompressor().compress(b)),
])
def test_dolma_jsonl_plain_and_compressed(tmp_path, suffix, compress):
    path = tmp_path / f"part-0{suffix}"
    path.write_bytes(compress(b"\n".join(_dolma_lines()) + b"\n"))
    items, stats = read_counted(spec("jsonl-text", path))
    assert [i.text() if isinstance(i, Sample) else i.reason for i in items] == [
        "dolma one", "missing_field", "dolma three", "bad_json", "bad_json"]
    assert items[0].id == "d1" and items[2].id == "d3"
    assert items[0].meta["source"] == "c4"
    assert items[3].locator == f"{path}#line=4"
    assert stats.read == 5


def test_configurable_text_and_id_fields(tmp_path):
    path = tmp_path / "custom.jsonl"
    path.write_text(json.dumps({"doc_id": 7, "content": "custom field"}) + "\n"
                    + json.dumps({"content": "no id of its own"}) + "\n")
    items, _ = read_counted(spec("jsonl-text", path, text_field="content", id_field="doc_id"))
    assert items[0].text() == "custom field" and items[0].id == "7"
    assert items[1].id == "custom-2"  # position-based when the record has no id


@given(st.dictionaries(st.sampled_from(["text", "id", "url", "x_score"]),
                       st.one_of(st.none(), st.text(), st.integers(), st.floats())))
def test_text_sample_yields_text_or_a_reason(record):
    try:
        sample = text_sample(record, TextOptions(), source="s", sample_id="i", locator="l")
    except RecordRejected as err:
        assert err.reason in ("missing_field", "no_content")
        assert not isinstance(record.get("text"), str) or not record["text"].strip()
    else:
        assert sample.parts == (TextPart(text=record["text"]),) and record["text"].strip()
