"""`mixdata sources RECIPE`: peek at each source's first samples, then count a full pass."""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field

DESCRIPTION = """\
For each selected source of a recipe: show its first N samples (id, kind, a text excerpt,
image sizes read from the image headers, SFT roles), then read every record of every unit
through the same cleaning and filters a build uses, and count what was read, yielded and
rejected (by reason, with one example each) and how many reads were retried.

A full pass must balance: read = yielded + rejected, and every reject has a reason. When a
source does not balance, a warning names it and the exit status is 1.
"""

EPILOG = """\
examples:
  mixdata sources recipes/demo.yaml                    every source, 3 samples each
  mixdata sources recipes/demo.yaml --stage highres    only the sources the stage mixes
  mixdata sources recipes/demo.yaml --source pdfa -n 10
  mixdata sources recipes/demo.yaml --json > sources.json

exit status: 0 balanced, 1 a source does not balance or cannot be read, 2 invalid recipe
"""

EXCERPT_CHARS = 100


def register(sub) -> None:
    parser = sub.add_parser(
        "sources", help="peek at every source and count records, rejects and retries",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="path to a recipe YAML file")
    parser.add_argument("--stage", help="only the sources in this stage's mixture")
    parser.add_argument("--source", action="append", metavar="NAME",
                        help="only this source (repeat for several)")
    parser.add_argument("-n", type=int, default=3, metavar="N",
                        help="samples to show per source (default 3; 0 shows none)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON report on stdout instead of text")
    parser.set_defaults(run=run)


@dataclass
class SourceReport:
    """What one full pass over a source found. `read` counts every item the adapter produced;
    `invalid` counts items that were neither a Sample of this source nor a Reject with a
    reason, so a correct adapter always has read == yielded + rejected and invalid == 0."""

    name: str
    format: str
    units: int = 0
    read: int = 0
    yielded: int = 0
    rejected: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)   # reason -> {locator, message}
    retries: int = 0
    invalid: int = 0
    samples: list = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        return self.invalid == 0 and self.read == self.yielded + sum(self.rejected.values())

    def to_json(self) -> dict:
        return {"name": self.name, "format": self.format, "units": self.units,
                "read": self.read, "yielded": self.yielded,
                "rejected": dict(sorted(self.rejected.items())), "examples": self.examples,
                "retries": self.retries, "invalid": self.invalid, "balanced": self.balanced,
                "samples": self.samples}


def select_sources(recipe, stage: str | None, names: list[str] | None) -> list[str]:
    """Source names to survey, in recipe order; MixdataError for an unknown stage or name."""
    from ..errors import MixdataError

    chosen = list(recipe.sources)
    if stage is not None:
        if stage not in recipe.stages:
            raise MixdataError(f"no stage {stage!r} in the recipe; stages: "
                               + ", ".join(recipe.stages))
        chosen = [n for n in chosen if n in recipe.stages[stage].mixture]
    if names:
        unknown = [n for n in names if n not in recipe.sources]
        if unknown:
            raise MixdataError(f"no source {unknown[0]!r} in the recipe; sources: "
                               + ", ".join(recipe.sources))
        chosen = [n for n in chosen if n in names]
    return chosen


def describe(sample) -> dict:
    """A sample as the CLI shows it: id, kind, text excerpt, image sizes, roles."""
    text = " ".join(sample.text(" ").split())
    excerpt = text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS - 1] + "…"
    roles = [p.role for p in sample.texts if p.role]
    return {"id": sample.id, "kind": sample.kind, "text": excerpt,
            "images": [_image_size(part) for part in sample.images], "roles": roles}


def _image_size(part) -> str:
    from ..errors import RecordRejected
    from ..image import probe

    if part.data is None:
        return f"ref {part.ref}"
    try:
        width, height, fmt = probe(part.data)
    except RecordRejected as err:
        return f"unreadable ({err.reason})"
    return f"{width}x{height} {fmt}"


