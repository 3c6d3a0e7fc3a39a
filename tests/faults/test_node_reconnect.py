"""Issue 11, item 1: a network blip between the broker and both of its peers loses nothing.

One :class:`TcpProxy` stands between the broker and everything else: the agent's control
channel and data channels (``--endpoint`` and the broker's ``--public-url`` name the proxy),
the client's API calls and data channel. ``cut()`` resets every connection at once, so the
client and the node both lose the session's data channel together; each must reconnect
(ResumeSession / CreateDataChannel) and re-send what was not acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from faulthelp import (
    PipeClient,
    admin_env,
    gate_dir,
    numbered_lines,
    port_of,
    session_status,
    srv,
    wait_for,
    wait_until,
)
from tcpproxy import TcpProxy

from hatchway.client.session import Backoff


class Stack:
    def __init__(self, broker: Any, proxy: TcpProxy, agent: Any) -> None:
        self.broker, self.proxy, self.agent = broker, proxy, agent
        self.url = f"http://127.0.0.1:{proxy.port}"

    def ssm(self) -> Any:
        """SSM, once the node is Online again (an earlier cut dropped its control channel)."""
        assert srv.wait_ping(self.broker, self.agent.instance_id, "Online", 30)
        return self.broker.client("ssm")


def _stack(tmp: Any, *broker_args: str) -> Iterator[Stack]:
    proxy = TcpProxy("127.0.0.1", 1).start()
    broker = srv.start_broker(
        tmp.mktemp("fault-broker") / "data",
        "--public-url",
        f"http://127.0.0.1:{proxy.port}",
        *broker_args,
    )
    proxy.retarget("127.0.0.1", port_of(broker.url))
    via = srv.Broker(f"http://127.0.0.1:{proxy.port}", broker.data_dir, broker.proc, broker.log)
    agent = srv.start_agent(via, tmp.mktemp("fault-node") / "state")
    try:
        yield Stack(broker, proxy, agent)
    finally:
        agent.stop()
        srv.stop_broker(broker)
        proxy.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from _stack(tmp_path_factory)


@pytest.fixture(scope="module")
def short_window(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from _stack(tmp_path_factory, "--resume-window", "2")


@pytest.fixture(autouse=True)
def _admin(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in admin_env().items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)


def test_command_output_survives_a_cut_of_both_sides(stack: Stack) -> None:
    """Numbered lines, half printed before the cut and half while both sides are away: each
    arrives exactly once, then the exit code; the session ends Terminated, not Failed."""
    gate = gate_dir() / "go"
    script = (
        "for i in $(seq 1 300); do echo n-$i; done; "
        f"while [ ! -e {gate} ]; do sleep 0.05; done; "
        "for i in $(seq 301 3000); do echo n-$i; done; exit 7"
    )
    response = stack.ssm().start_session(
        Target=stack.agent.instance_id,
        DocumentName="AWS-StartNonInteractiveCommand",
        Parameters={"command": [script]},
    )
    sid = response["SessionId"]
    cuts_before = stack.proxy.cuts

    async def go() -> tuple[int, bytes, int]:
        client = PipeClient(response, stack.url, backoff=Backoff(attempts=20, cap=1.0))
        task = asyncio.create_task(client.session.run())
        try:
            await wait_for(lambda: b"n-300\n" in client.output.replace(b"\r", b""), 30)
            await asyncio.to_thread(stack.proxy.cut)  # both data channels drop together
            gate.touch()  # the rest is printed while neither side is connected
            code = await asyncio.wait_for(task, 60)
        finally:
            client.close()
        return code, client.output, client.session.connections

    code, out, connections = asyncio.run(go())
    assert stack.proxy.cuts == cuts_before + 1
    assert connections >= 2  # the client did resume
    assert numbered_lines(out, "n") == list(range(1, 3001))  # each once, in order
    assert code == 7
    wait_until(lambda: session_status(stack.broker, sid)[0] == "Terminated", 30, "Terminated")
    log = stack.broker.log.read_text()
    assert f"data channel {sid}: the node's side dropped" in log


BLOB = hashlib.sha256(b"seed").digest() * (12 * 1024 * 1024 // 32)  # 12 MiB


class _Blob(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BLOB)))
        self.end_headers()
        self.wfile.write(BLOB)

    def log_message(self, *args: object) -> None:
        pass


def test_port_forward_download_survives_a_cut_of_both_sides(stack: Stack) -> None:
    """A download through a port forward, cut in the middle (the reader pauses so that the
    cut falls mid-transfer): the sha256 of what arrives matches."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Blob)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    response = stack.ssm().start_session(
        Target=stack.agent.instance_id,
        DocumentName="AWS-StartPortForwardingSession",
        Parameters={"portNumber": [str(port)], "localPortNumber": ["0"]},
    )
    sid = response["SessionId"]

    async def go() -> bytes:
        client = PipeClient(response, stack.url, backoff=Backoff(attempts=20, cap=1.0))
        task = asyncio.create_task(client.session.run())
        try:
            await wait_for(lambda: b"opened for sessionId" in client.output, 30)
            local = int(client.output.split(b"Port ", 1)[1].split(b" ", 1)[0])

            def download() -> bytes:
                with socket.create_connection(("127.0.0.1", local), 30) as s:
                    s.settimeout(60)
                    s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                    got = bytearray()
                    while len(got) < 2 * 1024 * 1024:  # 2 MiB in, then the cut
                        got += s.recv(65536)
                    stack.proxy.cut()
                    while chunk := s.recv(65536):
                        got += chunk
                    return bytes(got)

            raw = await asyncio.to_thread(download)
        finally:
            client.session.end_locally(0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)
            client.close()
        return raw

    try:
        raw = asyncio.run(go())
    finally:
        server.shutdown()
    body = raw.split(b"\r\n\r\n", 1)[1]
    assert len(body) == len(BLOB)
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(BLOB).hexdigest()
    stack.ssm().terminate_session(SessionId=sid)


