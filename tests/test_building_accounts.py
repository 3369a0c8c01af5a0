"""The accounting core: every record is written, unused for one stated reason, or unaccounted."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mixdata.building.accounts import AccountingError, DocFates, check_balance, record_fates
from mixdata.manifest import SourceAccount


def _fates(**flags) -> DocFates:
    n = len(next(iter(flags.values())))
    fates = DocFates.empty(n)
    for name, values in flags.items():
        setattr(fates, name, np.asarray(values, bool))
    return fates


def test_each_record_gets_one_fate():
    # records: 0 written (one of its two chunks packed), 1 duplicate, 2 never scheduled,
    # 3 cut by a sequence budget, 4 scheduled but lost
    records = np.array([0, 0, 1, 2, 3, 4])
    fates = _fates(duplicate=[0, 0, 1, 0, 0, 0], scheduled=[1, 1, 0, 0, 1, 1],
                   packed=[1, 0, 0, 0, 0, 0], cut=[0, 0, 0, 0, 1, 0])
    written, unused, lost = record_fates(records, fates, has_budget=True)
    assert (written, dict(unused), lost) == (
        1, {"duplicate": 1, "budget": 1, "sequence_budget": 1}, 1)
    _, unused, _ = record_fates(records, fates, has_budget=False)
    assert unused["single_pass"] == 1 and "budget" not in unused


@given(st.lists(st.tuples(st.integers(0, 20), st.booleans(), st.booleans(), st.booleans(),
                          st.booleans()), max_size=60))
def test_written_unused_and_unaccounted_add_up_to_the_records(docs):
    records = np.array([d[0] for d in docs], np.int64)
    fates = _fates(duplicate=[d[1] for d in docs], scheduled=[d[2] for d in docs],
                   packed=[d[3] for d in docs], cut=[d[4] for d in docs]) if docs else \
        DocFates.empty(0)
    written, unused, lost = record_fates(records, fates, has_budget=True)
    assert written + sum(unused.values()) + lost == len(set(records.tolist()))
    assert written == len({d[0] for d in docs if d[3]})


def test_balance_check_names_the_source_that_lost_records():
    ok = SourceAccount(read=10, written=6, rejected=3, unused=1)
    short = SourceAccount(read=10, written=5, rejected=3, unused=1)
    check_balance({"a": ok}, {"a": 0})
    with pytest.raises(AccountingError, match=r"b: read 10 != written 5 .* \(1 records unaccounted"):
        check_balance({"a": ok, "b": short}, {"b": 1})