def tally(report: SourceReport, item) -> None:
    """Count one item of the pass (pure bookkeeping)."""
    from ..errors import Reject
    from ..sample import Sample

    report.read += 1
    if isinstance(item, Reject) and item.reason:
        report.rejected[item.reason] += 1
        report.examples.setdefault(item.reason, {"locator": item.locator,
                                                 "message": item.message})
    elif isinstance(item, Sample) and item.source == report.name:
        report.yielded += 1
    else:
        report.invalid += 1


def survey(name: str, source, n: int, on_sample=None, progress: bool = True) -> SourceReport:
    """Read every unit of `source` through `read_clean`, keeping the first `n` samples."""
    from tqdm import tqdm

    from ..sample import Sample
    from ..sources.filtering import read_clean

    units = source.units()
    report = SourceReport(name=name, format=source.spec.format, units=len(units))
    with tqdm(desc=name, unit=" rec", file=sys.stderr, disable=None if progress else True,
              leave=False) as bar:
        for index, unit in enumerate(units):
            bar.set_postfix_str(f"unit {index + 1}/{len(units)}")
            for item in read_clean(source, unit):
                tally(report, item)
                bar.update()
                if isinstance(item, Sample) and len(report.samples) < n:
                    report.samples.append(describe(item))
                    if on_sample:
                        on_sample(report.samples[-1], len(report.samples))
    report.retries = source.retries
    return report


def sample_lines(shown: dict, number: int) -> list[str]:
    images = f"  images: {', '.join(shown['images'])}" if shown["images"] else ""
    roles = f"  roles: {' '.join(shown['roles'])}" if shown["roles"] else ""
    return [f"  [{number}] {shown['id']}  {shown['kind']}{images}{roles}",
            f"      {json.dumps(shown['text'], ensure_ascii=False)}"]


def count_lines(report: SourceReport) -> list[str]:
    total = sum(report.rejected.values())
    lines = [f"  read {report.read}  yielded {report.yielded}  rejected {total}  "
             f"retries {report.retries}  ({report.units} units)"]
    for reason, count in sorted(report.rejected.items()):
        example = report.examples[reason]
        detail = f" — {example['message']}" if example["message"] else ""
        lines.append(f"    {reason:<24} {count:>7}   e.g. {example['locator']}{detail}")
    if report.invalid:
        lines.append(f"    {report.invalid} items were neither a Sample of this source nor a "
                     "Reject with a reason")
    return lines


def run(args: argparse.Namespace) -> int:
    from ..recipe import load_recipe
    from ..sources import open_source

    recipe = load_recipe(args.recipe)
    if recipe.demo is not None:
        recipe.demo.ensure()
    reports = []
    for name in select_sources(recipe, args.stage, args.source):
        source = open_source(recipe.sources[name])
        if not args.json:
            print(f"== {name} ({source.spec.format})", flush=True)
        show = None if args.json else _printer()
        reports.append(survey(name, source, max(args.n, 0), on_sample=show))
        if not args.json:
            print("\n".join(count_lines(reports[-1])), flush=True)
    unbalanced = [r for r in reports if not r.balanced]
    for report in unbalanced:
        print(f"mixdata: warning: source {report.name!r} does not balance: read "
              f"{report.read} != yielded {report.yielded} + rejected "
              f"{sum(report.rejected.values())} (+{report.invalid} invalid items)",
              file=sys.stderr)
    if args.json:
        print(json.dumps({"recipe": recipe.name, "balanced": not unbalanced,
                          "sources": [r.to_json() for r in reports]}, indent=2,
                         ensure_ascii=False))
    else:
        state = "every source balances" if not unbalanced else \
            f"{len(unbalanced)} source(s) do not balance"
        print(f"{len(reports)} sources read: {state} (read = yielded + rejected)")
    return 1 if unbalanced else 0


def _printer():
    from tqdm import tqdm

    def show(shown: dict, number: int) -> None:
        for line in sample_lines(shown, number):
            tqdm.write(line, file=sys.stdout)   # keeps the stderr progress bar intact

    return show
