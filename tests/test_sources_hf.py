"""`hf` sources: local datasets through `datasets.load_dataset(..., streaming=True)`, with
column renames, undecoded image features and the as_format adapter's record reader."""
from __future__ import annotations

import json

import pytest
from datasets import Dataset, Features, Image, List, Value
from ocr_fixtures import read_counted, reasons
from source_fixtures import image_bytes, spec, write_tar

from mixdata.sample import ImagePart, Sample, TextPart
from mixdata.sources import open_source
from mixdata.sources.hf import undecoded

PNG = image_bytes(8, 6, shade=42)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _cauldron(tmp_path, shards: int = 2):
    turn = {"user": Value("string"), "assistant": Value("string"), "source": Value("string")}
    features = Features({"images": List(Image()), "texts": List(turn)})
    rows = {"images": [[{"bytes": PNG, "path": None}], [], []],
            "texts": [[{"user": "what?", "assistant": "that.", "source": "s"}],
                      [{"user": "text only", "assistant": "yes", "source": "s"}],
                      []]}
    folder = tmp_path / "cauldron"
    folder.mkdir()
    dataset = Dataset.from_dict(rows, features=features)
    for i in range(shards):
        dataset.shard(shards, i, contiguous=True).to_parquet(folder / f"train-{i:05d}.parquet")
    return folder


def test_cauldron_rows_keep_image_bytes_and_shards_are_units(tmp_path):
    folder = _cauldron(tmp_path)
    files = sorted(str(p) for p in folder.glob("*.parquet"))
    source_spec = spec("hf", "parquet", name="hfsrc", as_format="cauldron", data_files=files)
    assert open_source(source_spec).units() == ["hf:parquet[train]#shard=0",
                                                "hf:parquet[train]#shard=1"]
    items, stats = read_counted(source_spec)
    first = items[0]
    assert first.source == "hfsrc" and first.kind == "sft" and first.id == "train-0-0"
    assert first.parts == (ImagePart(data=PNG), TextPart(text="what?", role="user"),
                           TextPart(text="that.", role="assistant"))
    assert first.meta["locator"] == "hf:parquet[train]#shard=0,row=0"
    assert [i.id for i in items if isinstance(i, Sample)] == ["train-0-0", "train-0-1"]
    assert reasons(items) == ["no_content"] and items[2].source == "hfsrc"
    assert stats.read == 3


def test_local_folder_non_streaming_matches_streaming(tmp_path):
    folder = _cauldron(tmp_path, shards=1)
    streamed, _ = read_counted(spec("hf", str(folder), as_format="cauldron"))
    loaded, _ = read_counted(spec("hf", str(folder), as_format="cauldron", streaming=False))
    assert [i.parts for i in streamed if isinstance(i, Sample)] == \
        [i.parts for i in loaded if isinstance(i, Sample)]
    assert len(streamed) == len(loaded) == 3


def test_columns_rename_into_the_format_fields(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [{"dialogue": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
            {"dialogue": [{"from": "human", "value": "<image> what"},
                          {"from": "gpt", "value": "no image given"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    items, _ = read_counted(spec("hf", "json", as_format="llava", data_files=[str(path)],
                                 columns={"dialogue": "conversations"}))
    assert items[0].parts == (TextPart(text="hi", role="user"),
                              TextPart(text="hello", role="assistant"))
    assert reasons(items) == ["image_count_mismatch"]
    text_path = tmp_path / "web.parquet"
    Dataset.from_dict({"content": ["a web page", ""], "score": [0.9, 0.1]}).to_parquet(text_path)
    items, _ = read_counted(spec("hf", "parquet", as_format="parquet-text",
                                 data_files=[str(text_path)], columns={"content": "text"}))
    assert items[0].text() == "a web page" and items[0].kind == "text"
    assert reasons(items) == ["no_content"]


def test_renderedtext_through_the_webdataset_builder(tmp_path):
    tar = write_tar(tmp_path / "rt-0.tar", [
        ("k1.png", PNG), ("k1.json", json.dumps({"ocr_annotation": {"text": ["a", "b"]}}).encode()),
    ])
    items, _ = read_counted(spec("hf", "webdataset", as_format="renderedtext",
                                 data_files=[str(tar)]))
    assert items[0].kind == "ocr" and items[0].text() == "a\nb"
    assert items[0].images[0].data == PNG


def test_undecoded_reaches_nested_images():
    features = {"a": Image(), "b": List(Image()), "c": {"d": List({"e": Image()})},
                "f": Value("string")}
    out = undecoded(features)
    assert out["a"].decode is False and out["b"].feature.decode is False
    assert out["c"]["d"].feature["e"].decode is False and out["f"] == Value("string")


def test_caption_and_interleaved_formats_read_through_hf(tmp_path):
    (tmp_path / "cat.png").write_bytes(PNG)
    image_path = str(tmp_path / "cat.png")
    laion = tmp_path / "laion.parquet"
    Dataset.from_dict({"URL": [image_path, str(tmp_path / "gone.png")],
                       "TEXT": ["a cat", "lost"], "punsafe": [0.01, 0.2]}).to_parquet(laion)
    items, _ = read_counted(spec("hf", "parquet", as_format="laion-parquet",
                                 data_files=[str(laion)]))
    assert items[0].kind == "caption" and items[0].images[0].data == PNG
    assert items[0].meta["scores"]["punsafe"] == 0.01
    assert reasons(items) == ["image_missing"]

    pairs = tmp_path / "pairs.parquet"
    Dataset.from_dict({"jpg": [{"bytes": PNG, "path": None}], "txt": ["embedded"]},
                      features=Features({"jpg": Image(), "txt": Value("string")})
                      ).to_parquet(pairs)
    items, _ = read_counted(spec("hf", "parquet", as_format="img2dataset",
                                 data_files=[str(pairs)]))
    assert items[0].images[0].data == PNG and items[0].text() == "embedded"

    obelics = tmp_path / "obelics.parquet"
    Dataset.from_dict({"images": [[image_path, None]], "texts": [[None, "after the image"]],
                       "metadata": ["[{}, null]"], "general_metadata": ['{"url": "u"}']}
                      ).to_parquet(obelics)
    items, _ = read_counted(spec("hf", "parquet", as_format="obelics",
                                 data_files=[str(obelics)]))
    assert [type(p).__name__ for p in items[0].parts] == ["ImagePart", "TextPart"]
    assert items[0].kind == "interleaved" and items[0].meta["url"] == "u"


def test_every_hf_format_has_a_record_reader():
    from typing import get_args, get_type_hints

    from mixdata.sources.options import HfOptions

    for fmt in get_args(get_type_hints(HfOptions)["as_format"]):
        assert callable(open_source(spec("hf", "x", as_format=fmt)).inner.record_sample), fmt
