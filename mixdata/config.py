"""Strict parsing of plain YAML/JSON data into typed, frozen dataclasses.

`parse(cls, data, key="stages.sft", file="demo.yaml")` returns an instance of `cls` or raises a
`RecipeError` that names the file, the key path, what was found and what was expected.
Supported field types: bool, int, float, str, None, Literal, Optional/Union, list, tuple,
dict[str, X] and nested dataclasses. Unknown keys are errors.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .errors import RecipeError


class Invalid(ValueError):
    """Raised by a config dataclass's `__post_init__` to reject one of its fields precisely."""

    def __init__(self, key: str, found: Any, expected: str):
        super().__init__(f"{key}: found {found!r}, expected {expected}")
        self.key, self.found, self.expected = key, found, expected


def parse(cls: type, data: Any, key: str = "", file: str | None = None):
    """Parse `data` into dataclass `cls`, checking every key and type."""
    return _Parser(file).value(cls, data, key)


def describe(tp: Any) -> str:
    """A short human description of a type, used in 'expected ...' messages."""
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if tp in _SCALAR_NAMES:
        return _SCALAR_NAMES[tp]
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"a list of {describe(get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {describe(get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    return getattr(tp, "__name__", str(tp))


_SCALAR_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
                 Any: "any value", dict: "a mapping", list: "a list"}


def _join(key: str, sub: str | int) -> str:
    if isinstance(sub, int):
        return f"{key}[{sub}]"
    return f"{key}.{sub}" if key else sub


class _Parser:
    def __init__(self, file: str | None):
        self.file = file

    def fail(self, key: str, found: Any, expected: str) -> RecipeError:
        return RecipeError(key, found, expected, file=self.file)

    def value(self, tp: Any, data: Any, key: str) -> Any:
        origin = get_origin(tp)
        if tp is Any:
            return data
        if tp in (dict, list):  # bare containers: contents are checked by whoever reads them
            if not isinstance(data, tp):
                raise self.fail(key, data, describe(tp))
            return data
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp, data, key)
        if origin is Literal:
            if data not in get_args(tp):
                raise self.fail(key, data, describe(tp))
            return data
        if origin in (Union, types.UnionType):
            return self.union(tp, data, key)
        if origin in (list, tuple):
            return self.sequence(tp, data, key)
        if origin is dict:
            return self.mapping(tp, data, key)
        return self.scalar(tp, data, key)

    def scalar(self, tp: Any, data: Any, key: str) -> Any:
        if tp is type(None):
            if data is not None:
                raise self.fail(key, data, "null")
            return None
        if tp is bool:
            if not isinstance(data, bool):
                raise self.fail(key, data, "a boolean (true or false)")
            return data
        if tp is int:
            # YAML reads 2e9 as a float; accept it when it is integral.
            if isinstance(data, float) and data.is_integer():
                return int(data)
            if isinstance(data, bool) or not isinstance(data, int):
                raise self.fail(key, data, "an integer")
            return data
        if tp is float:
            if isinstance(data, str):
                try:
                    return float(data)  # YAML 1.1 reads "1e-4" as a string
                except ValueError:
                    pass
            if isinstance(data, bool) or not isinstance(data, (int, float)):
                raise self.fail(key, data, "a number")
            return float(data)
        if tp is str:
            if not isinstance(data, str):
                raise self.fail(key, data, "a string")
            return data
        raise TypeError(f"config field type {tp!r} is not supported")

    def union(self, tp: Any, data: Any, key: str) -> Any:
        options = get_args(tp)
        if data is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return self.value(option, data, key)
            except RecipeError as err:
                errors.append(err)
        deepest = max(errors, key=lambda e: len(e.key))
        if deepest.key != key:
            raise deepest  # a nested field failed: its message is the precise one
        others = [o for o in options if o is not type(None)]
        if len(others) == 1 and dataclasses.is_dataclass(others[0]):
            raise deepest  # its own check (e.g. __post_init__) says more than its type
        raise self.fail(key, data, describe(tp))

    def sequence(self, tp: Any, data: Any, key: str) -> Any:
        if not isinstance(data, (list, tuple)):
            raise self.fail(key, data, describe(tp))
        args = get_args(tp)
        if get_origin(tp) is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(data) != len(args):
                raise self.fail(key, data, f"a list of {len(args)} items")
            return tuple(self.value(a, v, _join(key, i))
                         for i, (a, v) in enumerate(zip(args, data)))
        items = [self.value(args[0], v, _join(key, i)) for i, v in enumerate(data)]
        return tuple(items) if get_origin(tp) is tuple else items

    def mapping(self, tp: Any, data: Any, key: str) -> dict:
        if not isinstance(data, dict):
            raise self.fail(key, data, describe(tp))
        key_type, value_type = get_args(tp)
        out = {}
        for name, item in data.items():
            if key_type is str and not isinstance(name, str):
                raise self.fail(_join(key, str(name)), name, "a string key")
            out[name] = self.value(value_type, item, _join(key, str(name)))
        return out

    def dataclass(self, cls: type, data: Any, key: str) -> Any:
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise self.fail(key, data, describe(cls))
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = [k for k in data if k not in fields]
        if unknown:
            raise self.fail(_join(key, str(unknown[0])), data[unknown[0]],
                            "no such key; allowed keys are " + ", ".join(fields))
        hints = get_type_hints(cls)
        values = {}
        for name, f in fields.items():
            if name in data:
                values[name] = self.value(hints[name], data[name], _join(key, name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise self.fail(_join(key, name), "nothing", f"{describe(hints[name])} (required)")
        try:
            return cls(**values)
        except Invalid as err:
            where = _join(key, err.key) if err.key else key
            raise self.fail(where, err.found, err.expected) from None
        except (ValueError, TypeError) as err:
            raise self.fail(key, data, str(err)) from None
