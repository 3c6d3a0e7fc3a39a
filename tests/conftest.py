"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from pg import postgres_cluster, why_unavailable


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL started for this test session (never skipped in CI)."""
    reason = why_unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {reason}")
        pytest.skip(reason)
    with postgres_cluster() as url:
        yield url
