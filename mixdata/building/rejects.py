"""Loud rejects: a source that rejects too much stops the build, and `--strict` stops it at the
first reject; the stage's `rejects.jsonl` is streamed together from the per-unit files.

`RejectGuard.check(source, stats)` is called for each prepared unit, in unit order (the same
order whatever the worker count, so the same build stops at the same unit). A source's ratio
is `rejected / read` over its units read so far; it is checked once at least `MIN_READ`
records were read, against the source's `max_reject_ratio` (1.0 turns it off).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..errors import MixdataError
from ..storage import atomic_file
from .prepare import UnitStats

MIN_READ = 100
EXAMPLES = 3
# What to check first, per reason (prefix), when a source rejects most of its records.
HINTS = {
    "image_missing": "images_root and image_key (how a record's image reference maps to a file "
                     "under images_root), or fetch: true for URLs",
    "image_unreachable": "the network or the image host; fetched images kept failing",
    "unit_": "the input files themselves: damaged, empty or cut-off downloads",
    "filter:": "the source's filters, or raise max_reject_ratio if they are meant to drop "
               "this much",
    "missing_field": "the format: are these records really in this format (field names)?",
    "bad_json": "the format: are these records really in this format?",
    "download_failed": "the img2dataset run that produced the tars (its _stats.json)",
}


class RejectLimitError(MixdataError):
    """A source rejected more than its `max_reject_ratio` (or any record, under --strict)."""


class RejectGuard:
    def __init__(self, recipe, strict: bool = False):
        self.recipe, self.strict = recipe, strict
        self.read: Counter = Counter()
        self.rejected: dict[str, Counter] = {}
        self.units: dict[str, list[UnitStats]] = {}

    def check(self, source: str, stats: UnitStats) -> None:
        """Count one prepared unit; raise RejectLimitError when the source is past its limit."""
        self.read[source] += stats.read
        self.rejected.setdefault(source, Counter()).update(stats.rejected)
        self.units.setdefault(source, []).append(stats)
        if self.strict and stats.n_rejected:
            first = _first_reject(stats)
            raise RejectLimitError(
                f"--strict: source {source!r} rejected {first['locator']} "
                f"({first['reason']}: {first['message']}); fix the input or drop --strict")
        ratio = self.recipe.sources[source].max_reject_ratio
        read, rejected = self.read[source], sum(self.rejected[source].values())
        if ratio < 1.0 and read >= MIN_READ and rejected > ratio * read:
            raise RejectLimitError(self.message(source, read, rejected, ratio))

    def message(self, source: str, read: int, rejected: int, ratio: float) -> str:
        lines = [f"source {source!r} rejected {rejected} of the {read} records read so far "
                 f"({rejected / read:.0%}), above its max_reject_ratio {ratio:g}:"]
        examples = _examples(self.units[source])
        for reason, count in self.rejected[source].most_common(EXAMPLES):
            example = examples.get(reason, {})
            lines.append(f"  {reason}: {count}, e.g. {example.get('locator')}: "
                         f"{example.get('message', '')}"[:300])
            hint = next((h for prefix, h in HINTS.items() if reason.startswith(prefix)), None)
            if hint:
                lines.append(f"    check {hint}")
        lines.append(f"set sources.{source}.max_reject_ratio (1.0 turns the check off) if this "
                     "is expected")
        return "\n".join(lines)


def _first_reject(stats: UnitStats) -> dict:
    with open(stats.rejects_path) as fh:
        return json.loads(fh.readline())


def _examples(units: list[UnitStats]) -> dict[str, dict]:
    """The first reject of each reason, reading the units' reject files in order."""
    found: dict[str, dict] = {}
    wanted = set().union(*(u.rejected for u in units))
    for unit in units:
        if not unit.rejected or wanted <= set(found):
            continue
        with open(unit.rejects_path) as fh:
            for line in fh:
                reject = json.loads(line)
                found.setdefault(reject["reason"], reject)
    return found


def write_rejects(out: Path, units: list[UnitStats]) -> None:
    """Stream the units' reject files (in the given order) into `out/rejects.jsonl`. Each file
    must hold exactly the rejects its UnitStats counts: a MixdataError says which does not."""
    with atomic_file(Path(out) / "rejects.jsonl", "wb") as dst:
        for unit in units:
            lines = 0
            with open(unit.rejects_path, "rb") as src:
                for line in src:
                    dst.write(line)
                    lines += 1
            if lines != unit.n_rejected:
                raise MixdataError(f"{unit.rejects_path} holds {lines} rejects, its unit's "
                                   f"stats count {unit.n_rejected}; delete {unit.path}.* to "
                                   "prepare the unit again")
