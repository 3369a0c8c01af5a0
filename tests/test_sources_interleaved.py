"""Interleaved adapters on tiny fixtures in their real formats, malformed records included."""
from __future__ import annotations

import gzip
import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from loopback import serve
from source_fixtures import image_bytes, layout, read_all, spec, write_tar

from mixdata.demo import pretrain
from mixdata.demo.files import rng_for
from mixdata.errors import UnitDamaged
from mixdata.sources import open_source
from mixdata.sources.filtering import read_unit
from mixdata.sources.interleaved import mmc4_parts, obelics_parts, wds_interleaved_parts

IMAGES = {name: image_bytes(8 + i, 6, "PNG" if name.endswith("png") else "JPEG", shade=30 * i)
          for i, name in enumerate(["a.png", "b.jpg", "c.png", "d.jpg"])}


def _mirror(tmp_path, key="name"):
    root = tmp_path / "mirror"
    root.mkdir()
    for name, data in IMAGES.items():
        url = f"http://example.com/img/{name}"
        target = hashlib.sha1(url.encode()).hexdigest() if key == "sha1" else name
        (root / target).write_bytes(data)
    return root


def _url(name):
    return f"http://example.com/img/{name}"


OBELICS_ROWS = [
    # 0: text, image, text; metadata as a JSON string with null at text positions
    dict(images=[None, _url("a.png"), None], texts=["Intro text.", None, "After the image."],
         metadata=json.dumps([None, {"src": _url("a.png"), "alt_text": "a cat",
                                     "original_width": 640, "original_height": 480,
                                     "format": "png"}, None]),
         general_metadata=json.dumps({"url": "http://example.com/page0", "warc_filename": "w",
                                      "warc_record_offset": 1, "warc_record_length": 2})),
    # 1: falsy "" instead of null on the unset side; two images
    dict(images=["", _url("b.jpg"), _url("c.png")], texts=["Hello there.", "", ""],
         metadata=None, general_metadata=None),
    dict(images=[None, _url("a.png")], texts=["one", None, "three"],       # 2: lengths differ
         metadata=None, general_metadata=None),
    dict(images=[None], texts=["text"], metadata="{oops", general_metadata=None),  # 3: bad json
    dict(images=[_url("missing.png")], texts=[None], metadata=None,         # 4: not in mirror
         general_metadata=None),
    dict(images=[None, ""], texts=["", None], metadata=None, general_metadata=None),  # 5: empty
    dict(images=[_url("a.png")], texts=None, metadata=None, general_metadata=None),  # 6: no texts
    dict(images=[_url("a.png")], texts=["both"], metadata=None, general_metadata=None),  # 7
    dict(images=[None], texts=["short"], metadata=json.dumps([None, None]),  # 8: metadata length
         general_metadata=None),
]
OBELICS_REASONS = {2: "mismatched_lists", 3: "bad_json", 4: "image_missing", 5: "no_content",
                   6: "missing_field", 7: "mismatched_lists", 8: "mismatched_lists"}


def _obelics_file(tmp_path, rows=OBELICS_ROWS, name="train-00000.parquet"):
    path = tmp_path / name
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4)
    return path


def test_obelics_samples_rejects_and_accounting(tmp_path):
    path = _obelics_file(tmp_path)
    samples, rejects, items = read_all(spec("obelics", path, images_root=str(_mirror(tmp_path))))
    assert len(items) == len(OBELICS_ROWS)  # read = yielded + rejected, one item per row
    assert [s.id for s in samples] == ["train-00000-0", "train-00000-1"]
    assert layout(samples[0], IMAGES) == ["T:Intro text.", "I:a.png", "T:After the image."]
    assert layout(samples[1], IMAGES) == ["T:Hello there.", "I:b.jpg", "I:c.png"]
    first = samples[0]
    assert first.kind == "interleaved" and first.meta["url"] == "http://example.com/page0"
    assert first.images[0].meta == {"url": _url("a.png"), "alt_text": "a cat",
                                    "original_width": 640, "original_height": 480, "format": "png"}
    assert first.meta["locator"] == f"{path}#row=0"
    got = {int(r.locator.rsplit("=", 1)[1]): r.reason for r in rejects}
    assert got == OBELICS_REASONS
    assert all(r.source == "obelics" and r.message for r in rejects)


