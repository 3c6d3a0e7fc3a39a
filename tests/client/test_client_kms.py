"""KMS-encrypted sessions end to end: ``aws ssm start-session`` (and ``hatchway start-session``)
with our plugin, the real broker and its built-in KMS, a real agent.

Every byte between the clients and the broker goes through a recording TCP proxy (the
broker's ``--public-url`` points StreamUrls at it, so the agent's data channel passes it too).
The test unmasks the websocket frames and decodes the data-channel messages it captured:
with ``inputs.kmsKeyId`` neither the command typed nor its result may appear in them, while
the same session without a key shows both (the proxy sees the real traffic).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from harness.client import clean_aws_env, plugin_on_path
from test_client_broker import srv, status

from hatchway.agent.datakey import KmsDecrypter, KmsSettings
from hatchway.agent.registration import Registration
from hatchway.client.aws import BotoControlPlane
from hatchway.client.datakey import BotoDataKeys, is_aws_endpoint, kms_endpoint
from hatchway.client.session import Session, SessionParams
from hatchway.client.terminal import TerminalIO
from hatchway.protocol import PayloadType, decode, parse_handshake_request
from hatchway.protocol.sessionlog import AGENT_SESSION_LOG

BIN = Path(sys.executable).parent
TARGET = "i-0f1e2d3c4b5a69788"
ALIAS = "alias/hatchway-sessions"
ENCRYPTED_TYPES = (PayloadType.OUTPUT, PayloadType.STDERR, PayloadType.EXIT_CODE)
TYPED = b"echo KMS-$((1234*5678))"
RESULT = b"KMS-7006652"


# -- a recording TCP proxy ----------------------------------------------------------------


class Tap:
    """Forwards TCP connections to ``upstream`` and keeps every byte of both directions."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.upstream: tuple[str, int] | None = None
        self.connections: list[tuple[bytearray, bytearray]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            assert self.upstream is not None
            up = socket.create_connection(self.upstream)
            sent, received = bytearray(), bytearray()
            with self._lock:
                self.connections.append((sent, received))
            threading.Thread(target=self._pump, args=(down, up, sent), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, received), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        try:
            while data := src.recv(65536):
                record.extend(data)
                dst.sendall(data)
        except OSError:  # the other side went away first: the capture so far stands
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def mark(self) -> int:
        """How many connections so far (to look only at what came after)."""
        with self._lock:
            return len(self.connections)

    def since(self, mark: int) -> list[tuple[bytes, bytes]]:
        with self._lock:
            return [(bytes(a), bytes(b)) for a, b in self.connections[mark:]]

    def close(self) -> None:
        self.listener.close()


def ws_frames(stream: bytes) -> list[tuple[int, bytes]]:
    """RFC 6455 frames after the HTTP upgrade in one direction: ``(opcode, unmasked payload)``."""
    _, sep, rest = stream.partition(b"\r\n\r\n")
    out: list[tuple[int, bytes]] = []
    i = 0
    while sep and i + 2 <= len(rest):
        b0, b1 = rest[i], rest[i + 1]
        assert not b0 & 0x70, "a compressed websocket frame: the capture would prove nothing"
        i += 2
        length = b1 & 0x7F
        if length in (126, 127):
            width = 2 if length == 126 else 8
            length = int.from_bytes(rest[i : i + width], "big")
            i += width
        mask = rest[i : i + 4] if b1 & 0x80 else b""
        i += len(mask)
        payload = rest[i : i + length]
        i += length
        if len(payload) < length:
            break  # cut off by the close
        if mask:
            payload = bytes(c ^ mask[n % 4] for n, c in enumerate(payload))
        out.append((b0 & 0x0F, payload))
    return out


def data_channel_messages(captured: list[tuple[bytes, bytes]]) -> list[tuple[str, Any]]:
    """Every data-channel message on the data-channel websockets: ``(direction, Frame)``."""
    found: list[tuple[str, Any]] = []
    for sent, received in captured:
        if b"/v1/data-channel/" not in sent.split(b"\r\n", 1)[0]:
            continue
        for direction, stream in (("to-broker", sent), ("from-broker", received)):
            for opcode, payload in ws_frames(stream):
                if opcode == 2:
                    found.append((direction, decode(payload)))
    return found


# -- the stack ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tap() -> Iterator[Tap]:
    t = Tap()
    yield t
    t.close()


@pytest.fixture(scope="module")
def broker(tap: Tap, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    b = srv.start_broker(
        tmp_path_factory.mktemp("kms-broker") / "data",
        "--public-url",
        f"http://127.0.0.1:{tap.port}",
    )
    tap.upstream = ("127.0.0.1", int(b.url.rsplit(":", 1)[1]))
    yield b
    srv.stop_broker(b)


@pytest.fixture(scope="module")
def node(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    a = srv.start_agent(broker, tmp_path_factory.mktemp("kms-node") / "state", TARGET)
    yield a
    a.stop()


def _document(broker: Any, name: str, kms_key_id: str) -> None:
    content = {
        "schemaVersion": "1.0",
        "description": "Shell sessions encrypted with a KMS key",
        "sessionType": "Standard_Stream",
        "inputs": {"kmsKeyId": kms_key_id, "idleSessionTimeout": "20"},
    }
    broker.client("ssm").create_document(
        Name=name, DocumentType="Session", Content=json.dumps(content)
    )


@pytest.fixture(scope="module")
def documents(broker: Any) -> dict[str, str]:
    """``KmsShell`` (a usable key, by alias), ``KmsShellNodeDenied`` (the node may not
    decrypt), ``PlainShell`` (no key)."""
    kms = broker.client("kms")
    key = kms.create_key(Description="session data keys")["KeyMetadata"]
    kms.create_alias(AliasName=ALIAS, TargetKeyId=key["KeyId"])
    policy = json.loads(kms.get_key_policy(KeyId=key["KeyId"])["Policy"])
    node_role = f"arn:aws:iam::{srv.ACCOUNT}:role/SSMServiceRole"
    policy["Statement"].append(
        {
            "Sid": "NotForNodes",
            "Effect": "Deny",
            "Principal": {"AWS": node_role},
            "Action": "kms:Decrypt",
            "Resource": "*",
        }
    )
    denied = kms.create_key(Policy=json.dumps(policy))["KeyMetadata"]
    _document(broker, "KmsShell", ALIAS)
    _document(broker, "KmsShellNodeDenied", denied["Arn"])
    _document(broker, "PlainShell", "")
    return {"key": key["Arn"], "denied": denied["Arn"]}


def _env(key: str, secret: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return clean_aws_env(
        {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, **(extra or {})}
    )


def aws_start_session(
    tap: Tap,
    tmp_path: Path,
    document: str,
    stdin: bytes,
    key: str = srv.ADMIN_KEY,
    secret: str = srv.ADMIN_SECRET,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """``aws ssm start-session`` with our plugin; the API calls go through the tap too."""
    return subprocess.run(
        [
            str(BIN / "aws"),
            "ssm",
            "start-session",
            "--target",
            TARGET,
            "--document-name",
            document,
            "--endpoint-url",
            f"http://127.0.0.1:{tap.port}",
        ],
        input=stdin,
        capture_output=True,
        env=_env(key, secret, {"PATH": plugin_on_path(tmp_path), **(env or {})}),
        timeout=90,
    )


def session_id(out: bytes) -> str:
    assert b"Starting session with SessionId: " in out, out
    return out.split(b"SessionId: ", 1)[1].split(b"\n", 1)[0].decode().strip()


# -- encrypted sessions -------------------------------------------------------------------


def test_encrypted_session_shows_output_to_the_user_and_nothing_on_the_wire(
    broker: Any, node: Any, documents: dict[str, str], tap: Tap, tmp_path: Path
) -> None:
    mark = tap.mark()
    done = aws_start_session(tap, tmp_path, "KmsShell", TYPED + b"\rexit\r")
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout
    sid = session_id(out)
    assert b"This session is encrypted using AWS KMS." in out
    assert RESULT in out
    assert status(broker, sid) == "Terminated"

    captured = tap.since(mark)
    raw = b"".join(a + b for a, b in captured)
    assert RESULT not in raw and b"1234*5678" not in raw
    messages = data_channel_messages(captured)
    stream = [
        (d, f)
        for d, f in messages
        if f.message_type.strip() in ("input_stream_data", "output_stream_data")
    ]
    for _, frame in stream:
        assert RESULT not in frame.payload and b"1234*5678" not in frame.payload
        if frame.payload_type in ENCRYPTED_TYPES:
            assert len(frame.payload) >= 28  # nonce ‖ ciphertext ‖ tag
    # The session's traffic was there to look at: keystrokes going in, output coming out,
    # on both the client's and the agent's websocket, and the KMS handshake.
    outputs = {
        (d, f.message_type.strip()) for d, f in stream if f.payload_type == PayloadType.OUTPUT
    }
    assert {
        ("to-broker", "input_stream_data"),
        ("from-broker", "output_stream_data"),
        ("to-broker", "output_stream_data"),
        ("from-broker", "input_stream_data"),
    } <= outputs
    requests = [f for _, f in stream if f.payload_type == PayloadType.HANDSHAKE_REQUEST]
    actions = {
        a.action_type: a.parameters for a in parse_handshake_request(requests[0].payload).actions
    }
    assert actions["KMSEncryption"]["KMSKeyId"] == ALIAS
    kinds = {f.payload_type for _, f in stream}
    assert {PayloadType.ENC_CHALLENGE_REQUEST, PayloadType.ENC_CHALLENGE_RESPONSE} <= kinds


def test_the_same_session_without_a_key_is_readable_on_the_wire(
    broker: Any, node: Any, documents: dict[str, str], tap: Tap, tmp_path: Path
) -> None:
    """The control: proves the tap and the frame decoding see the session's real bytes."""
    mark = tap.mark()
    done = aws_start_session(tap, tmp_path, "PlainShell", TYPED + b"\rexit\r")
    assert done.returncode == 0, done.stderr.decode()
    assert RESULT in done.stdout
    assert b"encrypted using AWS KMS" not in done.stdout
    payloads = b"".join(f.payload for _, f in data_channel_messages(tap.since(mark)))
    assert RESULT in payloads and b"1234*5678" in payloads


def test_hatchway_start_session_encrypts_too(
    broker: Any, node: Any, documents: dict[str, str], tap: Tap
) -> None:
    mark = tap.mark()
    done = subprocess.run(
        [
            str(BIN / "hatchway"),
            "start-session",
            "--target",
            TARGET,
            "--document-name",
            "KmsShell",
            "--endpoint-url",
            f"http://127.0.0.1:{tap.port}",
            "--region",
            srv.REGION,
        ],
        input=b"echo HW-$((4321*8765))\rexit\r",
        capture_output=True,
        env=_env(srv.ADMIN_KEY, srv.ADMIN_SECRET),
        timeout=90,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"This session is encrypted using AWS KMS." in done.stdout
    assert b"HW-37873565" in done.stdout
    for direction, frame in data_channel_messages(tap.since(mark)):
        if frame.message_type.strip() == AGENT_SESSION_LOG:
            # The transcript the agent streams to the broker's recorder (docs/kms.md: the
            # broker keeps recordings of encrypted sessions too); it never goes to a client.
            assert direction == "to-broker"
            continue
        assert b"37873565" not in frame.payload and b"4321*8765" not in frame.payload


# -- failures -----------------------------------------------------------------------------


def test_user_without_generate_data_key_fails_cleanly(
    broker: Any, node: Any, documents: dict[str, str], tap: Tap, tmp_path: Path
) -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["ssm:*", "ssmmessages:*"], "Resource": "*"},
        ],
    }
    key, secret = srv.user_with_policy(broker, "no-kms-user", policy)
    mark = tap.mark()
    done = aws_start_session(tap, tmp_path, "KmsShell", b"echo never-$((3*3))\r", key, secret)
    out = done.stdout.decode()
    sid = session_id(done.stdout)
    assert (
        "Encountered error while initiating handshake. KMSEncryption failed on client with "
        "status 2 error: Failed to generate a KMS data key: An error occurred "
        "(AccessDeniedException) when calling the GenerateDataKey operation: User: "
        f"arn:aws:iam::{srv.ACCOUNT}:user/no-kms-user is not authorized to perform: "
        f"kms:GenerateDataKey on resource: {documents['key']} because no identity-based "
        "policy allows the kms:GenerateDataKey action"
    ) in out
    assert f"SessionId: {sid} : " in out
    assert "never-9" not in out and "encrypted using AWS KMS" not in out
    assert status(broker, sid) == "Failed"
    # The shell never started and the keystrokes were never sent.
    messages = data_channel_messages(tap.since(mark))
    assert PayloadType.ENC_CHALLENGE_REQUEST not in {f.payload_type for _, f in messages}
    assert not any(b"never-" in f.payload for _, f in messages)


def test_node_that_may_not_decrypt_fails_the_session_with_the_reason(
    broker: Any, node: Any, documents: dict[str, str], tap: Tap, tmp_path: Path
) -> None:
    mark = tap.mark()
    done = aws_start_session(tap, tmp_path, "KmsShellNodeDenied", b"echo never-$((3*3))\r")
    out = done.stdout.decode()
    sid = session_id(done.stdout)
    assert (
        "Encountered error while initiating handshake. Fetching data key failed: Unable to "
        "retrieve data key, AccessDeniedException: User: "
        f"arn:aws:sts::{srv.ACCOUNT}:assumed-role/SSMServiceRole/{TARGET} is not authorized "
        f"to perform: kms:Decrypt on resource: {documents['denied']} with an explicit deny in "
        "a resource-based policy"
    ) in out
    assert "never-9" not in out
    assert status(broker, sid) == "Failed"
    assert not any(b"never-" in f.payload for _, f in data_channel_messages(tap.since(mark)))


def test_aws_endpoint_url_kms_is_where_the_client_asks(
    broker: Any, node: Any, documents: dict[str, str], tap: Tap, tmp_path: Path
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    done = aws_start_session(
        tap,
        tmp_path,
        "KmsShell",
        b"echo never-$((3*3))\r",
        env={"AWS_ENDPOINT_URL_KMS": f"http://127.0.0.1:{port}"},
    )
    out = done.stdout.decode()
    assert "Failed to generate a KMS data key: Could not connect to the endpoint URL" in out
    assert f"127.0.0.1:{port}" in out
    assert status(broker, session_id(done.stdout)) == "Failed"


# -- endpoint selection (pure) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ssm", "env", "expected"),
    [
        ("http://127.0.0.1:8080", {}, "http://127.0.0.1:8080"),
        ("https://hatchway.example.com", {}, "https://hatchway.example.com"),
        ("https://ssm.us-east-1.amazonaws.com", {}, None),
        ("https://ssm.cn-north-1.amazonaws.com.cn", {}, None),
        ("https://ssm-fips.us-east-2.api.aws", {}, None),
        ("", {}, None),
        ("http://127.0.0.1:8080", {"AWS_ENDPOINT_URL_KMS": "http://kms.local"}, "http://kms.local"),
        ("https://ssm.us-east-1.amazonaws.com", {"AWS_ENDPOINT_URL_KMS": "http://k"}, "http://k"),
        ("http://127.0.0.1:8080", {"AWS_ENDPOINT_URL_KMS": " "}, "http://127.0.0.1:8080"),
    ],
)
def test_client_kms_endpoint(ssm: str, env: dict[str, str], expected: str | None) -> None:
    assert kms_endpoint(ssm, env) == expected


def test_is_aws_endpoint() -> None:
    assert is_aws_endpoint("https://SSM.eu-west-1.AmazonAWS.com/")
    assert not is_aws_endpoint("https://amazonaws.com.evil.example")
    assert not is_aws_endpoint("http://localhost:8080")


def test_agent_kms_endpoint() -> None:
    reg = Registration(
        "mi-0123456789abcdef0", "eu-west-1", srv.ACCOUNT, "http://broker:8080", "AK", "SK"
    )
    assert KmsDecrypter(reg).endpoint_url == "http://broker:8080"
    assert KmsDecrypter(reg, KmsSettings("http://kms:9")).endpoint_url == "http://kms:9"
    assert KmsDecrypter(reg, KmsSettings(credentials="default")).endpoint_url is None
    client = KmsDecrypter(reg, KmsSettings(region="us-west-2")).client()
    assert client.meta.region_name == "us-west-2"
    assert client.meta.endpoint_url == "http://broker:8080"
    with pytest.raises(ValueError):
        KmsSettings(credentials="instance")


# -- hostile or broken clients ------------------------------------------------------------


class ForeignContextKeys:
    """Real GenerateDataKey on the broker, but bound to another session's context."""

    def __init__(self, broker: Any) -> None:
        self.kms = broker.client("kms")

    def generate_data_key(self, key_id: str, context: dict[str, str]) -> tuple[bytes, bytes]:
        wrong = {**context, "aws:ssm:SessionId": "someone-else-0123456789abcdef0"}
        out = self.kms.generate_data_key(KeyId=key_id, NumberOfBytes=64, EncryptionContext=wrong)
        return out["Plaintext"], out["CiphertextBlob"]


class EchoingSession(Session):
    """Answers the EncChallengeRequest without decrypting it (it does not hold the key)."""

    def _kms_challenge(self, challenge: str) -> str:
        return challenge


def _run_in_process(broker: Any, session_cls: type[Session], kms: Any) -> tuple[bytes, str]:
    response = broker.client("ssm").start_session(Target=TARGET, DocumentName="KmsShell")
    params = SessionParams(
        session_id=response["SessionId"],
        token=response["TokenValue"],
        stream_url=response["StreamUrl"],
        region=srv.REGION,
        endpoint_url=broker.url,
        target=TARGET,
    )
    read_fd, write_fd = os.pipe()
    out = io.BytesIO()
    session = session_cls(
        params,
        api=BotoControlPlane(srv.REGION, "", broker.url),
        io=TerminalIO(read_fd, out, io.BytesIO(), interactive=False),
        signals=False,
        kms=kms,
    )
    try:
        asyncio.run(asyncio.wait_for(session.run(), 60))
    finally:
        os.close(write_fd)
        os.close(read_fd)
    return out.getvalue(), response["SessionId"]


def test_a_data_key_for_another_session_does_not_decrypt_on_the_node(
    broker: Any, node: Any, documents: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in _env(srv.ADMIN_KEY, srv.ADMIN_SECRET).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    out, sid = _run_in_process(broker, Session, ForeignContextKeys(broker))
    assert (
        b"Encountered error while initiating handshake. Fetching data key failed: Unable to "
        b"retrieve data key, InvalidCiphertextException" in out
    )
    assert b"encrypted using AWS KMS" not in out
    assert status(broker, sid) == "Failed"


def test_a_client_that_cannot_answer_the_challenge_is_refused(
    broker: Any, node: Any, documents: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in _env(srv.ADMIN_KEY, srv.ADMIN_SECRET).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    kms = BotoDataKeys(lambda: boto3.Session(region_name=srv.REGION), broker.url)
    out, sid = _run_in_process(broker, EchoingSession, kms)
    assert b"Encountered error while initiating handshake. KMS challenge mismatch" in out
    assert b"encrypted using AWS KMS" not in out
    assert status(broker, sid) == "Failed"


def test_data_keys_with_a_boto3_or_a_botocore_session(
    broker: Any, documents: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in _env(srv.ADMIN_KEY, srv.ADMIN_SECRET).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    context = {"aws:ssm:SessionId": "s-1", "aws:ssm:TargetId": TARGET}
    for make in (boto3.Session, botocore.session.Session):
        source = BotoDataKeys(make, broker.url, srv.REGION)
        plaintext, blob = source.generate_data_key(ALIAS, context)
        assert len(plaintext) == 64
        back = broker.client("kms").decrypt(CiphertextBlob=blob, EncryptionContext=context)
        assert back["Plaintext"] == plaintext
        assert source.client().meta.region_name == srv.REGION
