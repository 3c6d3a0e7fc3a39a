"""Authentication and protocol errors through the real front door: each refused with AWS's
error, nothing changed, and the broker keeps serving."""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from harness import ADMIN_KEY, ADMIN_SECRET, REGION, Broker, start_broker, stop_broker


def _raw(broker: Broker, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(broker.url + "/", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _signed(
    broker: Broker,
    target: str,
    body: bytes,
    *,
    secret: str = ADMIN_SECRET,
    when: dt.datetime | None = None,
) -> dict[str, str]:
    req = AWSRequest(
        "POST",
        broker.url + "/",
        data=body,
        headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"},
    )
    signer = SigV4Auth(Credentials(ADMIN_KEY, secret), "ssm", REGION)
    if when is None:
        signer.add_auth(req)
    else:
        # botocore takes the signing time from the clock: sign "in the past" by patching it.
        import botocore.auth

        real = botocore.auth.datetime.datetime
        frozen_at = when

        class Frozen(real):  # type: ignore[misc, valid-type]
            @classmethod
            def utcnow(cls) -> dt.datetime:
                return frozen_at.replace(tzinfo=None)

            @classmethod
            def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:
                return frozen_at if tz else frozen_at.replace(tzinfo=None)

        botocore.auth.datetime.datetime = Frozen
        try:
            signer.add_auth(req)
        finally:
            botocore.auth.datetime.datetime = real
    return dict(req.headers.items())


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("auth") / "data")
    yield b
    stop_broker(b)


def _activations(broker: Broker) -> int:
    return len(broker.client("ssm").describe_activations()["ActivationList"])


def test_wrong_secret_unknown_key_and_missing_auth(broker: Broker) -> None:
    before = _activations(broker)
    bad = broker.client("ssm", ADMIN_KEY, "not-the-secret")
    with pytest.raises(ClientError) as exc:
        bad.create_activation(IamRole="SSMServiceRole")
    err = exc.value.response["Error"]
    assert err["Code"] == "InvalidSignatureException"
    assert err["Message"].startswith("The request signature we calculated does not match")
    unknown = broker.client("ssm", "AKIAUNKNOWNUNKNOWN00", "x")
    with pytest.raises(ClientError) as exc:
        unknown.create_activation(IamRole="SSMServiceRole")
    assert exc.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert exc.value.response["Error"]["Message"] == (
        "The security token included in the request is invalid."
    )
    status, body = _raw(
        broker,
        b"{}",
        {
            "X-Amz-Target": "AmazonSSM.DescribeSessions",
            "Content-Type": "application/x-amz-json-1.1",
        },
    )
    assert status in (400, 403) and body["__type"] == "MissingAuthenticationTokenException"
    assert _activations(broker) == before


def test_iam_query_errors_use_query_codes(broker: Broker) -> None:
    iam = broker.client("iam", ADMIN_KEY, "wrong")
    with pytest.raises(ClientError) as exc:
        iam.create_user(UserName="mallory")
    assert exc.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert "mallory" not in [u["UserName"] for u in broker.client("iam").list_users()["Users"]]
    proc = broker.aws("sts", "get-caller-identity", key="AKIAUNKNOWNUNKNOWN00", secret="x")
    assert proc.returncode != 0 and "InvalidClientTokenId" in proc.stderr


def test_expired_signature_is_refused_with_aws_text(broker: Broker) -> None:
    body = json.dumps({"State": "Active"}).encode()
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=6)
    status, out = _raw(broker, body, _signed(broker, "AmazonSSM.DescribeSessions", body, when=old))
    assert status == 400
    assert out["__type"] == "InvalidSignatureException"
    assert out["message"].startswith("Signature expired: ")
    assert "(" in out["message"] and "- 5 min.)" in out["message"]
    fresh = _signed(broker, "AmazonSSM.DescribeSessions", body)
    assert _raw(broker, body, fresh)[0] == 200


def test_tampered_body_is_refused(broker: Broker) -> None:
    body = json.dumps({"State": "Active"}).encode()
    headers = _signed(broker, "AmazonSSM.DescribeSessions", body)
    status, out = _raw(broker, json.dumps({"State": "History"}).encode(), headers)
    assert status == 400 and out["__type"] == "InvalidSignatureException"


def test_unknown_operation_and_bad_json(broker: Broker) -> None:
    body = b"{}"
    status, out = _raw(broker, body, _signed(broker, "AmazonSSM.NoSuchThing", body))
    assert status == 400 and out["__type"] == "UnknownOperationException"
    bad = b'{"State": "Active"'
    status, out = _raw(broker, bad, _signed(broker, "AmazonSSM.DescribeSessions", bad))
    assert status == 400 and out["__type"] == "SerializationException"
    ok = json.dumps({"State": "Active"}).encode()
    assert _raw(broker, ok, _signed(broker, "AmazonSSM.DescribeSessions", ok))[0] == 200


def test_health(broker: Broker) -> None:
    with urllib.request.urlopen(broker.url + "/health", timeout=5) as resp:
        assert resp.status == 200


def test_admin_credentials_file_when_generated(tmp_path: Path) -> None:
    """The generated admin key: a 0600 file, never the secret in redirected output (item 12:
    before, the secret was printed to stdout, where journald and container logs keep it)."""
    import os
    import stat
    import subprocess
    import sys
    import time

    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HATCHWAY_ADMIN")}
    log = tmp_path / "log"
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("hatchway")),
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(data),
        ],
        stdout=open(log, "w"),  # noqa: SIM115 - open as long as the broker runs
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        creds = data / "admin-credentials"
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        assert stat.S_IMODE((data / "master.key").stat().st_mode) == 0o600
        # The store (recordings, sealed secrets) and the audit log sit in a private directory.
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for child in data.iterdir():
            assert stat.S_IMODE(child.stat().st_mode) & 0o077 == 0, child
        text = creds.read_text()
        assert text.startswith("[default]\naws_access_key_id = AKIA")
        secret = text.split("aws_secret_access_key = ")[1].strip()
        # Standard output is a file here (as under journald or a container runtime): the
        # secret stays in the 0600 file, and the output points at it.
        printed = log.read_text()
        assert secret not in printed
        assert str(creds) in printed
        db = (data / "hatchway.db").read_bytes()
        assert secret.encode() not in db  # encrypted at rest
    finally:
        proc.terminate()
        proc.wait(10)


def test_admin_secret_shown_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal the first start shows the generated secret once (nothing is logged)."""
    import os
    import pty
    import subprocess
    import sys

    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HATCHWAY_ADMIN")}
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("hatchway")),
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(data),
        ],
        stdout=follower,
        stderr=follower,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    os.close(follower)
    seen = b""
    try:
        while b"listening on" not in seen:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the broker exited: its output is complete
                break
            if not chunk:
                break
            seen += chunk
        text = (data / "admin-credentials").read_text()
        secret = text.split("aws_secret_access_key = ")[1].strip()
        assert secret in seen.decode()
    finally:
        proc.terminate()
        proc.wait(10)
        os.close(leader)
