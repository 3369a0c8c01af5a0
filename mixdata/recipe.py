"""Recipes: typed, validated descriptions of sources, staged mixtures and training.

`load_recipe(path)` parses YAML with `yaml.safe_load` into a frozen `Recipe`, or raises a
`RecipeError` naming the file, the key path, what was found and what was expected.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .config import Invalid, parse
from .errors import RecipeError
from .image.policy import ImagePolicy
from .sources.options import FORMAT_OPTIONS, Filters
from .tokens.families import FAMILIES
from .tokens.tokenizer import is_folder_spec


@dataclass(frozen=True, kw_only=True)
class SourceSpec:
    name: str
    format: str
    uri: str | list[str]
    options: Any               # the format's options dataclass (sources/options.py)
    filters: Filters = field(default_factory=Filters)


@dataclass(frozen=True, kw_only=True)
class Budget:
    """How much a stage builds. Exactly one unit is set."""

    tokens: float | None = None
    sequences: int | None = None
    samples: int | None = None

    def __post_init__(self) -> None:
        given = [(k, v) for k, v in (("tokens", self.tokens), ("sequences", self.sequences),
                                     ("samples", self.samples)) if v is not None]
        if len(given) != 1:
            raise Invalid("", dict(given), "exactly one of tokens, sequences, samples")
        unit, value = given[0]
        if value <= 0:
            raise Invalid(unit, value, "a positive budget")

    @property
    def unit(self) -> str:
        return next(k for k in ("tokens", "sequences", "samples") if getattr(self, k) is not None)

    @property
    def amount(self) -> float:
        return getattr(self, self.unit)


@dataclass(frozen=True, kw_only=True)
class Weighted:
    weight: float


@dataclass(frozen=True, kw_only=True)
class Relative:
    """MM1.5's 1:α upsampling: this source gets `alpha` times the share of `relative_to`."""

    alpha: float
    relative_to: str


@dataclass(frozen=True, kw_only=True)
class Share:
    """A fixed share of the whole stage (MM1.5's multi-image w = 0.1), whatever the other
    entries weigh: they split what the fixed shares leave by their weights."""

    share: float


MixEntry = float | Weighted | Relative | Share


@dataclass(frozen=True, kw_only=True)
class PackSpec:
    max_images: int | None = None   # per packed sequence
    max_tiles: int | None = None    # per packed sequence (tiles incl. global views)
    window: int = 512               # documents considered at once by best-fit-decreasing
    sequences_per_shard: int = 512
    on_overflow: Literal["trim", "reject"] = "trim"  # documents with images that cannot fit


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    name: str
    mixture: dict[str, MixEntry]
    budget: Budget | None = None    # None: the most data that repeats no source
    image: ImagePolicy = field(default_factory=ImagePolicy)
    weight_by: Literal["tokens", "samples"] = "tokens"
    max_epochs: float = 10.0
    seq_len: int | None = None      # overrides the recipe's seq_len for this stage
    loss: Literal["all", "captions"] = "all"  # captions: no loss on interleaved/text samples' text
    pack: PackSpec = field(default_factory=PackSpec)

    def shares(self) -> dict[str, float]:
        """Normalised target shares per source, with α entries resolved."""
        return resolve_shares(self.mixture)


