"""What the README names as prerequisites of the tests (Chromium, docker-compose, ../shared/data): absent, their
tests fail, so a green run proves them; TAAS_TEST_SKIP_MISSING=1 skips those tests instead (a laptop without
them)."""

import os
from typing import NoReturn

import pytest

SKIP_MISSING = os.environ.get("TAAS_TEST_SKIP_MISSING") == "1"


def missing(what: str) -> NoReturn:
    """Fail (or, with TAAS_TEST_SKIP_MISSING=1, skip) a test whose prerequisite is absent."""
    if SKIP_MISSING:
        pytest.skip(what)
    pytest.fail(f"{what} (TAAS_TEST_SKIP_MISSING=1 skips such tests instead)", pytrace=False)
