"""Loud rejects: the ratio limit, --strict, and rejects.jsonl streamed from the unit files."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from mixdata.building.prepare import UnitStats
from mixdata.building.rejects import MIN_READ, RejectGuard, RejectLimitError, write_rejects
from mixdata.errors import MixdataError


def _unit(tmp_path, name: str, read: int, rejects: list[tuple[str, str]]) -> UnitStats:
    path = str(tmp_path / name)
    with open(path + ".rejects.jsonl", "w") as fh:
        for locator, reason in rejects:
            fh.write(json.dumps({"source": "s", "locator": locator, "reason": reason,
                                 "message": f"{reason} at {locator}"}) + "\n")
    counts = {}
    for _, reason in rejects:
        counts[reason] = counts.get(reason, 0) + 1
    return UnitStats(unit=name, path=path, read=read, rejected=counts, docs=read - len(rejects),
                     tokens=10 * read)


def _recipe(ratio: float):
    return SimpleNamespace(sources={"s": SimpleNamespace(max_reject_ratio=ratio)})


def test_the_ratio_applies_once_enough_records_were_read(tmp_path):
    guard = RejectGuard(_recipe(0.5))
    bad = [(f"u0#{i}", "image_missing") for i in range(40)]
    guard.check("s", _unit(tmp_path, "u0", 50, bad))  # 80% but only 50 read: not yet
    more = [(f"u1#{i}", "bad_json") for i in range(30)]
    with pytest.raises(RejectLimitError) as err:
        guard.check("s", _unit(tmp_path, "u1", MIN_READ - 40, more))
    assert str(err.value).startswith("source 's' rejected 70 of the 110 records read so far "
                                     "(64%), above its max_reject_ratio 0.5:")


def test_a_source_under_its_ratio_or_with_the_check_off_goes_on(tmp_path):
    half = [(f"u#{i}", "filter:min_words") for i in range(50)]
    RejectGuard(_recipe(0.5)).check("s", _unit(tmp_path, "u", 100, half))
    RejectGuard(_recipe(1.0)).check("s", _unit(tmp_path, "v", 100, half * 2))


def test_the_message_names_top_reasons_examples_and_what_to_check(tmp_path):
    rejects = [(f"a#{i}", "image_missing") for i in range(70)] + [("a#x", "bad_json")]
    with pytest.raises(RejectLimitError) as err:
        RejectGuard(_recipe(0.5)).check("s", _unit(tmp_path, "a", 100, rejects))
    lines = str(err.value).splitlines()
    assert lines[0] == ("source 's' rejected 71 of the 100 records read so far (71%), above its "
                        "max_reject_ratio 0.5:")
    assert lines[1] == "  image_missing: 70, e.g. a#0: image_missing at a#0"
    assert lines[2].startswith("    check images_root and image_key")
    assert lines[3] == "  bad_json: 1, e.g. a#x: bad_json at a#x"
    assert lines[-1].startswith("set sources.s.max_reject_ratio")


def test_strict_stops_at_the_first_reject_of_the_first_unit_with_one(tmp_path):
    guard = RejectGuard(_recipe(1.0), strict=True)
    guard.check("s", _unit(tmp_path, "clean", 5, []))
    with pytest.raises(RejectLimitError, match=r"--strict: source 's' rejected d#3 \(unit_"):
        guard.check("s", _unit(tmp_path, "dirty", 5, [("d#3", "unit_truncated"),
                                                        ("d#4", "bad_json")]))


def test_rejects_are_streamed_in_unit_order_and_checked_against_the_counts(tmp_path):
    units = [_unit(tmp_path, "a", 3, [("a#1", "x")]), _unit(tmp_path, "b", 2, []),
             _unit(tmp_path, "c", 4, [("c#0", "y"), ("c#2", "x")])]
    write_rejects(tmp_path, units)
    lines = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["locator"] for r in lines] == ["a#1", "c#0", "c#2"]
    (tmp_path / "c.rejects.jsonl").write_text("")  # a unit file that lost its lines
    with pytest.raises(MixdataError, match=r"c\.rejects\.jsonl holds 0 rejects, its unit's stats "
                                           "count 2"):
        write_rejects(tmp_path, units)
