"""Policy patterns cannot stall the broker (issue 16, item 2), through boto3 on a real broker.

A backtracking regex took exponential time on ``*a*a*a…*b`` and ran on the event loop: one
SimulateCustomPolicy froze every request, ``/health`` included. Now patterns match in linear
time and simulations run in the CPU pool, so ``/health`` answers while a heavy one runs.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any

import boto3
from botocore.config import Config

Broker = Any  # harness.broker.Broker

EVIL = "*a" * 1000 + "*b"  # 1,001 wildcards
EVIL_ACTION = "*a" * 40 + "*b"  # action names have at most 128 characters
DOC_ARN = "arn:aws:ssm:us-east-1:123456789012:document/"


def _iam(broker: Broker, read_timeout: int) -> Any:
    # A generous bound, only so that the broker of the old code (which never answered) fails
    # the test instead of hanging it.
    return boto3.client(
        "iam",
        endpoint_url=broker.url,
        region_name="us-east-1",
        aws_access_key_id="AKIAHATCHWAYADMIN001",
        aws_secret_access_key="hatchway-admin-secret-for-tests-0000000000",
        config=Config(retries={"max_attempts": 1}, read_timeout=read_timeout),
    )


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def test_simulation_with_a_thousand_wildcards_answers(broker: Broker) -> None:
    iam = _iam(broker, 60)
    policy = _policy(
        {"Effect": "Allow", "Action": f"ssm:{EVIL_ACTION}", "Resource": f"{DOC_ARN}{EVIL}"},
        {
            "Effect": "Deny",
            "Action": "ssm:*",
            "Resource": "*",
            "Condition": {"StringLike": {"aws:username": EVIL}},
        },
    )
    many_a = "a" * 2000
    out = iam.simulate_custom_policy(
        PolicyInputList=[policy],
        ActionNames=[f"ssm:{many_a[:120]}", f"ssm:{many_a[:120]}b"],
        ResourceArns=[f"{DOC_ARN}{many_a}", f"{DOC_ARN}{many_a}b"],
        ContextEntries=[
            {
                "ContextKeyName": "aws:username",
                "ContextKeyValues": [many_a],
                "ContextKeyType": "string",
            }
        ],
    )
    decisions = {
        (r["EvalActionName"][-1], r["EvalResourceName"][-1]): r["EvalDecision"]
        for r in out["EvaluationResults"]
    }
    assert decisions == {
        ("a", "a"): "implicitDeny",
        ("a", "b"): "implicitDeny",
        ("b", "a"): "implicitDeny",
        ("b", "b"): "allowed",
    }
    health = json.loads(urllib.request.urlopen(broker.url + "/health", timeout=10).read())
    assert health["status"] == "ok"


def test_health_answers_while_a_heavy_simulation_runs(broker: Broker) -> None:
    """128 actions × 512 resources over 200 wildcard statements: seconds of computation. The
    broker reports it in /health's cpuJobs while it runs, which /health can only do if it
    answers meanwhile."""
    iam = _iam(broker, 300)
    statements = [
        {
            "Effect": "Allow",
            "Action": [f"ssm:Get*{i}", f"ssm:*Describe{i}*"],
            "Resource": [f"{DOC_ARN}team{i}-*", f"arn:aws:ec2:*:*:instance/i-{i:03d}*"],
        }
        for i in range(200)
    ]
    actions = [f"ssm:GetThing{i}" for i in range(128)]
    resources = [f"{DOC_ARN}team{i % 200}-{i}" for i in range(512)]
    result: dict[str, Any] = {}

    def simulate() -> None:
        try:
            result["out"] = iam.simulate_custom_policy(
                PolicyInputList=[_policy(*statements)],
                ActionNames=actions,
                ResourceArns=resources,
                MaxItems=1,
            )
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    worker = threading.Thread(target=simulate)
    worker.start()
    seen_running = False
    while worker.is_alive() and not seen_running:
        with urllib.request.urlopen(broker.url + "/health", timeout=300) as resp:
            health = json.loads(resp.read())
        seen_running = health.get("cpuJobs", 0) >= 1
    worker.join()
    assert "error" not in result, result.get("error")
    assert seen_running, "/health never answered while the simulation ran"
    out = result["out"]
    assert out["IsTruncated"] is True
    [first] = out["EvaluationResults"]
    assert (first["EvalActionName"], first["EvalResourceName"]) == ("ssm:GetThing0", resources[0])
    assert first["EvalDecision"] == "allowed"