def test_obelics_units_are_row_groups_and_ids_do_not_depend_on_them(tmp_path):
    path = _obelics_file(tmp_path)
    source_spec = spec("obelics", path, images_root=str(_mirror(tmp_path)))
    from mixdata.sources import open_source

    source = open_source(source_spec)
    assert source.units() == [f"{path}#rg=0", f"{path}#rg=1", f"{path}#rg=2"]
    second = list(source.read(f"{path}#rg=1"))
    assert [getattr(i, "id", None) or i.locator for i in second] == \
        [f"{path}#row={r}" for r in range(4, 8)]


def test_obelics_mirror_keyed_by_url_sha1(tmp_path):
    path = _obelics_file(tmp_path, OBELICS_ROWS[:2])
    samples, rejects, _ = read_all(spec("obelics", path, images_root=str(_mirror(tmp_path, "sha1")),
                                        image_key="sha1"))
    assert not rejects
    assert layout(samples[1], IMAGES) == ["T:Hello there.", "I:b.jpg", "I:c.png"]


def test_obelics_without_mirror_rejects_urls_as_image_missing(tmp_path):
    path = _obelics_file(tmp_path, OBELICS_ROWS[:1])
    _, rejects, _ = read_all(spec("obelics", path))
    assert [r.reason for r in rejects] == ["image_missing"]
    assert "images_root" in rejects[0].message


def test_omnicorpus_struct_columns_and_scores(tmp_path):
    general = {"url": "http://example.com/omni", "id": "x1", "fluency_prob": 0.9,
               "porn_prob": 0.01, "domain": ["example.com"]}
    image_meta = {"width": 320, "height": 200, "aesthetic_prob": 0.7, "unsafe_prob": 0.05,
                  "img_url_sha": "abc"}
    rows = [
        dict(general_metadata=general, images=[_url("c.png"), None, _url("d.jpg")],
             texts=[None, "caption-like text", None],
             metadata=[image_meta, None, {**image_meta, "unsafe_prob": 0.2}]),
        # one metadata entry per image rather than per position
        dict(general_metadata=general, images=[None, _url("a.png")], texts=["first", None],
             metadata=[image_meta]),
    ]
    path = tmp_path / "omni.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert pa.types.is_struct(pq.read_schema(path).field("general_metadata").type)
    samples, rejects, _ = read_all(spec("omnicorpus", path, images_root=str(_mirror(tmp_path))))
    assert not rejects
    assert layout(samples[0], IMAGES) == ["I:c.png", "T:caption-like text", "I:d.jpg"]
    assert samples[0].images[0].meta["original_width"] == 320
    assert samples[0].meta["scores"] == {"fluency_prob": 0.9, "porn_prob": 0.01,
                                         "aesthetic_prob": [0.7, 0.7], "unsafe_prob": [0.05, 0.2]}
    assert layout(samples[1], IMAGES) == ["T:first", "I:a.png"]


MMC4_DOCS = [
    {"url": "http://example.com/m0", "could_have_url_duplicate": 0,
     "text_list": ["Sentence zero.", "Sentence one.", "Sentence two."],
     "similarity_matrix": [[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]],
     "image_info": [
         {"image_name": "b.jpg", "raw_url": _url("b.jpg"), "face_detections": None,
          "matched_text_index": 2, "matched_sim": 0.31},
         {"image_name": "a.png", "raw_url": _url("a.png"), "face_detections": [[0, 0, 1, 1]],
          "matched_text_index": 0, "matched_sim": 0.28}]},
    "{this is not json",
    {"url": "u", "image_info": []},                                              # no text_list
    {"text_list": ["only"], "image_info": [{"image_name": "a.png", "matched_text_index": 5}]},
    {"text_list": ["s"], "image_info": [{"image_name": "gone.jpg", "matched_text_index": 0}]},
    {"text_list": ["Just text, no images."], "image_info": [], "could_have_url_duplicate": 1},
]


def _mmc4_file(path, docs=MMC4_DOCS):
    lines = [d if isinstance(d, str) else json.dumps(d) for d in docs]
    body = ("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n").encode()  # a blank line
    path.write_bytes(gzip.compress(body) if path.name.endswith(".gz") else body)
    return path


