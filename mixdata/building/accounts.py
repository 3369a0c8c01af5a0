"""Accounting for every record a stage read: read = written + rejected + unused, per source.

Each term is counted on its own, so the balance is a check that can fail:
- `read` and `rejected` come from the prepare phase (`UnitStats`: items the readers produced,
  and those that were rejects);
- `written` and `unused` come from the plan (`plan.SourcePlan`), from its own record of what
  became of each prepared document: written into a sequence, scheduled by the mixture, cut
  by a sequence budget, a duplicate. A good record left out says why (`units.REASONS`):
  `duplicate` (an earlier record had the same content), `budget` (the stage's budget was
  reached first), `single_pass` (no budget: the stage ends before any source repeats, so the
  larger sources keep a remainder), `sequence_budget` (packed past a budget in sequences).

A prepared record that fits none of these (scheduled but never packed, say) is unaccounted
for: `check_balance` then fails the build, naming the source.
"""
from __future__ import annotations

from ..errors import MixdataError
from ..manifest import SourceAccount


class AccountingError(MixdataError):
    """Records read do not equal written + rejected + unused: records went missing."""


def check_balance(accounts: dict[str, SourceAccount], unaccounted: dict[str, int]) -> None:
    """Raise AccountingError unless every source balances and nothing is unaccounted."""
    bad = [f"{name}: read {a.read} != written {a.written} + rejected {a.rejected} + unused "
           f"{a.unused} ({unaccounted.get(name, 0)} records unaccounted for)"
           for name, a in accounts.items() if not a.balanced or unaccounted.get(name, 0)]
    if bad:
        raise AccountingError("the build lost track of records, so its output is not "
                              "trustworthy (please report this as a bug): " + "; ".join(bad))
