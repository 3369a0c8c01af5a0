"""Shared pytest set-up. Area-specific fixtures live beside their tests."""
import os

import pytest

# Never let a test touch the user's real demo cache.
@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    if "MIXDATA_CACHE" not in os.environ:
        os.environ["MIXDATA_CACHE"] = str(tmp_path_factory.mktemp("mixdata-cache"))
    yield
