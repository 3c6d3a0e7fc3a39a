"""The test harness: what tests start and drive, apart from the fixtures (``conftest.py``).

* :mod:`harness.broker` — a real ``hatchway server`` subprocess, its boto3 and ``aws`` clients,
  IAM users with a policy;
* :mod:`harness.agent` — a real ``hatchway agent`` registered with an activation;
* :mod:`harness.clock` — a broker whose session timers run on a clock the test moves;
* :mod:`harness.wsclient` — a minimal data-channel client built on ``hatchway.protocol``;
* :mod:`harness.client` — drivers for ``hatchway.client`` sessions (pipes, the plugin on PATH);
* :mod:`harness.postgres` — a throwaway PostgreSQL cluster;
* :mod:`harness.policies` — policy documents and one-request decisions for engine tests.

``tests/conftest.py`` puts ``tests/`` on ``sys.path``: tests import ``from harness import …``
(the broker and agent names below) or from a submodule. The benchmarks do the same
(``bench/benchlib.py``).
"""

from __future__ import annotations

from harness.agent import Agent, allow_instance_id, start_agent, wait_ping
from harness.broker import (
    ACCOUNT,
    ADMIN_KEY,
    ADMIN_SECRET,
    BIN,
    REGION,
    Broker,
    start_broker,
    stop_broker,
    store_args,
    user_with_policy,
)
from harness.clock import MovableClock

__all__ = [
    "ACCOUNT",
    "ADMIN_KEY",
    "ADMIN_SECRET",
    "BIN",
    "REGION",
    "Agent",
    "Broker",
    "MovableClock",
    "allow_instance_id",
    "start_agent",
    "start_broker",
    "stop_broker",
    "store_args",
    "user_with_policy",
    "wait_ping",
]
