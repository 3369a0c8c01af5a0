"""Image-caption pairs: img2dataset output (tar, parquet, files) and URL lists (CC3M/CC12M TSV,
LAION/DataComp parquet) whose images come from a local mirror or fsspec.

Pure cores map one record to (caption, image fields, meta); the adapters stream records and,
for img2dataset, account for the rows that failed to download: they are listed only in the
sibling `00000.parquet` (or counted in `00000_stats.json`) and become `download_failed`
rejects, so records read matches the rows img2dataset was given.
"""
from __future__ import annotations

import posixpath
from collections.abc import Iterator

import fsspec

from ..errors import RecordRejected, Reject
from ..sample import ImagePart, Sample, TextPart
from ..storage import exists, expand, read_bytes
from .records import (
    RecordSource,
    base_dir,
    file_stem,
    parquet_rows,
    parquet_units,
    parse_json,
    require,
    score_fields,
    text_lines,
)
from .tario import group_members, iter_tar_groups

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
FAILED_REASONS = {"failed_to_download": "download_failed", "failed_to_resize": "resize_failed"}
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# format -> (url field, caption field) unless the recipe names them.
URL_LIST_FIELDS = {"laion-parquet": ("URL", "TEXT"), "datacomp-parquet": ("url", "text"),
                   "cc3m-tsv": ("url", "caption"), "cc12m-tsv": ("url", "caption")}
_IMAGE_FIELDS = {"url": "url", "URL": "url", "original_width": "original_width",
                 "original_height": "original_height", "WIDTH": "original_width",
                 "HEIGHT": "original_height", "sha256": "sha256"}


def caption_text(value) -> str:
    """A caption as a string; RecordRejected `missing_field` when absent, `no_content` if blank."""
    if value is None:
        raise RecordRejected("missing_field", "no caption")
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    if not text.strip():
        raise RecordRejected("no_content", "empty caption")
    return text


def image_meta(record: dict) -> dict:
    """What a record knows about its image without decoding it (url, original size, hash)."""
    return {dst: record[src] for src, dst in _IMAGE_FIELDS.items() if record.get(src) is not None}


def img2dataset_record(members: dict, meta: dict) -> tuple[str, ImagePart]:
    """One img2dataset sample -> (caption, image).

    `members` holds the image bytes under their format (`jpg`, ...) and maybe `txt`; `meta` is
    the sample's JSON (tar and files layouts) or the row itself (parquet layout).
    """
    text = members.get("txt")
    caption = caption_text(text if text is not None else meta.get("caption"))
    ext = next((e for e in IMAGE_EXTS if members.get(e) is not None), None)
    if ext is None:
        raise RecordRejected("image_missing", "no image among " + ", ".join(sorted(members)))
    return caption, ImagePart(data=members[ext], meta={**image_meta(meta), "format": ext})


def member_json(members: dict[str, bytes]) -> dict:
    """The `KEY.json` member as a dict ({} when absent); RecordRejected `bad_json` if broken."""
    meta = parse_json(members["json"], "json") if "json" in members else {}
    if not isinstance(meta, dict):
        raise RecordRejected("bad_json", "json member is not an object")
    return meta


def tsv_fields(line: str, fmt: str) -> tuple[str, str]:
    """A CC3M (`caption<TAB>url`) or CC12M (`url<TAB>caption`) line -> (url, caption)."""
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) != 2:
        raise RecordRejected("bad_row", f"expected 2 tab-separated fields, found {len(fields)}")
    url, caption = (fields[1], fields[0]) if fmt == "cc3m-tsv" else fields
    if not url.strip():
        raise RecordRejected("missing_field", "no url")
    return url.strip(), caption_text(caption)


