"""Caption adapters on tiny fixtures in their real formats, failed and malformed rows included."""
from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from source_fixtures import image_bytes, read_all, spec, write_tar

from mixdata.demo import pretrain
from mixdata.demo.files import rng_for
from mixdata.errors import RecordRejected
from mixdata.sources import open_source
from mixdata.sources.caption import failed_rows, stats_failures, tsv_fields

KEYS = [f"{i:09d}" for i in range(6)]
JPEGS = {k: image_bytes(10 + i, 8, "JPEG", shade=40 * i) for i, k in enumerate(KEYS)}


def _meta(key, status="success", error=None, caption=None):
    return {"url": f"http://example.com/{key}.jpg", "caption": caption or f"caption {key}",
            "key": key, "status": status, "error_message": error, "width": 12, "height": 8,
            "original_width": 1200, "original_height": 800, "exif": "{}", "sha256": "0" * 64,
            "similarity": 0.31, "punsafe": 0.02}


# Rows img2dataset was given for shard 00000: 0, 1, 3 downloaded; 2 and 4 failed; 5 is listed
# as downloaded but its files are missing from the shard.
LISTING = [_meta(KEYS[0]), _meta(KEYS[1]), _meta(KEYS[2], "failed_to_download", "HTTP 404"),
           _meta(KEYS[3]), _meta(KEYS[4], "failed_to_resize", "image too small"), _meta(KEYS[5])]


def _members(key):
    return [(f"{key}.jpg", JPEGS[key]), (f"{key}.txt", f"caption {key}".encode()),
            (f"{key}.json", json.dumps(_meta(key)).encode())]


def _tar_layout(folder, listing=True, stats=False):
    members = _members(KEYS[0]) + _members(KEYS[1]) + [
        # 3: a corrupt json member
        (f"{KEYS[3]}.jpg", JPEGS[KEYS[3]]), (f"{KEYS[3]}.txt", b"x"), (f"{KEYS[3]}.json", b"{bad"),
    ]
    tar = write_tar(folder / "00000.tar", members)
    if listing:
        pq.write_table(pa.Table.from_pylist(LISTING), folder / "00000.parquet")
    if stats:
        (folder / "00000_stats.json").write_text(json.dumps({
            "count": 6, "successes": 4, "failed_to_download": 1, "failed_to_resize": 1,
            "status_dict": {"success": 4, "HTTP 404": 1, "image too small": 1}}))
    return tar


def test_img2dataset_tar_with_sibling_parquet_accounts_for_every_input_row(tmp_path):
    tar = _tar_layout(tmp_path)
    samples, rejects, items = read_all(spec("img2dataset", str(tmp_path / "*")))
    assert len(items) == len(LISTING)  # the tar's 3 records + the 3 rows it does not hold
    assert [s.id for s in samples] == [f"00000-{KEYS[0]}", f"00000-{KEYS[1]}"]
    first = samples[0]
    assert first.kind == "caption" and first.parts[1].text == f"caption {KEYS[0]}"
    assert first.parts[0].data == JPEGS[KEYS[0]]
    assert first.parts[0].meta == {"url": f"http://example.com/{KEYS[0]}.jpg",
                                   "original_width": 1200, "original_height": 800,
                                   "sha256": "0" * 64, "format": "jpg"}
    assert first.meta["scores"] == {"similarity": 0.31, "punsafe": 0.02}
    listing = tmp_path / "00000.parquet"
    assert [(r.locator, r.reason, r.message) for r in rejects] == [
        (f"{tar}:{KEYS[3]}", "bad_json", rejects[0].message),
        (f"{listing}#row=2", "download_failed", "HTTP 404"),
        (f"{listing}#row=4", "resize_failed", "image too small"),
        (f"{listing}#row=5", "image_missing", "listed as downloaded but absent from the shard")]


def test_img2dataset_units_skip_metadata_siblings(tmp_path):
    _tar_layout(tmp_path, stats=True)
    source = open_source(spec("img2dataset", str(tmp_path / "*")))
    assert source.units() == [str(tmp_path / "00000.tar")]


def test_img2dataset_stats_only_counts_failures_by_message(tmp_path):
    _tar_layout(tmp_path, listing=False, stats=True)
    samples, rejects, _items = read_all(spec("img2dataset", tmp_path / "00000.tar"))
    assert len(samples) == 2
    failed = [(r.reason, r.message) for r in rejects if r.reason != "bad_json"]
    assert failed == [("download_failed", "HTTP 404"), ("download_failed", "image too small")]


