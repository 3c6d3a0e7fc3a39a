"""The broker on TLS (docs/tls.md), end to end: ``hatchway server --tls-cert/--tls-key``, the
agent with ``--ca-file``, boto3 and the real ``aws`` CLI with the CA, our plugin over ``wss://``,
clients without the CA refused, SIGHUP serving a new certificate, ``hatchway up --tls``."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config
from harness.client import clean_aws_env, plugin_on_path
from test_client_broker import srv

from hatchway.agent.datakey import KmsDecrypter, KmsError
from hatchway.agent.registration import load
from hatchway.server.base.tls import LocalCA, local_ca

BIN = Path(sys.executable).parent
REGION = srv.REGION


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return local_ca(tmp_path_factory.mktemp("tls") / "ca")


@pytest.fixture(scope="module")
def stack(ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    b = srv.start_broker(
        tmp_path_factory.mktemp("tls-broker") / "data",
        "--tls-cert",
        str(ca.cert),
        "--tls-key",
        str(ca.key),
        ca=str(ca.ca_cert),
    )
    a = srv.start_agent(b, tmp_path_factory.mktemp("tls-node") / "state")  # --ca-file
    yield b, a.instance_id
    a.stop()
    srv.stop_broker(b)


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return plugin_on_path(tmp_path_factory.mktemp("tls-plugin"))


def admin_env(path: str, **extra: str) -> dict[str, str]:
    return clean_aws_env(
        {
            "AWS_ACCESS_KEY_ID": srv.ADMIN_KEY,
            "AWS_SECRET_ACCESS_KEY": srv.ADMIN_SECRET,
            "PATH": path,
            **extra,
        }
    )


def aws_command(
    url: str, target: str, env: dict[str, str], *trust: str, command: str = "echo over-tls"
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            str(BIN / "aws"),
            "--endpoint-url",
            url,
            *trust,
            "ssm",
            "start-session",
            "--target",
            target,
            "--document-name",
            "AWS-StartNonInteractiveCommand",
            "--parameters",
            json.dumps({"command": [command]}),
        ],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env=env,
        timeout=90,
    )


def test_boto3_with_the_ca_and_the_agent_over_tls(stack: tuple[Any, str]) -> None:
    broker, node = stack
    assert broker.url.startswith("https://")
    ssm = broker.client("ssm")  # verify=the CA
    # The agent registered and holds its control channel over https/wss with --ca-file.
    found = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [node]}])[
        "InstanceInformationList"
    ]
    assert found and found[0]["PingStatus"] == "Online"
    started = ssm.start_session(Target=node)
    host = urlsplit(broker.url).netloc
    assert started["StreamUrl"].startswith(f"wss://{host}/v1/data-channel/")
    ssm.terminate_session(SessionId=started["SessionId"])


def test_clients_without_the_ca_are_refused(stack: tuple[Any, str], path: str) -> None:
    broker, _node = stack
    untrusting = boto3.client(
        "ssm",
        endpoint_url=broker.url,
        region_name=REGION,
        aws_access_key_id=srv.ADMIN_KEY,
        aws_secret_access_key=srv.ADMIN_SECRET,
        config=Config(retries={"max_attempts": 1}),
    )
    with pytest.raises(botocore.exceptions.SSLError):
        untrusting.describe_instance_information()
    done = subprocess.run(
        [str(BIN / "aws"), "--endpoint-url", broker.url, "ssm", "describe-instance-information"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env=admin_env(path),
        timeout=60,
    )
    assert done.returncode != 0
    assert b"CERTIFICATE_VERIFY_FAILED" in done.stderr
    # A plain-HTTP request to the TLS port is not served.
    parts = urlsplit(broker.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    with pytest.raises((http.client.HTTPException, OSError)):
        conn.request("GET", "/health")
        conn.getresponse().read()
    conn.close()


def test_aws_cli_runs_a_command_through_our_plugin_over_tls(
    stack: tuple[Any, str], path: str, ca: LocalCA
) -> None:
    broker, node = stack
    # --ca-bundle for the CLI; the plugin, a process of its own, reads SSL_CERT_FILE as AWS's
    # Go plugin does (the CLI does not pass its bundle on).
    run = aws_command(
        broker.url,
        node,
        admin_env(path, SSL_CERT_FILE=str(ca.ca_cert)),
        "--ca-bundle",
        str(ca.ca_cert),
    )
    assert run.returncode == 0, run.stderr
    assert b"\nover-tls\n" in run.stdout
    # AWS_CA_BUNDLE alone serves the CLI and our plugin both.
    run = aws_command(
        broker.url, node, admin_env(path, AWS_CA_BUNDLE=str(ca.ca_cert)), command="echo bundle"
    )
    assert run.returncode == 0, run.stderr
    assert b"\nbundle\n" in run.stdout


def test_the_plugin_refuses_a_stream_it_cannot_verify(
    stack: tuple[Any, str], path: str, ca: LocalCA
) -> None:
    broker, node = stack
    # The CLI trusts the CA, the plugin does not: the wss:// upgrade fails verification and
    # the plugin says so at once (a certificate is not retried).
    run = aws_command(broker.url, node, admin_env(path), "--ca-bundle", str(ca.ca_cert))
    assert run.returncode != 0
    assert b"over-tls" not in run.stdout
    said = run.stdout + run.stderr
    assert b"Cannot perform start session: the certificate of 127.0.0.1 did not verify" in said, (
        said
    )


def _peer_cert(url: str, cafile: Path | None = None) -> bytes:
    parts = urlsplit(url)
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((parts.hostname, parts.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=parts.hostname) as tls,
    ):
        cert = tls.getpeercert(binary_form=True)
    assert cert is not None
    return cert


def _pem_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_sighup_serves_the_new_certificate_and_keeps_connections(
    tmp_path: Path, ca: LocalCA
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(ca.cert, live / "cert.pem")
    shutil.copy(ca.key, live / "key.pem")
    b = srv.start_broker(
        tmp_path / "data",
        "--tls-cert",
        str(live / "cert.pem"),
        "--tls-key",
        str(live / "key.pem"),
        ca=str(ca.ca_cert),
    )
    try:
        assert _peer_cert(b.url, ca.ca_cert) == _pem_der(ca.cert)
        parts = urlsplit(b.url)
        kept = http.client.HTTPSConnection(
            parts.hostname or "",
            parts.port,
            timeout=10,
            context=ssl.create_default_context(cafile=str(ca.ca_cert)),
        )
        kept.request("GET", "/health")
        assert kept.getresponse().read()
        kept_sock = kept.sock

        # A file that does not load: the reload is refused, the old certificate stays.
        (live / "cert.pem").write_text("not a certificate\n")
        b.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "reload failed" not in b.log.read_text():
            assert time.monotonic() < deadline, b.log.read_text()
            time.sleep(0.05)
        assert _peer_cert(b.url, ca.ca_cert) == _pem_der(ca.cert)

        fresh = local_ca(tmp_path / "ca2")  # another CA: the old one no longer verifies it
        shutil.copy(fresh.cert, live / "cert.pem")
        shutil.copy(fresh.key, live / "key.pem")
        b.proc.send_signal(signal.SIGHUP)
        while _peer_cert(b.url) != _pem_der(fresh.cert):
            assert time.monotonic() < deadline + 20, b.log.read_text()
            time.sleep(0.05)
        assert _peer_cert(b.url, fresh.ca_cert) == _pem_der(fresh.cert)
        with pytest.raises(ssl.SSLCertVerificationError):
            _peer_cert(b.url, ca.ca_cert)
        # The connection opened before the reload goes on, on its old session.
        kept.request("GET", "/health")
        assert kept.getresponse().read()
        assert kept.sock is kept_sock and kept_sock.getpeercert(True) == _pem_der(ca.cert)
        kept.close()
        assert b.proc.poll() is None
    finally:
        srv.stop_broker(b)


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("workers", "--workers cannot be combined with --tls-cert"),
        ("bad-cert", "cannot load the TLS certificate"),
    ],
)
def test_tls_misconfiguration_is_refused_with_a_reason(
    tmp_path: Path, ca: LocalCA, case: str, said: str
) -> None:
    cert = ca.cert
    extra = ["--workers", "2"] if case == "workers" else []
    if case == "bad-cert":
        cert = tmp_path / "cert.pem"
        cert.write_text("not a certificate\n")
    done = subprocess.run(
        [
            str(BIN / "hatchway"),
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "data"),
            *extra,
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(ca.key),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert said in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_hatchway_up_tls(tmp_path: Path) -> None:
    data = tmp_path / "hw"
    out = tmp_path / "up.log"
    with open(out, "w") as log:
        proc = subprocess.Popen(
            [str(BIN / "hatchway"), "up", "--tls", "--listen", "127.0.0.1:0", "--data-dir", data],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HATCHWAY_ADMIN_ACCESS_KEY_ID": srv.ADMIN_KEY}
            | {"HATCHWAY_ADMIN_SECRET_ACCESS_KEY": srv.ADMIN_SECRET},
        )
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C stops both" not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)
        text = out.read_text()
        m = re.search(r"broker\s+(https://127\.0\.0\.1:\d+)", text)
        assert m, text
        url = m.group(1)
        ca = (data / "tls" / "ca.pem").resolve()
        assert f"AWS_CA_BUNDLE={ca}" in text and f"SSL_CERT_FILE={ca}" in text
        assert f"--ca-bundle {ca}" in text
        assert f"aws --endpoint-url {url} ssm start-session" in text
        assert (data / "tls" / "server-key.pem").stat().st_mode & 0o777 == 0o600
        assert not list((data / "tls").glob("ca-key*"))  # the CA's key is not kept
        found = boto3.client(
            "ssm",
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id=srv.ADMIN_KEY,
            aws_secret_access_key=srv.ADMIN_SECRET,
            verify=str(ca),
        ).describe_instance_information()["InstanceInformationList"]
        assert [n["PingStatus"] for n in found] == ["Online"]  # its agent, over wss://
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_secure_transport_is_true_over_tls(stack: tuple[Any, str]) -> None:
    broker, _node = stack
    key, secret = srv.user_with_policy(
        broker,
        "tls-only",
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "ssm:DescribeInstanceInformation",
                    "Resource": "*",
                    "Condition": {"Bool": {"aws:SecureTransport": "true"}},
                }
            ],
        },
    )
    assert (
        "InstanceInformationList"
        in broker.client("ssm", key, secret).describe_instance_information()
    )


def test_an_agent_without_the_ca_does_not_register(stack: tuple[Any, str], tmp_path: Path) -> None:
    broker, _node = stack
    activation = broker.client("ssm").create_activation(IamRole="SSMServiceRole")
    done = subprocess.run(
        [
            str(BIN / "hatchway"),
            "agent",
            "--endpoint",
            broker.url,
            "--state-dir",
            str(tmp_path / "state"),
            "--activation-id",
            activation["ActivationId"],
            "--activation-code",
            activation["ActivationCode"],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")},
    )
    assert done.returncode == 1
    assert f"registration failed: cannot reach {broker.url}" in done.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in done.stderr
    assert not (tmp_path / "state" / "credentials").exists()


def test_hatchway_start_session_trusts_ssl_cert_file(
    stack: tuple[Any, str], path: str, ca: LocalCA
) -> None:
    broker, node = stack
    done = subprocess.run(
        [
            str(BIN / "hatchway"),
            "start-session",
            "--target",
            node,
            "--endpoint-url",
            broker.url,
            "--region",
            REGION,
            "--document-name",
            "AWS-StartNonInteractiveCommand",
            "--parameters",
            json.dumps({"command": ["echo own-client"]}),
        ],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env=admin_env(path, SSL_CERT_FILE=str(ca.ca_cert)),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert b"\nown-client\n" in done.stdout


def test_the_agents_kms_calls_check_the_broker_with_its_ca_file(
    stack: tuple[Any, str], ca: LocalCA
) -> None:
    broker, node = stack
    reg = load(next(broker.data_dir.parent.parent.glob("tls-node*")) / "state")
    assert reg is not None and reg.instance_id == node
    reg.endpoint = broker.url
    key = broker.client("kms").create_key()["KeyMetadata"]["KeyId"]
    blob = broker.client("kms").encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]
    reg.ca_file = str(ca.ca_cert)
    # Over TLS with --ca-file the broker answers (the node's role may not decrypt this blob).
    with pytest.raises(KmsError, match="AccessDeniedException"):
        KmsDecrypter(reg).decrypt(blob, {}, key)
    reg.ca_file = None  # the system store does not know the local CA
    with pytest.raises(KmsError, match="SSL validation failed"):
        KmsDecrypter(reg).decrypt(blob, {}, key)
