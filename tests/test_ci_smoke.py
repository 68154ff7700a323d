"""CI guard: under CI the PostgreSQL half of the suite must run, not skip.

`.ci/run` exports SONA_STORE_TEST_PG (the machine's server or a private one it
starts). If that ever breaks, every PostgreSQL test would skip quietly and CI
would still be green; this test turns that into a failure. Outside CI it only
checks what is configured.
"""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa

from .conftest import PG_ADMIN_URL, _driver_url


def test_ci_provides_postgresql() -> None:
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        pytest.skip("only enforced under CI=true")
    assert os.environ.get("SONA_STORE_TEST_PG"), "CI must export SONA_STORE_TEST_PG"
    assert PG_ADMIN_URL is not None
    engine = sa.create_engine(_driver_url(PG_ADMIN_URL))
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar() == 1
    finally:
        engine.dispose()