def test_img2dataset_files_layout(tmp_path):
    folder = tmp_path / "00000"
    folder.mkdir()
    for key in KEYS[:2]:
        for name, data in _members(key):
            (folder / name).write_bytes(data)
    (folder / f"{KEYS[3]}.json").write_text(json.dumps(_meta(KEYS[3])))  # no image file
    (folder / f"{KEYS[3]}.txt").write_text("orphan caption")
    pq.write_table(pa.Table.from_pylist(LISTING), tmp_path / "00000.parquet")
    samples, rejects, items = read_all(spec("img2dataset", folder, layout="files"))
    assert len(items) == len(LISTING)
    assert [s.parts[0].data for s in samples] == [JPEGS[KEYS[0]], JPEGS[KEYS[1]]]
    assert [s.meta["locator"] for s in samples] == [f"{folder}/{k}" for k in KEYS[:2]]
    assert [r.reason for r in rejects] == ["image_missing", "download_failed", "resize_failed",
                                           "image_missing"]


def test_img2dataset_parquet_layout_with_binary_column(tmp_path):
    rows = []
    for i, meta in enumerate(LISTING):
        ok = meta["status"] == "success"
        rows.append({**meta, "jpg": JPEGS[meta["key"]] if ok else None,
                     "txt": meta["caption"] if i != 1 else None})
    rows[1]["caption"] = None  # neither txt nor caption
    path = tmp_path / "00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4)
    source = open_source(spec("img2dataset", path))
    assert source.units() == [f"{path}#rg=0", f"{path}#rg=1"]
    samples, rejects, items = read_all(spec("img2dataset", path))
    assert len(items) == len(rows)
    assert [s.id for s in samples] == ["00000-0", "00000-3", "00000-5"]
    assert samples[1].parts[0].data == JPEGS[KEYS[3]]
    assert [(r.locator.rsplit("=", 1)[1], r.reason) for r in rejects] == [
        ("1", "missing_field"), ("2", "download_failed"), ("4", "resize_failed")]


def _mirror(tmp_path, urls, key="name"):
    root = tmp_path / "mirror"
    root.mkdir(exist_ok=True)
    for url, data in urls.items():
        name = hashlib.sha1(url.encode()).hexdigest() if key == "sha1" else url.rsplit("/", 1)[1]
        (root / name).write_bytes(data)
    return root


URLS = {f"http://img.example.com/p/{k}.jpg": JPEGS[k] for k in KEYS[:3]}
URL_LIST = list(URLS)


@pytest.mark.parametrize("fmt", ["cc3m-tsv", "cc12m-tsv"])
def test_tsv_captions(tmp_path, fmt):
    def line(caption, url):
        return f"{caption}\t{url}" if fmt == "cc3m-tsv" else f"{url}\t{caption}"

    lines = [line("a red square", URL_LIST[0]), line("a blue circle", URL_LIST[1]),
             "only one field", line("", URL_LIST[2]), "",
             line("not mirrored", "http://img.example.com/p/gone.jpg"),
             line("a green  shape", URL_LIST[2])]
    path = tmp_path / "train.tsv"
    path.write_text("\n".join(lines) + "\n")
    mirror = _mirror(tmp_path, URLS, "sha1")
    samples, rejects, items = read_all(spec(fmt, path, images_root=str(mirror), image_key="sha1"))
    assert len(items) == 6  # the blank line is not a record
    assert [(s.id, s.parts[1].text) for s in samples] == [
        ("train-1", "a red square"), ("train-2", "a blue circle"), ("train-7", "a green  shape")]
    assert samples[2].parts[0].data == JPEGS[KEYS[2]]
    assert samples[0].parts[0].meta == {"url": URL_LIST[0]}
    assert [(r.locator.rsplit("=", 1)[1], r.reason) for r in rejects] == [
        ("3", "bad_row"), ("4", "no_content"), ("6", "image_missing")]


def test_tsv_file_urls_are_percent_decoded(tmp_path):
    """CC3M-style lists write local images as file:// URLs, percent-encoded."""
    folder = tmp_path / "my photos"
    folder.mkdir()
    (folder / "cat 1.jpg").write_bytes(JPEGS[KEYS[0]])
    url = "file://" + str(folder).replace(" ", "%20") + "/cat%201.jpg"
    path = tmp_path / "train.tsv"
    path.write_text(f"a cat\t{url}\n")
    samples, rejects, _ = read_all(spec("cc3m-tsv", path))
    assert not rejects and samples[0].parts[0].data == JPEGS[KEYS[0]]


