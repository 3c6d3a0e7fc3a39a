"""Store faults (issue 11, item 6), on a real full disk (a small tmpfs) and a read-only mount.

On a full disk the calls that failed were missing from the audit (15 attempts, 5 JSON lines,
0 rows) and tracebacks flooded the log. Now every call is audited (a line audit.jsonl cannot
take waits in memory and is written once it can); when neither the store nor audit.jsonl can
take an event, calls are refused before they run (fail closed) with AWS's server faults; a
failure is logged once per cause per minute with a count. A read-only database at start is
one line and exit status 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


import harness as srv  # noqa: E402


@contextlib.contextmanager
def mounted(target: Path, *args: str) -> Iterator[Path]:
    target.mkdir(exist_ok=True)
    subprocess.run(["mount", *args, str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def fill(path: Path) -> None:
    """Fill the file system of ``path`` to the last byte."""
    block = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 4096, 1):
            chunk = block[:size]
            with contextlib.suppress(OSError):
                while True:
                    f.write(chunk)


def call(fn: Any, **kw: Any) -> tuple[str, str]:
    """(error code or "ok", request id) of one boto3 call."""
    try:
        reply = fn(**kw)
        return "ok", reply["ResponseMetadata"]["RequestId"]
    except ClientError as exc:
        return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["RequestId"]


def test_a_full_disk_audits_every_call_fails_closed_and_logs_each_cause_once(
    tmp_path: Path,
) -> None:
    with mounted(tmp_path / "data", "-t", "tmpfs", "-o", "size=64m", "tmpfs") as data:
        broker = srv.start_broker(data)
        try:
            iam, sts, ssm = broker.client("iam"), broker.client("sts"), broker.client("ssm")
            assert call(iam.create_user, UserName="before")[0] == "ok"
            fill(data / "filler")
            # audit.jsonl fails at once; the store (SQLite reuses its WAL's space) only once
            # the database must grow: write policies until the calls are refused
            document = json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Deny", "Action": f"ssm:Get{i:04}*", "Resource": "*"}
                        for i in range(40)
                    ],
                }
            )
            attempts: list[tuple[str, str]] = []
            for i in range(400):
                attempts.append(
                    call(iam.create_policy, PolicyName=f"big-{i}", PolicyDocument=document)
                )
                if attempts[-1][0] == "ServiceUnavailable":
                    break
            codes = [code for code, _ in attempts]
            # fail closed: once neither sink takes events, calls are refused before they run
            assert codes[-1] == "ServiceUnavailable", codes  # Query (IAM, STS)
            refused = [call(iam.create_user, UserName=f"full-{i}") for i in range(5)]
            refused += [call(sts.get_caller_identity) for _ in range(2)]
            assert [code for code, _ in refused] == ["ServiceUnavailable"] * 7
            json_refused = call(ssm.describe_sessions, State="Active")
            assert json_refused[0] == "InternalFailure"  # JSON (SSM)
            attempts += [*refused, json_refused]
            (data / "filler").unlink()  # space again
            assert call(iam.create_user, UserName="after")[0] == "ok"
            for i in range(5):  # refused calls changed nothing
                assert call(iam.get_user, UserName=f"full-{i}")[0] == "NoSuchEntity"
            assert call(iam.get_user, UserName="before")[0] == "ok"
            log = broker.log.read_text()
        finally:
            srv.stop_broker(broker)
        # every call is in the audit, the refused ones included
        lines = [json.loads(x) for x in (data / "audit.jsonl").read_text().splitlines()]
        audited = {e["requestID"]: e for e in lines}
        for code, request_id in attempts:
            assert request_id in audited, (code, request_id)
            if code != "ok":
                assert audited[request_id]["errorCode"] == code
    # the log: each cause once (with its traceback), not once per call
    assert log.count("Traceback") <= 6, log[-5000:]
    assert log.count("could not write audit.jsonl") <= 2, log[-5000:]


def test_a_read_only_database_at_start_is_one_line_and_status_2(tmp_path: Path) -> None:
    first = srv.start_broker(tmp_path / "db")
    srv.stop_broker(first)
    with mounted(tmp_path / "ro", "--bind", str(tmp_path / "db")) as ro:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        url = f"sqlite:///{ro / 'hatchway.db'}"
        proc = subprocess.run(
            [
                str(srv.BIN / "hatchway"),
                "server",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(tmp_path / "data"),
                "--database-url",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            env={
                **os.environ,
                "HATCHWAY_ADMIN_ACCESS_KEY_ID": srv.ADMIN_KEY,
                "HATCHWAY_ADMIN_SECRET_ACCESS_KEY": srv.ADMIN_SECRET,
            },
        )
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert (
        lines[0] == f"Error: cannot write to the store {url}: attempt to write a readonly database"
    )