def failed_rows(metadata_rows: Iterator[tuple[int, dict]], seen: set[str]
                ) -> Iterator[tuple[int, str, str]]:
    """Rows of an img2dataset sibling parquet that produced no sample: (row, reason, message).

    A row marked `success` but absent from the shard is reported as `image_missing`.
    """
    for row, record in metadata_rows:
        if str(record.get("key")) in seen:
            continue
        status = record.get("status")
        if status == "success":
            yield row, "image_missing", "listed as downloaded but absent from the shard"
        else:
            yield row, FAILED_REASONS.get(status, "download_failed"), \
                str(record.get("error_message") or status)


def stats_failures(stats: dict) -> list[tuple[str, int]]:
    """(error message, count) of the failed rows an `_stats.json` counts, in a stable order."""
    by_message = {k: v for k, v in (stats.get("status_dict") or {}).items() if k != "success"}
    if by_message:
        return sorted(by_message.items())
    return [(name, int(stats.get(name) or 0)) for name in FAILED_REASONS]


def _caption_sample(source: str, sample_id: str, locator: str, caption: str, image: ImagePart,
                    meta: dict) -> Sample:
    return Sample(id=sample_id, source=source, kind="caption",
                  parts=(image, TextPart(text=caption)), meta={**meta, "locator": locator})


class Img2DatasetSource(RecordSource):
    """img2dataset output. Units: tars, directories (files layout) or parquet row groups."""

    def units(self) -> list[str]:
        paths = expand(self.spec.uri)
        layout = self.options.layout
        if layout == "parquet" or (layout == "auto" and all(p.endswith(".parquet") for p in paths)):
            return parquet_units(paths, self.counter)
        # Beside tars and folders, img2dataset writes metadata siblings a glob may catch.
        shards = {p.removesuffix(s) for p in paths for s in _TAR_SUFFIXES if p.endswith(s)}
        return [p for p in paths if not p.endswith("_stats.json")
                and not (p.endswith(".parquet") and p.removesuffix(".parquet") in shards)]

    def read(self, unit: str) -> Iterator[Sample | Reject]:
        if "#rg=" in unit:
            yield from self._read_parquet(unit)
            return
        is_tar = unit.endswith(_TAR_SUFFIXES)
        groups = iter_tar_groups(unit, self.counter) if is_tar else self._folder_groups(unit)
        stem, seen = file_stem(unit), set()
        for key, members, locator in groups:
            seen.add(posixpath.basename(key))
            if isinstance(members, RecordRejected):
                yield self.reject(locator, members.reason, members.message)
                continue
            yield self.guard(locator, lambda: self._sample(members, f"{stem}-{key}", locator))
        shard = next((unit.removesuffix(s) for s in _TAR_SUFFIXES if unit.endswith(s)),
                     unit.rstrip("/"))
        yield from self._failures(shard, seen)

    def _sample(self, members: dict, sample_id: str, locator: str) -> Sample:
        meta = member_json(members)
        caption, image = img2dataset_record(members, meta)
        return self._pair(sample_id, locator, caption, image, meta)

    def _pair(self, sample_id: str, locator: str, caption: str, image: ImagePart,
              meta: dict) -> Sample:
        return _caption_sample(self.name, sample_id, locator, caption, image,
                               {"url": meta.get("url"), "key": meta.get("key"),
                                "scores": score_fields(meta)})

    def _folder_groups(self, folder: str):
        """The files layout: `folder/KEY.jpg`, `KEY.txt`, `KEY.json`, read one file at a time."""
        fs, path = fsspec.core.url_to_fs(folder)
        names = sorted(e["name"] for e in fs.ls(path, detail=True) if e["type"] == "file")
        members = ((posixpath.basename(n), read_bytes(fs.unstrip_protocol(n), self.counter))
                   for n in names)
        for key, group in group_members(members):
            yield key, group, f"{folder.rstrip('/')}/{key}"

    def _failures(self, shard: str, seen: set[str]) -> Iterator[Reject]:
        """Rejects for input rows img2dataset could not turn into samples."""
        listing, stats = shard + ".parquet", shard + "_stats.json"
        if exists(listing):
            for row, reason, message in failed_rows(
                    parquet_rows(listing, self.counter, ["key", "status", "error_message"]), seen):
                yield self.reject(f"{listing}#row={row}", reason, message)
        elif exists(stats):
            counts = parse_json(read_bytes(stats, self.counter), stats)
            for message, count in stats_failures(counts if isinstance(counts, dict) else {}):
                for i in range(count):
                    yield self.reject(f"{stats}#{i}", "download_failed", message)

    def _read_parquet(self, unit: str) -> Iterator[Sample | Reject]:
        """The parquet layout: a binary image column (`jpg`, ...) beside `txt` or `caption`."""
        stem, path = file_stem(unit), unit.split("#", 1)[0]
        for row, record in parquet_rows(unit, self.counter):
            locator = f"{path}#row={row}"
            yield self.guard(locator, lambda: self._parquet_sample(record, f"{stem}-{row}",
                                                                   locator))

    def record_sample(self, record: dict, sample_id: str, locator: str) -> Sample:
        """One parquet-layout row read elsewhere (the `hf` adapter)."""
        return self._parquet_sample(record, sample_id, locator)

    def _parquet_sample(self, record: dict, sample_id: str, locator: str) -> Sample:
        status = record.get("status")
        if status is not None and status != "success":
            raise RecordRejected(FAILED_REASONS.get(status, "download_failed"),
                                 str(record.get("error_message") or status))
        caption, image = img2dataset_record(record, record)
        return self._pair(sample_id, locator, caption, image, record)


