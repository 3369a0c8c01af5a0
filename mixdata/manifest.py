"""The manifest: the typed contract between a build and everything that reads its shards.

`manifest.json` sits beside a stage's shards. The build writes a `Manifest` (`write_manifest`,
last, atomically); the loader, the trainer and the CLI read it through `read_manifest` only.
It states everything a consumer needs, so nothing re-derives it: the token and image geometry
(`geometry`: view size, tokens per view, grid limits), the dialect (`tokens.dialect.Dialect`:
the tokenizer's identity and hash, special ids by role, how placeholders are laid out), and
per shard its counts and sha256. It also accounts for every record read
(`SourceAccount`: read = written + rejected + unused, each counted on its own).

Everything in it is a function of the recipe, the inputs and the seed, so two builds give the
same bytes, except `run`, which holds what depends on the network (retries per source) and
on the machines (tasks re-run after their worker died).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import parse
from .errors import MixdataError, RecipeError
from .storage import read_bytes, write_json_atomic
from .tokens.dialect import Dialect

FORMAT = "mixdata-shards-v2"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True, kw_only=True)
class ShardEntry:
    name: str
    samples: int
    tokens: int
    images: int
    bytes: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class SourceAccount:
    """What became of every record a source's prepared units held.

    `read` = `written` + `rejected` + `unused`, each counted on its own: `rejected` from the
    prepare phase's rejects (malformed records, filters, damaged units), `written` from the
    packed sequences, `unused` from the plan's reasons for leaving a good record out
    (`budget`, `single_pass`, `duplicate`, `sequence_budget`).
    """

    read: int
    written: int
    rejected: int
    unused: int
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    unused_by_reason: dict[str, int] = field(default_factory=dict)
    units: int = 0
    tokens: int = 0
    images: int = 0
    documents: int = 0
    epochs: float = 0.0
    share_tokens: float = 0.0
    share_samples: float = 0.0
    target_share: float = 0.0

    @property
    def balanced(self) -> bool:
        return self.read == self.written + self.rejected + self.unused


@dataclass(frozen=True, kw_only=True)
class Geometry:
    """How a consumer cuts and counts image views, as the build planned them.

    `tile`: side (px) of every square view, or None when views vary in size (qwen2vl);
    `tokens_per_view`: placeholders per view (`image_tokens_per_tile`; qwen2vl's one view has
    its own count, in each image's plan); `max_rows` / `max_cols` / `max_views`: the largest
    grid and view count one image can have under the stage's policy.
    """

    preset: str
    tile: int | None
    tokens_per_view: int
    max_rows: int
    max_cols: int
    max_views: int
    global_view: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True, kw_only=True)
class RecipeInfo:
    name: str
    sha256: str
    snapshot: dict


@dataclass(frozen=True, kw_only=True)
class MixtureInfo:
    weight_by: str
    target_shares: dict[str, float]
    budget: dict[str, float] | None
    max_window_deviation: float


@dataclass(frozen=True, kw_only=True)
class PackingInfo:
    seq_len: int
    sequences: int
    tokens: int
    efficiency: float
    max_images: int | None = None
    max_tiles: int | None = None


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """What depends on the run rather than on the recipe and inputs: `retries`, reads
    retried per source (network); `task_retries`, task attempts re-run by phase ("prepare",
    "plan", "write") because their worker or node died (`--engine ray`), only phases with
    any, so a run without is `{}`."""

    retries: dict[str, int] = field(default_factory=dict)
    task_retries: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    format: str = FORMAT
    recipe: RecipeInfo
    stage: str
    seed: int
    seq_len: int
    image_tokens_per_tile: int
    dialect: Dialect
    image_policy: dict
    geometry: Geometry
    mixture: MixtureInfo
    shards: list[ShardEntry]
    sources: dict[str, SourceAccount]
    packing: PackingInfo
    versions: dict[str, str] = field(default_factory=dict)
    run: RunInfo = field(default_factory=RunInfo)

    @property
    def samples(self) -> int:
        """Packed sequences in the stage."""
        return sum(s.samples for s in self.shards)

    def to_json(self) -> dict:
        return {**_plain(dataclasses.asdict(self)), "dialect": self.dialect.to_json()}

    @classmethod
    def from_json(cls, data: object, where: str = MANIFEST_NAME) -> Manifest:
        """A Manifest from parsed JSON; MixdataError naming the key that is wrong."""
        if isinstance(data, dict) and data.get("format") != FORMAT:
            raise MixdataError(f"{where} has format {data.get('format')!r}, this mixdata reads "
                               f"{FORMAT!r}; rebuild the stage with this version")
        if isinstance(data, dict) and "dialect" in data:
            try:
                data = {**data, "dialect": Dialect.from_json(data["dialect"])}
            except (TypeError, ValueError) as err:
                raise MixdataError(f"{where} is not a valid mixdata manifest: dialect: {err}; "
                                   "rebuild the stage") from None
        try:
            return parse(cls, data, "", where)
        except RecipeError as err:
            raise MixdataError(f"{where} is not a valid mixdata manifest: {err}; rebuild the "
                               "stage") from None


def _plain(value):
    """JSON-ready: tuples as lists, recursively (asdict keeps tuples)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def locate_manifest(path_or_url: str | Path) -> tuple[str, str]:
    """(shard folder, manifest URL) for a shard folder, a manifest path or an fsspec URL."""
    text = str(path_or_url).rstrip("/")
    if text.endswith(".json"):
        folder = text.rpartition("/")[0] or "."
        return folder, text
    return text, f"{text}/{MANIFEST_NAME}"


def read_manifest(path_or_url: str | Path) -> Manifest:
    """The manifest of a built stage (a shard folder, its manifest, or an fsspec URL of
    either); MixdataError when it is missing, unreadable or not a mixdata manifest."""
    _, url = locate_manifest(path_or_url)
    try:
        payload = read_bytes(url)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise MixdataError(f"no manifest at {url}: build the stage first "
                           "(mixdata build RECIPE) or point at its shard folder") from None
    try:
        data = json.loads(payload)
    except ValueError as err:
        raise MixdataError(f"{url} is not valid JSON ({err}); rebuild the stage") from None
    return Manifest.from_json(data, url)


def write_manifest(folder: str | Path, manifest: Manifest) -> Path:
    """Write `folder/manifest.json` atomically; call it after every shard is final."""
    path = Path(folder) / MANIFEST_NAME
    write_json_atomic(path, manifest.to_json())
    return path
