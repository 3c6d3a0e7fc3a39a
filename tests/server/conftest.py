"""The broker fixture of the server tests (the helpers are in tests/harness)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import Broker, start_broker, stop_broker


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("broker") / "data")
    yield b
    stop_broker(b)
    assert b.proc.returncode is not None
