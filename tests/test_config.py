"""The strict config parser: every error names the file, the key path, found and expected."""
from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from mixdata.config import Invalid, parse
from mixdata.errors import RecipeError


@dataclass(frozen=True, kw_only=True)
class Inner:
    size: int
    mode: Literal["fast", "exact"] = "fast"


@dataclass(frozen=True, kw_only=True)
class Outer:
    name: str
    rate: float = 1.0
    limit: int | None = None
    inner: Inner = field(default_factory=lambda: Inner(size=1))
    items: list[Inner] = field(default_factory=list)
    pair: tuple[int, int] = (0, 0)
    table: dict[str, int] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    enabled: bool = False

    def __post_init__(self):
        if self.rate < 0:
            raise Invalid("rate", self.rate, "a non-negative rate")


def fails(data, key: str, found: str, expected: str, file: str = "cfg.yaml") -> RecipeError:
    with pytest.raises(RecipeError) as info:
        parse(Outer, data, "top", file)
    err = info.value
    assert (err.key, err.file) == (key, file)
    message = str(err)
    assert message.startswith(f"{file}: {key}: found {found}"), message
    assert expected in message, message
    return err


def test_valid_mapping_parses_into_frozen_dataclasses():
    value = parse(Outer, {"name": "a", "inner": {"size": 3, "mode": "exact"},
                          "items": [{"size": 1}, {"size": 2}], "pair": [4, 5],
                          "table": {"x": 1}, "extra": {"free": [1, "form"]}})
    assert value.inner == Inner(size=3, mode="exact")
    assert [i.size for i in value.items] == [1, 2]
    assert value.pair == (4, 5) and value.table == {"x": 1} and value.extra == {"free": [1, "form"]}
    with pytest.raises(AttributeError):
        value.name = "b"


def test_unknown_key_names_the_allowed_keys():
    fails({"name": "a", "nmae": 1}, "top.nmae", "1", "no such key; allowed keys are name, rate")


def test_unknown_key_in_nested_dataclass():
    fails({"name": "a", "inner": {"size": 1, "colour": "red"}}, "top.inner.colour", "'red'",
          "allowed keys are size, mode")


def test_missing_required_key():
    fails({}, "top.name", "'nothing'", "a string (required)")
    fails({"name": "a", "inner": {}}, "top.inner.size", "'nothing'", "an integer (required)")


def test_wrong_scalar_types():
    fails({"name": 3}, "top.name", "3", "a string")
    fails({"name": "a", "rate": "fast"}, "top.rate", "'fast'", "a number")
    fails({"name": "a", "enabled": "yes"}, "top.enabled", "'yes'", "a boolean")
    fails({"name": "a", "inner": {"size": True}}, "top.inner.size", "True", "an integer")


def test_integral_float_becomes_int_and_fractional_float_is_rejected():
    # YAML reads 2.0e+3 as a float; an integral float is a fine integer.
    assert parse(Outer, yaml.safe_load("{name: a, inner: {size: 2.0e+3}}")).inner.size == 2000
    fails({"name": "a", "inner": {"size": 2.5}}, "top.inner.size", "2.5", "an integer")


def test_yaml_float_written_as_string_is_a_number():
    data = yaml.safe_load("{name: a, rate: 1e-4}")
    assert data["rate"] == "1e-4"  # YAML 1.1 needs a dot for a float: this is a string
    assert parse(Outer, data).rate == pytest.approx(1e-4)


def test_literal_lists_its_choices():
    fails({"name": "a", "inner": {"size": 1, "mode": "slow"}}, "top.inner.mode", "'slow'",
          "one of 'fast', 'exact'")


def test_optional_accepts_null_and_checks_the_rest():
    assert parse(Outer, {"name": "a", "limit": None}).limit is None
    assert parse(Outer, {"name": "a", "limit": 5}).limit == 5
    fails({"name": "a", "limit": "many"}, "top.limit", "'many'", "an integer or null")


def test_list_index_in_key_path():
    fails({"name": "a", "items": [{"size": 1}, {"size": "big"}]}, "top.items[1].size", "'big'",
          "an integer")
    fails({"name": "a", "items": {"size": 1}}, "top.items", "{'size': 1}", "a list of")


def test_tuple_length_and_mapping_values():
    fails({"name": "a", "pair": [1, 2, 3]}, "top.pair", "[1, 2, 3]", "a list of 2 items")
    fails({"name": "a", "table": {"x": "one"}}, "top.table.x", "'one'", "an integer")
    fails({"name": "a", "extra": [1]}, "top.extra", "[1]", "a mapping")


def test_post_init_check_points_at_its_field():
    fails({"name": "a", "rate": -1}, "top.rate", "-1", "a non-negative rate")


def test_not_a_mapping_and_no_file_name():
    with pytest.raises(RecipeError) as info:
        parse(Outer, ["a"])
    assert str(info.value).startswith("<root>: found ['a'], expected a mapping with keys name")