@dataclass(frozen=True, kw_only=True)
class TokenizerSpec:
    """`tokenizer: {path: DIR, add_tokens: true}`: an HF tokenizer or model folder whose
    family image tokens mixdata may add when it lacks them (the manifest records them)."""

    path: str
    add_tokens: bool = False


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A parsed recipe. `tokenizer` is what it names ("bytes", a tokenizer.json, or an HF
    folder); `family` is the model family every stage's image preset names when it is a
    folder (None for mixdata's own dialect)."""

    name: str
    file: str | None
    seed: int
    tokenizer: str
    add_tokens: bool = False
    family: str | None = None
    seq_len: int
    image_tokens_per_tile: int
    sources: dict[str, SourceSpec]
    stages: dict[str, StageSpec]
    train: dict
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def sha256(self) -> str:
        text = json.dumps(self.raw, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def stage_seq_len(self, stage: str) -> int:
        return self.stages[stage].seq_len or self.seq_len


def resolve_shares(mixture: dict[str, MixEntry]) -> dict[str, float]:
    """Shares summing to 1: `share` entries (and α entries relative to them) as given, the
    rest split 1 - their sum by weight. ValueError (its message says what was expected) for
    circular α references or fixed shares that leave nothing, or too little, to split."""
    fixed: dict[str, float] = {}
    weights: dict[str, float] = {}
    pending = dict(mixture)
    while pending:
        progressed = False
        for name, entry in list(pending.items()):
            if isinstance(entry, Relative):
                group = fixed if entry.relative_to in fixed else weights
                if entry.relative_to not in group:
                    continue
                group[name] = entry.alpha * group[entry.relative_to]
            elif isinstance(entry, Share):
                fixed[name] = entry.share
            else:
                weights[name] = float(entry.weight if isinstance(entry, Weighted) else entry)
            del pending[name]
            progressed = True
        if not progressed:
            raise ValueError(f"no circular alpha references (among {sorted(pending)})")
    rest, total = 1.0 - sum(fixed.values()), sum(weights.values())
    if not weights and abs(rest) > 1e-9:
        raise ValueError(f"fixed shares summing to 1 when no source has a weight (they sum to "
                         f"{1 - rest:g})")
    if weights and total <= 0:
        raise ValueError("weights that are not all zero")
    if weights and rest <= 1e-9:
        raise ValueError(f"fixed shares summing below 1, leaving a part for the weighted "
                         f"sources (they sum to {1 - rest:g})")
    scale = rest / total if weights else 0.0
    return {name: fixed[name] if name in fixed else weights[name] * scale for name in mixture}


@dataclass(frozen=True, kw_only=True)
class _Top:
    name: str | None = None
    seed: int = 0
    tokenizer: str | TokenizerSpec = "bytes"
    seq_len: int
    image_tokens_per_tile: int
    sources: dict[str, dict]
    stages: dict[str, dict]
    train: dict = field(default_factory=dict)


_SOURCE_COMMON = ("format", "uri", "filters")


class RecipeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads exponent floats as YAML 1.2 does: PyYAML follows YAML
    1.1, whose float needs a dot and a signed exponent, so `7.68e6` and `1e-4` stay strings
    and an integer field such as `sequences: 2e5` would be refused."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise RecipeError("", "", str(path), f"a readable recipe file ({err.strerror})") from None
    try:
        data = yaml.load(text, Loader=RecipeLoader)  # a SafeLoader subclass
    except yaml.YAMLError as err:
        raise RecipeError("", "", "invalid YAML", f"valid YAML ({err})", file=str(path)) from None
    return parse_recipe(data, file=str(path), default_name=path.stem)


def parse_recipe(data: Any, file: str | None = None, default_name: str = "recipe") -> Recipe:
    top = parse(_Top, data, "", file)
    fail = lambda key, found, expected: RecipeError("", key, found, expected, file=file)  # noqa: E731
    for key in ("seq_len", "image_tokens_per_tile"):
        if getattr(top, key) <= 0:
            raise fail(key, getattr(top, key), "a positive integer")
    sources = {name: _parse_source(name, raw, file) for name, raw in top.sources.items()}
    if not sources:
        raise fail("sources", {}, "at least one source")
    stages = {name: _parse_stage(name, raw, sources, file) for name, raw in top.stages.items()}
    if not stages:
        raise fail("stages", {}, "at least one stage")
    if not isinstance(top.train, dict):
        raise fail("train", top.train, "a mapping")
    spec = top.tokenizer if isinstance(top.tokenizer, TokenizerSpec) else \
        TokenizerSpec(path=top.tokenizer)
    return Recipe(name=top.name or default_name, file=file, seed=top.seed, tokenizer=spec.path,
                  add_tokens=spec.add_tokens, family=_family(spec, stages, file),
                  seq_len=top.seq_len, image_tokens_per_tile=top.image_tokens_per_tile,
                  sources=sources, stages=stages, train=top.train, raw=data)


def _family(spec: TokenizerSpec, stages: dict[str, StageSpec], file: str | None) -> str | None:
    """The one model family of the stages' image presets when the tokenizer is an HF folder."""
    if not spec.path:
        raise RecipeError("", "tokenizer", spec.path, "'bytes', a tokenizer.json file or an HF "
                          "tokenizer folder", file=file)
    if not is_folder_spec(spec.path):
        if spec.add_tokens:
            raise RecipeError("", "tokenizer.add_tokens", True, "false: only an HF tokenizer "
                              "folder can gain a model family's tokens", file=file)
        return None
    first = None
    for name, stage in stages.items():
        preset = stage.image.preset
        if preset not in FAMILIES:
            raise RecipeError("", f"stages.{name}.image.preset", preset, "a model family ("
                              + ", ".join(FAMILIES) + "): with an HF tokenizer folder, images "
                              "are laid out as that family's processor does", file=file)
        if first is not None and preset != first[1]:
            raise RecipeError("", f"stages.{name}.image.preset", preset, f"{first[1]}, as in "
                              f"stage {first[0]}: one tokenizer is one model family", file=file)
        first = first or (name, preset)
    return first[1]


def _parse_source(name: str, raw: Any, file: str | None) -> SourceSpec:
    key = f"sources.{name}"
    if not isinstance(raw, dict):
        raise RecipeError("", key, raw, "a mapping with format and uri", file=file)
    fmt = raw.get("format")
    if fmt not in FORMAT_OPTIONS:
        raise RecipeError("", f"{key}.format", fmt, "one of " + ", ".join(sorted(FORMAT_OPTIONS)),
                          file=file)
    if "uri" not in raw:
        raise RecipeError("", f"{key}.uri", "nothing", "a path, glob or URL (required)", file=file)
    uri = parse(str | list[str], raw["uri"], f"{key}.uri", file)
    filters = parse(Filters, raw.get("filters", {}), f"{key}.filters", file)
    rest = {k: v for k, v in raw.items() if k not in _SOURCE_COMMON}
    options = parse(FORMAT_OPTIONS[fmt], rest, key, file)
    return SourceSpec(name=name, format=fmt, uri=uri, options=options, filters=filters)


def _parse_stage(name: str, raw: Any, sources: dict, file: str | None) -> StageSpec:
    key = f"stages.{name}"
    if not isinstance(raw, dict):
        raise RecipeError("", key, raw, "a mapping with a mixture", file=file)
    stage = parse(StageSpec, {**raw, "name": name}, key, file)
    fail = lambda sub, found, expected: RecipeError("", f"{key}.{sub}", found, expected, file=file)  # noqa: E731
    if not stage.mixture:
        raise fail("mixture", {}, "at least one source")
    for src, entry in stage.mixture.items():
        if src not in sources:
            raise fail(f"mixture.{src}", src, "a source defined under sources: "
                       + ", ".join(sources))
        if isinstance(entry, Relative):
            if entry.relative_to not in stage.mixture:
                raise fail(f"mixture.{src}.relative_to", entry.relative_to,
                           "another source of this stage's mixture")
            if entry.alpha < 0:
                raise fail(f"mixture.{src}.alpha", entry.alpha, "a non-negative number")
        elif isinstance(entry, Share):
            if not 0 <= entry.share <= 1:
                raise fail(f"mixture.{src}.share", entry.share, "a share between 0 and 1")
        else:
            weight = entry.weight if isinstance(entry, Weighted) else entry
            if weight < 0:
                raise fail(f"mixture.{src}", weight, "a non-negative weight")
    roots = [e for e in stage.mixture.values() if not isinstance(e, Relative)]
    if not roots:
        raise fail("mixture", raw.get("mixture"), "at least one source with a weight or share "
                   "(alpha entries need a reference)")
    try:
        resolve_shares(stage.mixture)
    except ValueError as err:
        raise fail("mixture", raw.get("mixture"), str(err)) from None
    if stage.max_epochs <= 0:
        raise fail("max_epochs", stage.max_epochs, "a positive number")
    return stage
