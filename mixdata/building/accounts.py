"""Accounting for every record a stage read: read = written + rejected + unused, per source.

Each term is counted on its own, so the balance is a check that can fail:
- `read` and `rejected` come from the prepare phase (`UnitStats`: items the readers produced,
  and those that were rejects);
- `written`: records with at least one document in a packed sequence (the plan's output);
- `unused`: good records the plan left out, each with its reason (`DocFates`):
  `duplicate` (an earlier document had the same content), `budget` (the stage's budget was
  reached first), `single_pass` (no budget: the stage ends before any source repeats, so the
  larger sources keep a remainder), `sequence_budget` (packed past a budget in sequences).

A prepared record that is none of these (picked for the mixture but never packed, say) is
unaccounted for: `check_balance` then fails the build, naming the source.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..errors import MixdataError
from ..manifest import SourceAccount

UNUSED_REASONS = ("duplicate", "budget", "single_pass", "sequence_budget")


class AccountingError(MixdataError):
    """Records read do not equal written + rejected + unused: records went missing."""


@dataclass
class DocFates:
    """What the plan did with each prepared document of one source (bool arrays, one entry
    per document): a duplicate, scheduled by the mixture, packed into a written sequence,
    or packed into a sequence past the stage's sequence budget."""

    duplicate: np.ndarray
    scheduled: np.ndarray
    packed: np.ndarray
    cut: np.ndarray

    @classmethod
    def empty(cls, n: int, duplicate: np.ndarray | None = None) -> DocFates:
        dup = np.zeros(n, bool) if duplicate is None else np.asarray(duplicate, bool)
        return cls(duplicate=dup, scheduled=np.zeros(n, bool), packed=np.zeros(n, bool),
                   cut=np.zeros(n, bool))


def record_fates(records: np.ndarray, fates: DocFates, has_budget: bool
                 ) -> tuple[int, Counter, int]:
    """(written, unused by reason, unaccounted) over records, from per-document fates.

    `records[i]` identifies the record of document i (documents of one record are its chunks).
    A record is written when any of its documents was packed; otherwise its reason comes from
    its documents, in the order duplicate, not scheduled, cut.
    """
    if len(records) == 0:
        return 0, Counter(), 0
    keys, inverse = np.unique(records, return_inverse=True)

    def any_doc(flags: np.ndarray) -> np.ndarray:
        return np.bincount(inverse, weights=flags.astype(np.int64), minlength=len(keys)) > 0

    def all_docs(flags: np.ndarray) -> np.ndarray:
        return ~any_doc(~flags)

    written = any_doc(fates.packed)
    duplicate = ~written & all_docs(fates.duplicate)
    unscheduled = ~written & ~duplicate & ~any_doc(fates.scheduled)
    cut = ~written & ~duplicate & ~unscheduled & any_doc(fates.cut)
    unused = Counter({"duplicate": int(duplicate.sum()),
                      "budget" if has_budget else "single_pass": int(unscheduled.sum()),
                      "sequence_budget": int(cut.sum())})
    unaccounted = int((~(written | duplicate | unscheduled | cut)).sum())
    return int(written.sum()), +unused, unaccounted


def check_balance(accounts: dict[str, SourceAccount], unaccounted: dict[str, int]) -> None:
    """Raise AccountingError unless every source balances and nothing is unaccounted."""
    bad = [f"{name}: read {a.read} != written {a.written} + rejected {a.rejected} + unused "
           f"{a.unused} ({unaccounted.get(name, 0)} records unaccounted for)"
           for name, a in accounts.items() if not a.balanced or unaccounted.get(name, 0)]
    if bad:
        raise AccountingError("the build lost track of records, so its output is not "
                              "trustworthy (please report this as a bug): " + "; ".join(bad))