@pytest.mark.parametrize("name", ["docs.jsonl", "docs.jsonl.gz"])
def test_mmc4_places_images_before_matched_sentences(tmp_path, name):
    images = tmp_path / "images"
    images.mkdir()
    for image_name, data in IMAGES.items():
        (images / image_name).write_bytes(data)
    path = _mmc4_file(tmp_path / name)
    samples, rejects, items = read_all(spec("mmc4", path, images_root=str(images)))
    assert len(items) == len(MMC4_DOCS)
    assert layout(samples[0], IMAGES) == ["I:a.png", "T:Sentence zero.", "T:Sentence one.",
                                          "I:b.jpg", "T:Sentence two."]
    assert samples[0].id == "docs-1" and samples[0].meta["url"] == "http://example.com/m0"
    # per-image scores follow the images' order in the document
    assert samples[0].meta["scores"] == {"matched_sim": [0.28, 0.31], "could_have_url_duplicate": 0.0}
    assert samples[0].images[0].meta == {"url": _url("a.png"), "matched_text_index": 0,
                                         "matched_sim": 0.28, "faces": 1}
    assert layout(samples[1], IMAGES) == ["T:Just text, no images."]
    assert samples[1].id == "docs-7"  # line 7: the blank line 4 is not a record
    assert [(r.locator.rsplit("=", 1)[1], r.reason) for r in rejects] == [
        ("2", "bad_json"), ("3", "missing_field"), ("5", "bad_index"), ("6", "image_missing")]


def test_missing_images_can_be_dropped_instead_of_rejecting_the_document(tmp_path):
    obelics = _obelics_file(tmp_path, [dict(OBELICS_ROWS[1], images=["", _url("gone.jpg"),
                                                                       _url("c.png")])])
    samples, rejects, _ = read_all(spec("obelics", obelics, images_root=str(_mirror(tmp_path)),
                                        missing_images="drop"))
    assert not rejects and layout(samples[0], IMAGES) == ["T:Hello there.", "I:c.png"]
    assert samples[0].meta["images_dropped"] == 1
    images = tmp_path / "mirror"
    mmc4 = _mmc4_file(tmp_path / "m.jsonl", [MMC4_DOCS[4]])
    samples, rejects, _ = read_all(spec("mmc4", mmc4, images_root=str(images),
                                        missing_images="drop"))
    assert layout(samples[0], IMAGES) == ["T:s"] and samples[0].meta["images_dropped"] == 1


def test_mmc4_images_relative_to_the_jsonl_folder_by_default(tmp_path):
    (tmp_path / "a.png").write_bytes(IMAGES["a.png"])
    path = _mmc4_file(tmp_path / "one.jsonl", [MMC4_DOCS[3] | {"image_info": [
        {"image_name": "a.png", "matched_text_index": 0}]}])
    samples, rejects, _ = read_all(spec("mmc4", path))
    assert not rejects and layout(samples[0], IMAGES) == ["I:a.png", "T:only"]


def _wds_tar(path):
    return write_tar(path, [
        ("doc1.0.text.txt", b"First paragraph."),
        ("doc1.1.image.png", IMAGES["a.png"]),
        ("doc1.2.text.txt", b"Second paragraph."),
        ("doc1.json", json.dumps({"url": "http://example.com/d1", "similarity": 0.4}).encode()),
        # members out of order inside a sample are put back in order of i
        ("doc2.1.text.txt", "caf\u00e9 text".encode()),
        ("doc2.0.image.jpg", IMAGES["b.jpg"]),
        ("doc3.0.text.txt", b"x"),
        ("doc3.1.caption.txt", b"not a part kind"),
        ("doc4.json", b"{}"),
        ("doc5.0.text.txt", b"a"),
        ("doc5.0.image.png", IMAGES["c.png"]),
    ])


def test_wds_interleaved_orders_parts_and_rejects_bad_members(tmp_path):
    path = _wds_tar(tmp_path / "shard-000.tar")
    samples, rejects, items = read_all(spec("wds-interleaved", path))
    assert len(items) == 5
    assert [s.id for s in samples] == ["shard-000-doc1", "shard-000-doc2"]
    assert layout(samples[0], IMAGES) == ["T:First paragraph.", "I:a.png", "T:Second paragraph."]
    assert samples[0].meta["scores"] == {"similarity": 0.4}
    assert layout(samples[1], IMAGES) == ["I:b.jpg", "T:caf\u00e9 text"]
    assert samples[1].images[0].meta == {"format": "jpg"}
    assert [(r.locator, r.reason) for r in rejects] == [
        (f"{path}:doc3", "bad_member"), (f"{path}:doc4", "no_content"),
        (f"{path}:doc5", "mismatched_lists")]