class TsvCaptionSource(RecordSource):
    """CC3M (`caption<TAB>url`) and CC12M (`url<TAB>caption`) TSV files, no header."""

    def units(self) -> list[str]:
        return expand(self.spec.uri)

    def read(self, unit: str) -> Iterator[Sample | Reject]:
        stem, load = file_stem(unit), self.loader(base_dir(unit))
        for number, line in text_lines(unit, self.counter):
            if number == 1 and _is_header(line):
                continue
            locator = f"{unit}#line={number}"
            yield self.guard(locator, lambda: self._sample(line, f"{stem}-{number}", locator, load))

    def _sample(self, line: str, sample_id: str, locator: str, load) -> Sample:
        url, caption = tsv_fields(line, self.spec.format)
        image = load(url, {"url": url})
        return _caption_sample(self.name, sample_id, locator, caption, image, {"url": url})


def _is_header(line: str) -> bool:
    """Some CC3M/CC12M copies start with a `caption<TAB>url` style header line."""
    names = {f.strip().lower() for f in line.split("\t")}
    return "url" in names or "image_url" in names


class UrlParquetSource(RecordSource):
    """LAION (`URL, TEXT, similarity, punsafe, ...`) and DataComp (`uid, url, text, ...`)
    parquet."""

    def units(self) -> list[str]:
        return parquet_units(expand(self.spec.uri), self.counter)

    def read(self, unit: str) -> Iterator[Sample | Reject]:
        stem, path, load = file_stem(unit), unit.split("#", 1)[0], self.loader(base_dir(unit))
        for row, record in parquet_rows(unit, self.counter):
            locator = f"{path}#row={row}"
            yield self.guard(locator, lambda: self._sample(record, f"{stem}-{row}", locator, load))

    def record_sample(self, record: dict, sample_id: str, locator: str) -> Sample:
        """One row read elsewhere (the `hf` adapter); relative image refs resolve from cwd."""
        return self._sample(record, sample_id, locator, self.loader(""))

    def _sample(self, record: dict, sample_id: str, locator: str, load) -> Sample:
        default_url, default_caption = URL_LIST_FIELDS[self.spec.format]
        url = require(record, self.options.url_field or default_url)
        caption = caption_text(record.get(self.options.caption_field or default_caption))
        image = load(url, image_meta(record))
        meta = {"url": url, "scores": score_fields(record)}
        if record.get("uid") is not None:
            meta["uid"] = record["uid"]
        return _caption_sample(self.name, sample_id, locator, caption, image, meta)
