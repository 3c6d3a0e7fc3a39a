"""Nodes registering at the same time with one activation, through two brokers on one
PostgreSQL database: each registration takes a slot until the activation's RegistrationLimit,
none is refused because another one counted first (issue 12: a fleet comes up through a load
balancer at once)."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from harness import Broker, start_broker, stop_broker

LIMIT = 24


@pytest.fixture(scope="module")
def brokers(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Broker, Broker]]:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS hatchway_regrace")
        conn.execute("CREATE DATABASE hatchway_regrace")
    url = postgres_url.rsplit("/", 1)[0] + "/hatchway_regrace"
    root = tmp_path_factory.mktemp("regrace")
    a = start_broker(root / "a", "--database-url", url)
    (root / "b").mkdir(mode=0o700)
    shutil.copy(root / "a" / "master.key", root / "b" / "master.key")
    b = start_broker(root / "b", "--database-url", url)
    yield a, b
    stop_broker(b)
    stop_broker(a)


def register(url: str, activation_id: str, code: str, name: str) -> tuple[int, dict[str, Any]]:
    body = json.dumps(
        {"ActivationId": activation_id, "ActivationCode": code, "ComputerName": name}
    ).encode()
    req = urllib.request.Request(
        url + "/hatchway/v1/register", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_concurrent_registrations_through_two_brokers_fill_the_limit(
    brokers: tuple[Broker, Broker],
) -> None:
    a, b = brokers
    act = a.client("ssm").create_activation(IamRole="SSMServiceRole", RegistrationLimit=LIMIT)
    args = [
        ((a, b)[k % 2].url, act["ActivationId"], act["ActivationCode"], f"node-{k}")
        for k in range(LIMIT)
    ]
    with ThreadPoolExecutor(max_workers=LIMIT) as pool:
        answers = list(pool.map(lambda x: register(*x), args))
    assert [status for status, _ in answers] == [200] * LIMIT, answers
    ids = {body["InstanceId"] for _, body in answers}
    assert len(ids) == LIMIT
    listed = b.client("ssm").describe_activations()["ActivationList"]
    mine = next(x for x in listed if x["ActivationId"] == act["ActivationId"])
    assert mine["RegistrationsCount"] == LIMIT
    # One more is refused for the limit, through either broker, and counts nothing.
    for broker in (a, b):
        status, body = register(broker.url, act["ActivationId"], act["ActivationCode"], "extra")
        assert status == 400
        assert body == {
            "__type": "InvalidActivation",
            "message": "The registration limit of this activation has been reached.",
        }
    listed = a.client("ssm").describe_activations()["ActivationList"]
    assert (
        next(x for x in listed if x["ActivationId"] == act["ActivationId"])["RegistrationsCount"]
        == LIMIT
    )
