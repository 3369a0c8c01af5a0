"""Cleaning, quality filters and exact dedup over real adapter output."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from source_fixtures import image_bytes, spec, write_tar

from mixdata.errors import RecordRejected, Reject
from mixdata.sample import ImagePart, Sample, TextPart
from mixdata.sources import open_source
from mixdata.sources.filtering import (
    check_filters,
    check_scores,
    clean_sample,
    dedup_key,
    image_size,
    read_clean,
)
from mixdata.sources.options import Filters, ScoreRange

PROSE = "The cat sat on the mat and looked at the birds in the garden."


def _sample(*parts, kind="interleaved", scores=None):
    return Sample(id="s", source="src", kind=kind, parts=tuple(parts),
                  meta={"scores": scores or {}, "locator": "file#row=0"})


def _image(width, height):
    return ImagePart(data=image_bytes(width, height))


def _wds(tmp_path, docs):
    members = []
    for key, parts in docs.items():
        for i, part in enumerate(parts):
            if isinstance(part, bytes):
                members.append((f"{key}.{i}.image.png", part))
            else:
                members.append((f"{key}.{i}.text.txt", part.encode()))
    return write_tar(tmp_path / "docs.tar", members)


def _read(tmp_path, docs, filters=None):
    source = open_source(spec("wds-interleaved", _wds(tmp_path, docs), filters=filters))
    return [item for unit in source.units() for item in read_clean(source, unit)]


def test_read_clean_repairs_text_and_keeps_accounting(tmp_path):
    docs = {"a": ["  caf\u0065\u0301   au lait \r\n", image_bytes(), "doesnÃ¢â‚¬â„¢t"],
            "b": ["   ", "\n"], "c": ["ok"]}
    items = _read(tmp_path, docs)
    assert len(items) == 3
    first = items[0]
    assert [p.text for p in first.texts] == ["café au lait", "doesn’t"]
    assert len(first.images) == 1
    assert isinstance(items[1], Reject) and items[1].reason == "no_content"
    assert items[1].locator.endswith("docs.tar:b")
    assert items[2].texts[0].text == "ok"


def test_each_filter_rejects_with_its_own_reason(tmp_path):
    docs = {
        "ok": [PROSE, image_bytes(200, 150)],
        "short": ["Too short.", image_bytes(200, 150)],
        "repeat": [" ".join(["spam eggs ham"] * 6), image_bytes(200, 150)],
        "special": ["#### $$$$ %%%% the cat and the dog &&&& ****", image_bytes(200, 150)],
        "nostop": ["Quantum chromodynamics lattice gauge simulation results tables figures",
                   image_bytes(200, 150)],
        "small": [PROSE, image_bytes(100, 150)],
        "wide": [PROSE, image_bytes(400, 150)],
        "noimg": [PROSE],
        "many": [PROSE] + [image_bytes(200, 150, shade=i) for i in range(4)],
    }
    filters = Filters(min_words=5, max_words=200, max_word_repetition=0.5,
                      max_special_ratio=0.3, min_stopword_ratio=0.2, min_image_side=150,
                      max_image_side=1000, max_image_aspect=2.0, min_images=1, max_images=3)
    items = _read(tmp_path, docs, filters)
    got = {item.locator.rsplit(":", 1)[1] if isinstance(item, Reject) else "ok":
           getattr(item, "reason", "kept") for item in items}
    assert got == {"ok": "kept", "short": "filter:min_words", "repeat": "filter:max_word_repetition",
                   "special": "filter:max_special_ratio", "nostop": "filter:min_stopword_ratio",
                   "small": "filter:min_image_side", "wide": "filter:max_image_aspect",
                   "noimg": "filter:min_images", "many": "filter:max_images"}
    assert all(item.message for item in items if isinstance(item, Reject))


def test_no_filters_means_nothing_is_filtered():
    sample = _sample(TextPart(text="x"), _image(1, 400))
    assert check_filters(sample, Filters()) is None


def test_char_repetition_and_max_words():
    sample = _sample(TextPart(text="abcdefghijklmnop " * 5))
    assert check_filters(sample, Filters(max_char_repetition=0.5))[0] == "max_char_repetition"
    assert check_filters(sample, Filters(max_words=4))[0] == "max_words"


def test_score_ranges_cover_numbers_lists_and_missing_values():
    ranges = {"punsafe": ScoreRange(max=0.5), "similarity": ScoreRange(min=0.28)}
    filters = Filters(scores=ranges)
    assert check_scores({"punsafe": 0.1, "similarity": 0.3}, filters) is None
    assert check_scores({"punsafe": 0.9, "similarity": 0.3}, filters)[0] == "score:punsafe"
    assert check_scores({"punsafe": 0.1, "similarity": [0.3, 0.2]}, filters)[0] == \
        "score:similarity"
    assert check_scores({"punsafe": 0.1}, filters) == ("score:similarity", "similarity is missing")
    assert check_scores({"punsafe": float("nan"), "similarity": 0.3}, filters)[0] == "score:punsafe"


def test_score_filter_on_a_real_laion_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    rows = []
    for i, punsafe in enumerate([0.05, 0.9, None]):
        (mirror / f"{i}.jpg").write_bytes(image_bytes(20, 20, "JPEG", shade=i))
        rows.append({"URL": f"http://x/{i}.jpg", "TEXT": f"photo {i}", "punsafe": punsafe})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "laion.parquet")
    filters = Filters(scores={"punsafe": ScoreRange(max=0.5)})
    source = open_source(spec("laion-parquet", tmp_path / "laion.parquet", filters=filters,
                              images_root=str(mirror)))
    items = [i for u in source.units() for i in read_clean(source, u)]
    assert [getattr(i, "reason", "kept") for i in items] == ["kept", "filter:score:punsafe",
                                                            "filter:score:punsafe"]


def test_unreadable_image_header_is_rejected_only_when_sizes_are_checked():
    broken = _sample(TextPart(text=PROSE), ImagePart(data=b"\xff\xd8 not an image"))
    assert check_filters(broken, Filters(min_images=1)) is None
    with pytest.raises(RecordRejected, match="image_format"):
        check_filters(broken, Filters(min_image_side=10))
    assert image_size(image_bytes(33, 21, "JPEG")) == (33, 21)


def test_clean_sample_keeps_sft_turn_structure_and_rejects_empty_captions():
    sft = _sample(TextPart(text=" Q? ", role="user"), TextPart(text="  ", role="assistant"),
                  kind="sft")
    assert [(p.role, p.text) for p in clean_sample(sft).parts] == [("user", "Q?"), ("assistant", "")]
    with pytest.raises(RecordRejected, match="no_content"):
        clean_sample(_sample(_image(4, 4), TextPart(text=" \t "), kind="caption"))


def test_dedup_key_matches_normalised_text_and_image_bytes():
    image = image_bytes(5, 5)
    a = _sample(TextPart(text="Hello  World"), ImagePart(data=image))
    same = _sample(TextPart(text="hello world"), ImagePart(data=image))
    other_image = _sample(TextPart(text="hello world"), ImagePart(data=image_bytes(5, 5, shade=9)))
    reordered = _sample(ImagePart(data=image), TextPart(text="hello world"))
    assert dedup_key(a) == dedup_key(same)
    assert len({dedup_key(a), dedup_key(other_image), dedup_key(reordered)}) == 3


@given(st.text(max_size=50), st.text(max_size=50))
def test_dedup_key_distinguishes_where_the_text_boundary_falls(left, right):
    one = _sample(TextPart(text=left + " " + right))
    two = _sample(TextPart(text=left), TextPart(text=right))
    if left.strip() and right.strip():
        assert dedup_key(one) != dedup_key(two)