def test_tsv_header_line_is_skipped(tmp_path):
    path = tmp_path / "cc12m.tsv"
    path.write_text(f"url\tcaption\n{URL_LIST[0]}\thello\n")
    samples, rejects, items = read_all(spec("cc12m-tsv", path,
                                            images_root=str(_mirror(tmp_path, URLS))))
    assert len(items) == 1 and samples[0].id == "cc12m-2" and not rejects


def test_tsv_fields_core():
    assert tsv_fields("cap\thttp://u\n", "cc3m-tsv") == ("http://u", "cap")
    assert tsv_fields("http://u\tcap\r\n", "cc12m-tsv") == ("http://u", "cap")
    with pytest.raises(RecordRejected, match="missing_field"):
        tsv_fields("cap\t \n", "cc3m-tsv")


def test_laion_parquet_with_scores(tmp_path):
    rows = [{"URL": URL_LIST[0], "TEXT": "a photo", "WIDTH": 640, "HEIGHT": 480,
             "similarity": 0.33, "punsafe": 0.1, "pwatermark": 0.2, "LICENSE": "?", "NSFW": "UNLIKELY"},
            {"URL": URL_LIST[1], "TEXT": None, "WIDTH": 1, "HEIGHT": 1, "similarity": 0.3,
             "punsafe": None, "pwatermark": 0.1, "LICENSE": None, "NSFW": None},
            {"URL": None, "TEXT": "no url", "WIDTH": 1, "HEIGHT": 1, "similarity": 0.3,
             "punsafe": 0.0, "pwatermark": 0.1, "LICENSE": None, "NSFW": None}]
    path = tmp_path / "part-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    samples, rejects, items = read_all(spec("laion-parquet", path,
                                            images_root=str(_mirror(tmp_path, URLS))))
    assert len(items) == 3 and [s.id for s in samples] == ["part-00000-0"]
    sample = samples[0]
    assert sample.parts[1].text == "a photo" and sample.parts[0].data == JPEGS[KEYS[0]]
    assert sample.parts[0].meta == {"url": URL_LIST[0], "original_width": 640,
                                    "original_height": 480}
    assert sample.meta["scores"] == {"similarity": 0.33, "punsafe": 0.1, "pwatermark": 0.2}
    assert [r.reason for r in rejects] == ["missing_field", "missing_field"]


def test_datacomp_parquet_and_custom_fields(tmp_path):
    rows = [{"uid": "u0", "url": URL_LIST[2], "text": "dc text", "original_width": 50,
             "original_height": 40, "clip_b32_similarity_score": 0.29,
             "clip_l14_similarity_score": 0.27, "sha256": "ab"}]
    path = tmp_path / "dc.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    mirror = str(_mirror(tmp_path, URLS))
    samples, _, _ = read_all(spec("datacomp-parquet", path, images_root=mirror))
    assert samples[0].meta["uid"] == "u0" and samples[0].meta["scores"] == {
        "clip_b32_similarity_score": 0.29, "clip_l14_similarity_score": 0.27}
    assert samples[0].parts[0].meta["sha256"] == "ab"
    renamed = tmp_path / "renamed.parquet"
    pq.write_table(pa.Table.from_pylist([{"link": URL_LIST[0], "alt": "custom"}]), renamed)
    samples, _, _ = read_all(spec("datacomp-parquet", renamed, images_root=mirror,
                                  url_field="link", caption_field="alt"))
    assert samples[0].parts[1].text == "custom"


def test_failed_rows_and_stats_cores():
    rows = enumerate([{"key": "a", "status": "success"}, {"key": "b", "status": "failed_to_download",
                                                          "error_message": "timeout"}])
    assert list(failed_rows(rows, {"a"})) == [(1, "download_failed", "timeout")]
    assert stats_failures({"count": 3, "successes": 1, "failed_to_download": 2,
                           "failed_to_resize": 0}) == [("failed_to_download", 2),
                                                       ("failed_to_resize", 0)]


def test_demo_caption_shards_account_for_failed_rows(tmp_path):
    report = pretrain.write_caption(tmp_path, 40, rng_for("caption")).to_json()
    samples, rejects, items = read_all(spec("img2dataset", str(tmp_path / "caption/*.tar")))
    assert len(items) == report["records"] + report["failed_rows"]
    reasons = [r.reason for r in rejects]
    assert reasons.count("download_failed") == report["failed_rows"]
    assert reasons.count("missing_field") == report["malformed"]["missing_caption"]
    assert len(samples) == report["records"] - report["malformed"]["missing_caption"]