def test_session_ends_with_a_reason_when_the_node_stays_away(short_window: Stack) -> None:
    """Nobody can reconnect (the proxy resets every new connection): after the broker's
    ``--resume-window`` (2 s here) the session ends Failed with the reason, not at once."""
    stack = short_window
    response = stack.ssm().start_session(Target=stack.agent.instance_id)
    sid = response["SessionId"]

    async def go() -> None:
        client = PipeClient(response, stack.url)
        task = asyncio.create_task(client.session.run())
        try:
            await wait_for(lambda: client.session.handler is not None, 30)
            client.type(b"echo up-$((20+3))\r")
            await wait_for(lambda: b"up-23" in client.output, 30)
            stack.proxy.refuse()
            stack.proxy.cut()
            await asyncio.wait_for(task, 60)  # the client gives up (its own 5 attempts)
        finally:
            client.close()

    try:
        asyncio.run(go())
        status = session_status(stack.broker, sid)
        assert status[0] in ("Disconnected", "Failed")  # ended by the window, not the drop
        wait_until(lambda: session_status(stack.broker, sid)[0] == "Failed", 30, "Failed")
        details = session_status(stack.broker, sid)[1]
        assert "did not reconnect within 2 seconds" in details
    finally:
        stack.proxy.accept()
    # The node gives the session up too: its window passed, or, back, it learns the session
    # is over (CreateDataChannel answers 4xx); either way it stops the shell.
    wait_until(
        lambda: (
            re.search(
                rf"session {sid}: (cannot resume|not reconnected)", stack.agent.log.read_text()
            )
            is not None
        ),
        30,
        "the node gave the session up",
    )
    srv.wait_ping(stack.broker, stack.agent.instance_id, "Online", 30)


