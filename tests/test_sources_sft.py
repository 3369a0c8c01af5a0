"""SFT adapters: the_cauldron/Docmatix parquet, LLaVA JSON (array and jsonl), chat messages."""
from __future__ import annotations

import base64
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ocr_fixtures import read_counted, reasons
from source_fixtures import image_bytes, spec

from mixdata.errors import RecordRejected
from mixdata.sample import ImagePart, Sample, TextPart
from mixdata.sources import sft
from mixdata.sources.sft import decode_data_uri, json_records, llava_parts

RED, BLUE = image_bytes(8, 6, shade=10), image_bytes(8, 6, shade=200)


def _layout(sample: Sample) -> list[str]:
    names = {RED: "RED", BLUE: "BLUE"}
    return [f"{p.role}:{p.text}" if isinstance(p, TextPart) else names.get(p.data, "?")
            for p in sample.parts]


def _write_images(folder) -> None:
    (folder / "imgs").mkdir()
    (folder / "imgs" / "red.png").write_bytes(RED)
    (folder / "imgs" / "blue.png").write_bytes(BLUE)


def test_cauldron_images_first_then_turns(tmp_path):
    _write_images(tmp_path)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    turn = pa.struct([("user", pa.string()), ("assistant", pa.string()), ("source", pa.string())])
    rows = {
        "images": [[{"bytes": RED, "path": None}, {"bytes": None, "path": "imgs/blue.png"}],
                   [], [{"bytes": None, "path": "imgs/nowhere.png"}], [], []],
        "texts": [[{"user": "Q1", "assistant": "A1", "source": "geomverse"},
                   {"user": "Q2", "assistant": "A2", "source": "geomverse"}],
                  [{"user": "text only", "assistant": "fine", "source": "x"}],
                  [{"user": "q", "assistant": "a", "source": "x"}],
                  [], [{"user": "q", "assistant": None, "source": "x"}]],
    }
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.table(rows, schema=pa.schema([("images", pa.list_(image)),
                                                    ("texts", pa.list_(turn))])), path)
    items, stats = read_counted(spec("cauldron", path))
    assert _layout(items[0]) == ["RED", "BLUE", "user:Q1", "assistant:A1", "user:Q2",
                                 "assistant:A2"]
    assert items[0].kind == "sft" and items[0].id == "train-00000-of-00001-0"
    assert _layout(items[1]) == ["user:text only", "assistant:fine"]
    assert reasons(items) == ["image_missing", "no_content", "missing_field"]
    assert stats.read == 5


LLAVA = [
    {"id": "000000033471", "image": "imgs/red.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat color is it?"},
        {"from": "gpt", "value": "Red."},
        {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
    {"id": "multi", "image": ["imgs/red.png", "imgs/blue.png"], "conversations": [
        {"from": "human", "value": "Compare <image> and <image> please"},
        {"from": "gpt", "value": "Different."}]},
    {"id": "sharegpt", "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello"}]},
    {"id": "tags", "image": "imgs/red.png", "conversations": [
        {"from": "human", "value": "no tag here"}, {"from": "gpt", "value": "x"}]},
    {"id": "role", "conversations": [{"from": "robot", "value": "?"}]},
    {"id": "noanswer", "conversations": [{"from": "human", "value": "alone"}]},
    {"id": "missing", "image": "imgs/none.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
    [1, 2],
]
LLAVA_EXPECTED = [
    ["RED", "user:What color is it?", "assistant:Red.", "user:Sure?", "assistant:Yes."],
    ["user:Compare ", "RED", "user: and ", "BLUE", "user: please", "assistant:Different."],
    ["system:Be brief.", "user:Hi", "assistant:Hello"],
    "image_count_mismatch", "bad_role", "no_assistant", "image_missing", "bad_json",
]


@pytest.mark.parametrize("layout", ["array", "jsonl"])
def test_llava_array_and_jsonl(tmp_path, layout):
    _write_images(tmp_path)
    if layout == "array":
        path = tmp_path / "llava_v1_5_mix665k.json"
        path.write_text(json.dumps(LLAVA, indent=1))
    else:
        path = tmp_path / "llava.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in LLAVA) + "\n")
    items, stats = read_counted(spec("llava", path))
    got = [_layout(i) if isinstance(i, Sample) else i.reason for i in items]
    assert got == LLAVA_EXPECTED
    assert items[0].id == "000000033471"  # the record's own id
    suffix = "item=0" if layout == "array" else "line=1"
    assert items[0].meta["locator"] == f"{path}#{suffix}"
    assert stats.read == len(LLAVA) == stats.yielded + sum(stats.rejected.values())


