"""The client's data channel against a fake broker+agent peer (tests/client/fakepeer.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from fakepeer import FakePeer, FakeSession
from harness.client import AWS_ENV, PipeClient, wait_for

from hatchway.protocol import PayloadType, parse_handshake_response


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)


Script = Callable[[FakePeer, FakeSession, PipeClient], Awaitable[None]]


def run(
    script: Script, configure: Callable[[FakePeer], None] | None = None
) -> tuple[int, FakePeer, FakeSession, PipeClient]:
    async def main() -> tuple[int, FakePeer, FakeSession, PipeClient]:
        peer = FakePeer()
        if configure is not None:
            configure(peer)
        await peer.start()
        response = peer.new_session()
        s = peer.sessions[response["SessionId"]]
        client = PipeClient(response, peer.url)
        try:
            task = asyncio.create_task(client.session.run())
            await script(peer, s, client)
            code = await asyncio.wait_for(task, 20)
        finally:
            client.close()
            await peer.stop()
        return code, peer, s, client

    return asyncio.run(main())


async def typed(client: PipeClient, s: FakeSession, data: bytes) -> None:
    """Type ``data`` as one read and wait until the peer has it."""
    before = len(s.input)
    client.type(data)
    await wait_for(lambda: len(s.input) >= before + len(data))


def test_shell_round_trip_and_channel_closed() -> None:
    async def script(peer: FakePeer, s: FakeSession, client: PipeClient) -> None:
        await wait_for(lambda: s.sizes != [])
        await typed(client, s, b"ls -l\n")
        await typed(client, s, b"\xff\x00binary")
        client.type(b"\n")  # a lone newline keystroke goes out as \r (the plugin's quirk)
        await wait_for(lambda: s.input.endswith(b"\r"))
        client.type(b"exit\r")

    code, peer, s, client = run(script)
    sid = s.session_id
    assert code == 0
    out = client.output
    assert out.startswith(f"\nStarting session with SessionId: {sid}\n".encode())
    assert out.endswith(f"\n\nExiting session with sessionId: {sid}.\n\n".encode())
    assert b"$ ls -l\n\xff\x00binary\rexit\r" in out  # echo, byte for byte
    assert bytes(s.input) == b"ls -l\n\xff\x00binary\rexit\r"
    # the first text frame
    (opened,) = s.open_frames
    assert opened["MessageSchemaVersion"] == "1.0"
    assert opened["ClientVersion"] == "1.2.764.0"
    uuid.UUID(opened["ClientId"])
    uuid.UUID(opened["RequestId"])
    # Size first (no TTY: the plugin's 300x100 fallback), then keystrokes, seq 0, 1, 2...
    assert s.payloads[0][1:] == (PayloadType.SIZE, b'{"cols":300,"rows":100}')
    assert [seq for seq, _, _ in s.payloads] == list(range(len(s.payloads)))
    # signed upgrade: SigV4 for ssmmessages in the region
    auth = s.upgrade_headers[0]["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIATESTCLIENT000001/")
    assert "/us-east-1/ssmmessages/aws4_request" in auth
    assert not s.terminated  # channel_closed: no TerminateSession
    assert all(op != "TerminateSession" for op, _ in peer.calls)


def test_channel_closed_with_output() -> None:
    async def script(peer: FakePeer, s: FakeSession, client: PipeClient) -> None:
        await wait_for(lambda: s.sizes != [])
        client.type(b"bye Session idle timeout reached\r")

    code, _, s, client = run(script)
    assert code == 0
    expected = f"\n\nSessionId: {s.session_id} : Session idle timeout reached\n\n"
    assert client.output.endswith(expected.encode())


def test_reconnect_resumes_and_splices_the_stream() -> None:
    async def script(peer: FakePeer, s: FakeSession, client: PipeClient) -> None:
        await wait_for(lambda: s.sizes != [])
        await typed(client, s, b"one\r")
        client.type(b"drop\r")  # the peer loses this frame and the connection
        await wait_for(lambda: s.connections == 2 and s.input.endswith(b"drop\r"))
        await typed(client, s, b"two\r")
        await wait_for(lambda: b"[while away]" in client.output)
        client.type(b"exit\r")

    code, peer, s, client = run(script)
    assert code == 0
    assert s.resumed == 1
    assert [op for op, _ in peer.calls] == ["ResumeSession"]
    assert s.connections == 2
    # nothing lost, nothing repeated, sequence numbers continue across the reconnect
    assert bytes(s.input) == b"one\rdrop\rtwo\rexit\r"
    assert [seq for seq, _, _ in s.payloads] == list(range(len(s.payloads)))
    assert client.output.count(b"[while away]") == 1
    assert client.output.count(b"two\r") == 1
    # the second open frame used the ResumeSession token, same ClientId
    assert len(s.open_frames) == 2
    assert s.open_frames[0]["ClientId"] == s.open_frames[1]["ClientId"]
    assert s.open_frames[0]["TokenValue"] != s.open_frames[1]["TokenValue"]


def test_resume_without_token_means_timed_out() -> None:
    async def script(peer: FakePeer, s: FakeSession, client: PipeClient) -> None:
        await wait_for(lambda: s.sizes != [])
        peer.resume_token = False
        client.type(b"drop\r")

    code, _, s, client = run(script)
    assert code == 0
    assert client.output.endswith(f"Session: {s.session_id} timed out.\n".encode())


def test_eof_on_piped_stdin_drains_then_terminates() -> None:
    async def script(peer: FakePeer, s: FakeSession, client: PipeClient) -> None:
        client.type(b"echo hello\r")
        client.close_stdin()

    code, peer, s, client = run(script)
    assert code == 0
    assert bytes(s.input) == b"echo hello\r"
    assert client.output.count(b"echo hello\r") == 1  # the echo arrived before we left
    assert s.terminated
    assert ("TerminateSession", {"SessionId": s.session_id}) in peer.calls
    assert client.output.endswith(f"Exiting session with sessionId: {s.session_id}.\n\n".encode())


def test_handshake_then_shell() -> None:
    def configure(peer: FakePeer) -> None:
        peer.handshake = "InteractiveCommands"

    async def script(peer: FakePeer, s: FakeSession, client: PipeClient) -> None:
        await wait_for(lambda: s.handshake_done and s.sizes != [])
        client.type(b"exit\r")

    code, _, s, client = run(script, configure)
    assert code == 0
    assert s.handshake_response is not None
    response = parse_handshake_response(s.handshake_response)
    assert response.client_version == "1.2.764.0"
    assert [(a.action_type, a.status) for a in response.actions] == [("SessionType", 1)]
    # the response is seq 0, the Size comes after HandshakeComplete
    assert [t for _, t, _ in s.payloads][:2] == [PayloadType.HANDSHAKE_RESPONSE, PayloadType.SIZE]
    assert b"Hello from fake\n" in client.output


def test_unsupported_session_type_is_refused() -> None:
    def configure(peer: FakePeer) -> None:
        peer.handshake = "Telnet_Stream"  # Port is supported now

    async def script(peer: FakePeer, s: FakeSession, client: PipeClient) -> None:
        await wait_for(lambda: s.handshake_done)

    code, _, s, client = run(script, configure)
    assert code == 1
    assert s.handshake_response is not None
    (action,) = parse_handshake_response(s.handshake_response).actions
    assert action.status == 2
    assert b"Session type Telnet_Stream is not supported" in client.output


def test_presigned_url_is_not_signed() -> None:
    async def script(peer: FakePeer, s: FakeSession, client: PipeClient) -> None:
        await wait_for(lambda: s.sizes != [])
        client.type(b"exit\r")

    async def main() -> FakeSession:
        peer = FakePeer()
        await peer.start()
        response = peer.new_session()
        response["StreamUrl"] += "&X-Amz-Signature=abc&X-Amz-Credential=x"
        s = peer.sessions[response["SessionId"]]
        client = PipeClient(response, peer.url)
        try:
            task = asyncio.create_task(client.session.run())
            await script(peer, s, client)
            assert await asyncio.wait_for(task, 20) == 0
        finally:
            client.close()
            await peer.stop()
        return s

    s = asyncio.run(main())
    assert "Authorization" not in s.upgrade_headers[0]


def test_rejected_upgrade_is_reported() -> None:
    def configure(peer: FakePeer) -> None:
        peer.reject_upgrade = True

    async def script(peer: FakePeer, s: FakeSession, client: PipeClient) -> None:
        return None

    code, _, _, client = run(script, configure)
    assert code == 1
    assert b"Cannot perform start session: 403" in client.output
