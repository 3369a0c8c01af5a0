"""tario's member-name rule is webdataset's, without importing webdataset (which imports torch)."""
from __future__ import annotations

import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st
from webdataset.tariterators import base_plus_ext

from mixdata.sources.tario import group_members, split_key

NAMES = st.text(alphabet="ab.0/_-é ", max_size=24)


@given(NAMES)
def test_split_key_is_webdatasets_base_plus_ext(name):
    assert split_key(name) == base_plus_ext(name)


def test_examples_and_grouping():
    assert split_key("00000/000000001.jpg") == ("00000/000000001", "jpg")
    assert split_key("doc.3.image.png") == ("doc", "3.image.png")
    assert split_key("dir.v2/README") == (None, None)
    groups = list(group_members(iter([("a.jpg", b"1"), ("a.TXT", b"2"), ("noext", b"x"),
                                      ("b.json", b"3")])))
    assert groups == [("a", {"jpg": b"1", "txt": b"2"}), ("b", {"json": b"3"})]


def test_reading_tars_does_not_import_torch():
    code = "import sys, mixdata.sources.tario; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
