"""The balance check: a source that lost records fails the build, naming it."""
from __future__ import annotations

import pytest

from mixdata.building.accounts import AccountingError, check_balance
from mixdata.manifest import SourceAccount


def test_balance_check_names_the_source_that_lost_records():
    ok = SourceAccount(read=10, written=6, rejected=3, unused=1)
    short = SourceAccount(read=10, written=5, rejected=3, unused=1)
    check_balance({"a": ok}, {"a": 0})
    with pytest.raises(AccountingError, match=r"b: read 10 != written 5 .* \(1 records unaccounted"):
        check_balance({"a": ok, "b": short}, {"b": 1})
    with pytest.raises(AccountingError, match=r"a: .*\(2 records unaccounted"):
        check_balance({"a": ok}, {"a": 2})  # balanced by count, yet some records are lost