def test_json_array_streams_in_small_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(sft, "_CHUNK", 7)   # forces a refill inside every element
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"n": 1}, {"n": 22, "s": "x" * 30}, 12345, {"n": 3}]))
    got = [(pos, r if isinstance(r, dict) else r.reason) for pos, r in json_records(str(path))]
    assert got == [("item=0", {"n": 1}), ("item=1", {"n": 22, "s": "x" * 30}),
                   ("item=2", "bad_json"), ("item=3", {"n": 3})]
    path.write_text('[{"n": 1}, {"n": oops}, {"n": 3}]')
    got = [(pos, r if isinstance(r, dict) else r.reason) for pos, r in json_records(str(path))]
    assert got == [("item=0", {"n": 1}), ("item=1", "bad_json")]


def test_chat_messages_hf_and_openai_parts(tmp_path):
    _write_images(tmp_path)
    uri = "data:image/png;base64," + base64.b64encode(BLUE).decode()
    records = [
        {"messages": [
            {"role": "system", "content": "You see images."},
            {"role": "user", "content": [{"type": "image", "path": "imgs/red.png"},
                                         {"type": "text", "text": "What is this?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A red box."}]}]},
        {"messages": [
            {"role": "user", "content": [{"type": "text", "text": "And this?"},
                                         {"type": "image_url", "image_url": {"url": uri}}]},
            {"role": "assistant", "content": "Blue."}]},
        {"images": ["imgs/blue.png"], "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "trl"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "data:image/png;base64,@@@"}}]}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": []},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    items, stats = read_counted(spec("chat-messages", path))
    got = [_layout(i) if isinstance(i, Sample) else i.reason for i in items]
    assert got == [
        ["system:You see images.", "RED", "user:What is this?", "assistant:A red box."],
        ["user:And this?", "BLUE", "assistant:Blue."],
        ["BLUE", "user:trl", "assistant:ok"],
        "bad_image_uri", "bad_part", "bad_role", "no_content"]
    assert stats.read == len(records)


def test_decode_data_uri():
    assert decode_data_uri("data:image/png;base64," + base64.b64encode(b"abc").decode()) == b"abc"
    for bad in ("data:image/png,abc", "data:image/png;base64,", "data:x;base64,a b"):
        with pytest.raises(RecordRejected, match="bad_image_uri"):
            decode_data_uri(bad)


@given(st.lists(st.tuples(st.sampled_from(["human", "gpt"]), st.integers(0, 3),
                          st.text(alphabet="ab \n", max_size=6)), min_size=1, max_size=5))
def test_llava_images_follow_their_tags(turns):
    """Invariant: every tag becomes exactly one image, in order, and no text keeps a tag."""
    conversations = [{"from": who, "value": (IMAGE := "<image>") * tags + text}
                     for who, tags, text in turns]
    n = sum(tags for _, tags, _ in turns)
    loaded = []

    def load(ref, meta):
        loaded.append(ref)
        return ImagePart(data=ref.encode())

    parts = llava_parts({"image": [f"i{k}" for k in range(n)], "conversations": conversations},
                        load)
    images = [p.data for p in parts if isinstance(p, ImagePart)]
    assert images == [f"i{k}".encode() for k in range(n)]
    assert all(IMAGE not in p.text for p in parts if isinstance(p, TextPart))
    assert loaded == [f"i{k}" for k in range(n)]


@pytest.mark.parametrize("fmt", ["llava", "chat-messages"])
def test_relative_image_paths_keep_their_folders_under_images_root(tmp_path, fmt):
    """LLaVA-665k names images relative to its image folder; two files may share a base name."""
    root = tmp_path / "images"
    paths = ["coco/train2017/000000391895.jpg", "gqa/images/000000391895.jpg"]
    for shade, relative in enumerate(paths):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(image_bytes(8, 6, shade=40 * shade))
    if fmt == "llava":
        records = [{"id": f"r{i}", "image": ref, "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A."}]}
            for i, ref in enumerate(paths)]
    else:
        records = [{"id": f"r{i}", "messages": [
            {"role": "user", "content": [{"type": "image", "path": ref},
                                         {"type": "text", "text": "What is it?"}]},
            {"role": "assistant", "content": "A."}]} for i, ref in enumerate(paths)]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    items, _ = read_counted(spec(fmt, path, images_root=str(root)))
    assert [i.id for i in items] == ["r0", "r1"]  # every record kept, under its own id
    assert [i.images[0].data for i in items] == [(root / p).read_bytes() for p in paths]
    items, _ = read_counted(spec(fmt, path, images_root=str(root), image_key="name"))
    assert reasons(items) == ["image_missing", "image_missing"]  # basename only: not found


def test_chat_messages_keep_their_own_id(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"id": "conv-77", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "x"},
                                   {"role": "assistant", "content": "y"}]}) + "\n")
    items, _ = read_counted(spec("chat-messages", path))
    assert [i.id for i in items] == ["conv-77", "chat-2"]