def test_create_data_channel_needs_the_sessions_node(stack: Stack) -> None:
    """CreateDataChannel (``POST /v1/data-channel/<sid>``) answers only the session's node,
    with AWS's 201 and XML body; anyone else gets AWS's JSON error."""
    import urllib.error
    import urllib.request

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    response = stack.ssm().start_session(Target=stack.agent.instance_id)
    sid = response["SessionId"]
    url = f"{stack.broker.url}/v1/data-channel/{sid}"

    def post(key: str, secret: str) -> tuple[int, str]:
        req = AWSRequest("POST", url, data=b"{}", headers={"Content-Type": "application/json"})
        SigV4Auth(Credentials(key, secret), "ssmmessages", srv.REGION).add_auth(req)
        r = urllib.request.Request(url, data=b"{}", headers=dict(req.headers), method="POST")
        try:
            with urllib.request.urlopen(r, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    status, body = post(srv.ADMIN_KEY, srv.ADMIN_SECRET)  # an admin, not the node
    assert status == 403 or status == 400, body
    assert "AccessDeniedException" in body
    creds = (stack.agent.state_dir / "credentials").read_text()
    key = creds.split("aws_access_key_id", 1)[1].split("=", 1)[1].split()[0]
    secret = creds.split("aws_secret_access_key", 1)[1].split("=", 1)[1].split()[0]
    status, body = post(key, secret)  # the node, before any client connected: not open yet
    assert status == 400 and "DoesNotExistException" in body, body
    stack.ssm().terminate_session(SessionId=sid)
    status, body = post(key, secret)
    assert status == 400 and "DoesNotExistException" in body, body
    assert os.environ.get("AWS_ACCESS_KEY_ID") == srv.ADMIN_KEY


# -- item 4: reconnection back-off ----------------------------------------------------------


def test_an_agent_that_cannot_reach_the_broker_at_start_retries(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Registration through a proxy that resets every connection: the agent says so and
    tries again (it used to exit 1), then registers and comes Online once the way is open."""
    activation = stack.ssm().create_activation(IamRole="SSMServiceRole")
    with TcpProxy("127.0.0.1", port_of(stack.broker.url)) as down:
        down.refuse()
        state = tmp_path_factory.mktemp("late-node") / "state"
        log = state.parent / "late-node.log"
        env = {k: v for k, v in os.environ.items() if k != "HATCHWAY_ACTIVATION_CODE"}
        env["HATCHWAY_ACTIVATION_CODE"] = activation["ActivationCode"]
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [
                    str(srv.BIN / "hatchway"),
                    "agent",
                    "--endpoint",
                    f"http://127.0.0.1:{down.port}",
                    "--state-dir",
                    str(state),
                    "--activation-id",
                    activation["ActivationId"],
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            wait_until(lambda: "retrying in" in log.read_text(), 30, "a retry")
            assert proc.poll() is None, log.read_text()
            assert "Traceback" not in log.read_text()
            down.accept()
            wait_until(lambda: (state / "registration.json").exists(), 30, "registered")
            iid = json.loads((state / "registration.json").read_text())["instance_id"]
            assert srv.wait_ping(stack.broker, iid, "Online", 30)
        finally:
            proc.terminate()
            proc.wait(10)


def test_the_back_off_is_capped_near_five_seconds() -> None:
    """The control channel's (and registration's) waits between attempts: 1, 2, 4, then at
    most 5 s (it grew to 30 s, which kept nodes ConnectionLost long after the broker was
    back), each shortened by a random jitter of up to 20%."""
    from hatchway.agent.control import backoff_delays

    for _ in range(200):
        delays = backoff_delays()
        seq = [next(delays) for _ in range(12)]
        assert all(0 < d <= 5.0 for d in seq), seq
        assert 0.8 <= seq[0] <= 1.0 and 3.2 <= seq[2] <= 4.0 and seq[-1] >= 4.0, seq
    samples = {round(next(backoff_delays()), 6) for _ in range(50)}
    assert len(samples) > 40  # jittered: nodes cut off together do not return in step
