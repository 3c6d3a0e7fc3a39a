"""Logs, the access log, request ids and Prometheus metrics of a running broker.

A real broker (``hatchway server`` subprocess) and agent; boto3 and the protocol client make
the traffic; ``/metrics`` is parsed with prometheus_client's own text parser.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from harness import ACCOUNT, Agent, Broker, start_agent, start_broker, stop_broker
from harness.wsclient import Client
from prometheus_client.parser import text_string_to_metric_families

TARGET = "i-0f1e2d3c4b5a69788"
ADMIN_ARN = f"arn:aws:iam::{ACCOUNT}:user/admin"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("obs") / "data", "--log-format", "json")
    yield b
    stop_broker(b)


@pytest.fixture(scope="module")
def node(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = start_agent(broker, tmp_path_factory.mktemp("obs-node") / "state", TARGET)
    yield a
    a.stop()


def json_lines(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def audit_record(data_dir: Path, request_id: str) -> dict[str, Any]:
    for line in (data_dir / "audit.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["requestID"] == request_id:
            return dict(event)
    raise AssertionError(f"no audit record with request id {request_id}")


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = get(url)
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_json_logs_access_log_and_request_ids(broker: Broker) -> None:
    ssm = broker.client("ssm")
    answer = ssm.describe_instance_information()
    rid = answer["ResponseMetadata"]["RequestId"]
    assert answer["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"] == rid
    # an IAM (Query) call is denied for a user without policies: its id, its log, its audit
    iam = broker.client("iam")
    iam.create_user(UserName="nobody")
    key = iam.create_access_key(UserName="nobody")["AccessKey"]
    with pytest.raises(ClientError) as denied:
        broker.client("iam", key["AccessKeyId"], key["SecretAccessKey"]).list_users()
    denied_id = denied.value.response["ResponseMetadata"]["RequestId"]
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    # what the router refuses carries a request id too
    status, headers, _ = get(f"{broker.url}/no/such/path")
    assert status == 404 and re.fullmatch(r"[0-9a-f-]{36}", headers["x-amzn-RequestId"])

    lines = json_lines(broker.log)
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    access = {line.get("request_id"): line for line in lines if line["logger"] == "hatchway.access"}
    ok = access[rid]
    assert ok["level"] == "INFO"
    assert ok["principal"] == ADMIN_ARN
    assert ok["operation"] == "ssm:DescribeInstanceInformation"
    assert (ok["method"], ok["path"], ok["status"], ok["client"]) == ("POST", "/", 200, "127.0.0.1")
    assert ok["bytes"] > 0 and ok["duration_ms"] >= 0
    refused = access[denied_id]
    assert refused["principal"] == f"arn:aws:iam::{ACCOUNT}:user/nobody"
    assert (refused["operation"], refused["status"]) == ("iam:ListUsers", 403)
    assert access[headers["x-amzn-RequestId"]]["status"] == 404
    # the audit record names the same request
    assert audit_record(broker.data_dir, rid)["eventName"] == "DescribeInstanceInformation"
    assert audit_record(broker.data_dir, denied_id)["decision"] == "denied"


def test_metrics_move_with_calls_and_sessions(broker: Broker, node: Agent) -> None:
    before = scrape(f"{broker.url}/metrics")
    ssm = broker.client("ssm")
    for _ in range(3):
        ssm.describe_instance_information()
    s = ssm.start_session(Target=TARGET)

    async def go() -> None:
        c = Client(s["StreamUrl"], s["TokenValue"])
        await c.open()
        await c.send(b"echo metrics-$((6*7))\r")
        await c.read_until(b"metrics-42")
        during = scrape(f"{broker.url}/metrics")  # the session is open now
        assert value(during, "hatchway_sessions", state="Connected", type="Standard_Stream") >= 1
        assert value(during, "hatchway_channels_open", kind="data") >= 1
        await c.send(b"exit\r")
        await c.read_until(None)
        await c.close()

    asyncio.run(go())
    after = scrape(f"{broker.url}/metrics")

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    op = {"service": "ssm", "operation": "DescribeInstanceInformation"}
    assert moved("hatchway_api_calls_total", **op, status="200") >= 3
    assert moved("hatchway_api_call_duration_seconds_count", **op) >= 3
    assert moved("hatchway_api_call_duration_seconds_bucket", **op, le="+Inf") >= 3
    assert moved("hatchway_api_calls_total", service="ssm", operation="StartSession", status="200")
    assert moved("hatchway_authorization_decisions_total", result="allowed") >= 4
    for direction in ("to_node", "to_client"):
        assert moved("hatchway_relay_frames_total", direction=direction) >= 1
        assert moved("hatchway_relay_bytes_total", direction=direction) > 0
    assert moved("hatchway_store_commit_duration_seconds_count", dialect="sqlite") >= 1
    assert value(after, "hatchway_nodes", ping_status="Online") >= 1
    assert ("hatchway_recording_backlog_bytes", ()) in after
    assert ("hatchway_background_lag_seconds", (("duty", "session_timeouts"),)) in after
    # a denial is counted by result
    iam = broker.client("iam")
    iam.create_user(UserName="metrics-nobody")
    key = iam.create_access_key(UserName="metrics-nobody")["AccessKey"]
    with pytest.raises(ClientError):
        broker.client("ssm", key["AccessKeyId"], key["SecretAccessKey"]).describe_sessions(
            State="Active"
        )
    last = scrape(f"{broker.url}/metrics")
    denied = ("hatchway_authorization_decisions_total", (("result", "denied"),))
    assert last.get(denied, 0) > after.get(denied, 0)


def test_metrics_and_health_are_not_audited(broker: Broker) -> None:
    audit = broker.data_dir / "audit.jsonl"
    before = audit.read_text()
    assert get(f"{broker.url}/metrics")[0] == 200
    assert get(f"{broker.url}/health")[0] == 200
    assert audit.read_text() == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_listen_and_no_access_log(tmp_path: Path) -> None:
    port = _free_port()
    b = start_broker(tmp_path / "data", "--metrics-listen", f"127.0.0.1:{port}", "--no-access-log")
    try:
        b.client("ssm").describe_instance_information()
        assert get(f"{b.url}/metrics")[0] == 404  # not on the API's address
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        assert (
            value(
                samples,
                "hatchway_api_calls_total",
                service="ssm",
                operation="DescribeInstanceInformation",
                status="200",
            )
            == 1
        )
        assert get(f"http://127.0.0.1:{port}/health")[0] == 200
        assert "hatchway.access" not in b.log.read_text()
    finally:
        stop_broker(b)


def test_the_grafana_dashboard_uses_only_metrics_the_broker_serves(broker: Broker) -> None:
    dashboard = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
    panels = json.loads(dashboard.read_text())["panels"]
    used = {
        name
        for p in panels
        for target in p["targets"]
        for name in re.findall(r"hatchway_[a-z_]+", target["expr"])
    }
    broker.client("ssm").describe_instance_information()  # an API call and a commit
    _, _, body = get(f"{broker.url}/metrics")
    served = set()
    for family in text_string_to_metric_families(body.decode()):
        served.add(family.name)
        served.update(s.name for s in family.samples)
    assert used and used <= served, used - served
