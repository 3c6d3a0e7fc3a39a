"""Fixtures of the engine tests (the policy helpers are in tests/harness/policies.py)."""

from __future__ import annotations

import pytest
from harness.policies import USER


@pytest.fixture
def user() -> str:
    return USER