def test_truncated_tar_is_a_unit_reject_after_the_good_samples(tmp_path):
    path = _wds_tar(tmp_path / "cut.tar")
    whole = path.read_bytes()
    path.write_bytes(whole[:2500])  # inside doc1's image member: doc1 is incomplete
    with pytest.raises(UnitDamaged, match=r"cut\.tar .*unit_truncated"):
        read_all(spec("wds-interleaved", path))
    source = open_source(spec("wds-interleaved", path))
    items = list(read_unit(source, str(path)))
    assert [(type(i).__name__, getattr(i, "reason", None)) for i in items] == [
        ("Reject", "unit_truncated")]
    assert items[0].locator.startswith(f"{path}@byte ")


def test_pure_cores_work_without_io():
    def load(ref, meta):
        from mixdata.sample import ImagePart

        return ImagePart(data=ref.encode(), meta=meta)

    parts, _ = obelics_parts({"images": [None, "u"], "texts": ["t", ""]}, load)
    assert [type(p).__name__ for p in parts] == ["TextPart", "ImagePart"]
    parts, meta = mmc4_parts({"text_list": ["a"], "image_info": [
        {"image_name": "n", "matched_text_index": 0, "matched_sim": 0.5}]}, load)
    assert parts[0].data == b"n" and meta == {"scores": {"matched_sim": [0.5]}}
    parts, meta = obelics_parts({"images": ["u", None], "texts": [None, "t"]}, lambda r, m: None)
    assert [p.text for p in parts] == ["t"] and meta == {"scores": {}, "images_dropped": 1}
    parts, meta = wds_interleaved_parts({"1.text.txt": b"b", "0.text.txt": b"a"})
    assert [p.text for p in parts] == ["a", "b"] and meta == {}


def test_demo_interleaved_files_read_with_their_reported_defects(tmp_path):
    report = pretrain.write_interleaved(tmp_path, 12, rng_for("interleaved")).to_json()
    samples, rejects, items = read_all(spec("obelics", str(tmp_path / "interleaved/*.parquet")))
    assert len(items) == report["records"] == 12
    reasons = sorted(r.reason for r in rejects)
    assert reasons == ["image_missing", "mismatched_lists"]
    # a broken image is kept here: its bytes are rejected later, by the image step
    assert len(samples) == report["valid"] + report["malformed"]["image_broken"]
    assert all(s.texts and s.images for s in samples)


@pytest.fixture
def http_root(tmp_path):
    """Serve `tmp_path/www` on loopback for the duration of one test."""
    root = tmp_path / "www"
    root.mkdir()
    with serve(root) as (url, _):
        yield root, url


def test_obelics_row_groups_over_http_match_the_local_read(http_root, tmp_path):
    root, base = http_root
    (root / "img").mkdir()
    for name, data in IMAGES.items():
        (root / "img" / name).write_bytes(data)
    # images referenced by paths relative to the parquet's folder, as the demo corpus does
    rows = [dict(row, images=[i and i.replace("http://example.com/", "") for i in row["images"]])
            if row["images"] else row for row in OBELICS_ROWS]
    _obelics_file(root, rows, name="remote.parquet")
    local = read_all(spec("obelics", root / "remote.parquet"))[2]
    remote = read_all(spec("obelics", f"{base}/remote.parquet"))[2]
    assert len(remote) == len(OBELICS_ROWS)
    assert [getattr(i, "reason", None) for i in remote] == [getattr(i, "reason", None) for i in local]
    assert [getattr(i, "id", None) for i in remote] == [getattr(i, "id", None) for i in local]
    assert layout(remote[1], IMAGES) == ["T:Hello there.", "I:b.jpg", "I:c.png"]


def test_wrong_types_and_corrupt_compression_are_reported(tmp_path):
    path = _obelics_file(tmp_path, [dict(OBELICS_ROWS[0], texts=None, images=None)])
    bad = _mmc4_file(tmp_path / "types.jsonl", [{"text_list": "not a list", "image_info": []},
                                               {"text_list": ["a"], "image_info": {}}])
    assert [r.reason for r in read_all(spec("mmc4", bad))[1]] == ["bad_field", "bad_field"]
    assert [r.reason for r in read_all(spec("obelics", path))[1]] == ["missing_field"]
    cut = _mmc4_file(tmp_path / "cut.jsonl.gz", MMC4_DOCS * 50)
    cut.write_bytes(cut.read_bytes()[:-40])
    with pytest.raises(UnitDamaged, match=r"cut.jsonl.gz \(after line \d+\): unit_truncated"):
        read_all(spec("mmc4", cut))
