"""Port sessions end to end: the real ``aws ssm start-session`` with our plugin on PATH, a real
broker and agent, real TCP servers on the node side, and OpenSSH through ``ProxyCommand``.

Covered: 20 parallel HTTP downloads through one mux session (every byte checked by hash),
forwarding to a remote host (127.0.0.2), the refused addresses (instance metadata and the
agent's own deny list), a refused destination port that starts listening later in the same
session (and the connection records the broker keeps for it), Ctrl-C, ssh, basic
(unmultiplexed) forwarding, a slow local reader, and a dropped websocket in the middle of
transfers both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from harness.client import PipeClient, clean_aws_env, plugin_on_path, wait_for, wait_sync
from test_client_broker import srv

import hatchway.client.port as client_port

BIN = Path(sys.executable).parent
TARGET = "i-0feedc0ffee5a1e00"
DENIED_EXTRA = "127.0.0.3"


# --- node-side servers -------------------------------------------------------------------------


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


class BlobHandler(BaseHTTPRequestHandler):
    """``GET /<seed>/<size>`` → ``size`` pseudo-random bytes; ``/who`` → the server's address."""

    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        if self.path == "/who":
            body = str(self.server.server_address[0]).encode()  # type: ignore[index]
        else:
            seed, size = (int(x) for x in self.path.strip("/").split("/"))
            body = blob(seed, size)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def http_server(host: str = "127.0.0.1", port: int = 0) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer((host, port), BlobHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        conn.close()


# --- the stack and the CLI ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    b = srv.start_broker(tmp_path_factory.mktemp("port-broker") / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HATCHWAY_DENIED_PORT_FORWARDING_IPS", DENIED_EXTRA)  # the agent's setting
        a = srv.start_agent(b, tmp_path_factory.mktemp("port-node") / "state", TARGET)
    yield b
    a.stop()
    srv.stop_broker(b)


def admin_env(path: str) -> dict[str, str]:
    return clean_aws_env(
        {
            "AWS_ACCESS_KEY_ID": srv.ADMIN_KEY,
            "AWS_SECRET_ACCESS_KEY": srv.ADMIN_SECRET,
            "PATH": path,
        }
    )


class Cli:
    """``aws ssm start-session`` running in its own process group (as a terminal runs it)."""

    def __init__(self, broker: Any, plugin_path: str, document: str, parameters: str) -> None:
        self.proc = subprocess.Popen(
            [
                str(BIN / "aws"),
                "ssm",
                "start-session",
                "--target",
                TARGET,
                "--document-name",
                document,
                "--parameters",
                parameters,
                "--endpoint-url",
                broker.url,
            ],
            env=admin_env(plugin_path),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.out = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            self.out += chunk

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace")

    def wait_text(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.text)
            if m:
                return m
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not printed; output so far:\n{self.text}")
            time.sleep(0.02)

    def local_port(self) -> int:
        return int(self.wait_text(r"Port (\d+) opened for sessionId ")[1])

    @property
    def session_id(self) -> str:
        return self.wait_text(r"Starting session with SessionId: (\S+)")[1]

    def interrupt(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def cli_factory(stack: Any, tmp_path: Path) -> Iterator[Any]:
    path = plugin_on_path(tmp_path)
    made: list[Cli] = []

    def make(document: str, parameters: str) -> Cli:
        c = Cli(stack, path, document, parameters)
        made.append(c)
        return c

    yield make
    for c in made:
        c.kill()


def session_status(broker: Any, sid: str) -> str:
    ssm = broker.client("ssm")
    for state in ("Active", "History"):
        found = ssm.describe_sessions(State=state, Filters=[{"key": "SessionId", "value": sid}])
        if found["Sessions"]:
            return str(found["Sessions"][0]["Status"])
    return "missing"


def wait_status(broker: Any, sid: str, wanted: str) -> None:
    wait_sync(lambda: session_status(broker, sid) == wanted, 30)


# --- mux forwarding through the AWS CLI ------------------------------------------------------


def test_twenty_parallel_downloads_through_one_session(stack: Any, cli_factory: Any) -> None:
    with http_server() as web:
        cli = cli_factory(
            "AWS-StartPortForwardingSession", f"portNumber={web.server_port},localPortNumber=0"
        )
        port = cli.local_port()
        cli.wait_text("Waiting for connections...")
        sizes = [1_000_000 + 97_531 * i for i in range(20)]  # 1–2.9 MB each, 38 MB in all
        with ThreadPoolExecutor(20) as pool:
            bodies = list(pool.map(lambda i: http_get(port, f"/{i}/{sizes[i]}"), range(20)))
        for i, body in enumerate(bodies):
            assert len(body) == sizes[i]
            assert hashlib.sha256(body).digest() == hashlib.sha256(blob(i, sizes[i])).digest()
        sid = cli.session_id
        assert f"Connection accepted for session [{sid}]" in cli.text
        assert session_status(stack, sid) == "Connected"
        cli.interrupt()  # Ctrl-C: Flag TerminateSession, then the plugin exits
        assert cli.wait() == 0
    assert "Terminate signal received, exiting." in cli.text
    assert f"Exiting session with sessionId: {sid}." in cli.text
    wait_status(stack, sid, "Terminated")


def test_remote_host_forwarding(stack: Any, cli_factory: Any) -> None:
    port = free_port()
    with http_server("127.0.0.2", port), http_server("127.0.0.1", port):
        cli = cli_factory(
            "AWS-StartPortForwardingSessionToRemoteHost",
            f"host=127.0.0.2,portNumber={port},localPortNumber=0",
        )
        local = cli.local_port()
        assert http_get(local, "/who") == b"127.0.0.2"  # not the localhost server on that port
        assert http_get(local, "/7/300000") == blob(7, 300_000)
        cli.interrupt()
        assert cli.wait() == 0


@pytest.mark.parametrize("host", ["169.254.169.254", DENIED_EXTRA])
def test_refused_remote_hosts(stack: Any, cli_factory: Any, host: str) -> None:
    cli = cli_factory("AWS-StartPortForwardingSessionToRemoteHost", f"host={host},portNumber=80")
    sid = cli.session_id
    assert cli.wait() == 0  # the plugin prints the reason and exits, as AWS's does
    assert f"SessionId: {sid} : Forwarding to IP address {host} is forbidden." in cli.text
    wait_status(stack, sid, "Failed")


def test_refused_port_then_served_in_the_same_session(stack: Any, cli_factory: Any) -> None:
    port = free_port()  # nothing listens there yet
    cli = cli_factory("AWS-StartPortForwardingSession", f"portNumber={port}")
    local = cli.local_port()
    with socket.create_connection(("127.0.0.1", local), timeout=60) as s:
        s.sendall(b"GET /1/10 HTTP/1.0\r\n\r\n")
        assert s.recv(100) == b""  # the agent could not connect: we get EOF
    cli.wait_text("Connection to destination port failed, check SSM Agent logs.")
    with http_server("127.0.0.1", port):
        assert http_get(local, "/3/123456") == blob(3, 123_456)
        assert http_get(local, "/4/5") == blob(4, 5)
    sid = cli.session_id
    assert session_status(stack, sid) == "Connected"
    cli.interrupt()
    assert cli.wait() == 0
    wait_status(stack, sid, "Terminated")
    # The broker kept the session's connections (AWS logs nothing for port sessions): who,
    # from where, to which host and port, and the bytes each way.
    records = connection_records(stack, sid)
    refused = [r for r in records if r["event"] == "refused"]
    assert len(refused) == 1 and refused[0]["port"] == port
    closed = [r for r in records if r["event"] == "close"]
    assert len(closed) == 2
    assert {r["port"] for r in records} == {port}
    assert all(r["who"] == "arn:aws:iam::123456789012:user/admin" for r in records)
    assert all(r["from"] == "127.0.0.1" for r in records)
    # To the destination went the two requests; back came the two responses, bodies included.
    assert all(r["bytes_out"] >= len("GET /4/5 HTTP/1.0\r\n\r\n") for r in closed)
    small, big = sorted(r["bytes_in"] for r in closed)
    assert small > 5 and big > 123_456 and big - small > 123_000
    assert [r["event"] for r in records].count("open") == 2


def connection_records(broker: Any, sid: str) -> list[dict[str, Any]]:
    """``hatchway sessions connections`` for ``sid``, read from the broker's store."""
    out = subprocess.run(
        [str(BIN / "hatchway"), "sessions", "connections", sid, "--data-dir", str(broker.data_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_local_port_in_use_ends_the_session(stack: Any, cli_factory: Any) -> None:
    # AWS's plugin hangs until the idle timeout here (aws/session-manager-plugin#141).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cli = cli_factory("AWS-StartPortForwardingSession", f"portNumber=80,localPortNumber={port}")
        sid = cli.session_id
        assert cli.wait() == 255  # the plugin exited 1; the CLI reports a failed plugin so
    assert f"Cannot listen on localhost:{port}: Address already in use" in cli.text
    wait_status(stack, sid, "Terminated")


# --- ssh through ProxyCommand -----------------------------------------------------------------


SSHD = "/usr/sbin/sshd"


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    missing = [tool for tool in (SSHD, "ssh", "ssh-keygen") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: apt-get install openssh-server openssh-client "
            "(.ci/run installs them)"
        )
    d = tmp_path / "sshd"
    d.mkdir()
    for name in ("host_key", "id"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True
        )
    (d / "authorized_keys").write_text((d / "id.pub").read_text())
    port = free_port()
    config = d / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    try:
        wait_sync(lambda: _listening(port) or proc.poll() is not None, 20)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield port, d
    finally:
        proc.terminate()
        proc.wait(10)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_ssh_through_proxycommand(stack: Any, sshd: tuple[int, Path], tmp_path: Path) -> None:
    port, keys = sshd
    data = tmp_path / "data.bin"
    data.write_bytes(blob(11, 3_000_000) + b"\n")  # ends in a lone newline, byte exact
    proxy = (
        f"{BIN / 'aws'} ssm start-session --target %h --document-name AWS-StartSSHSession "
        f"--parameters portNumber=%p --endpoint-url {stack.url}"
    )
    ssh = [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        str(keys / "id"),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        f"ProxyCommand={proxy}",
        "-p",
        str(port),
        f"{os.environ.get('USER', 'root')}@{TARGET}",
    ]
    env = admin_env(plugin_on_path(tmp_path))
    done = subprocess.run(
        [*ssh, "echo hello-$((6*7)); uname -s"], env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"hello-42\nLinux\n"
    done = subprocess.run([*ssh, f"cat {data}"], env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert hashlib.sha256(done.stdout).digest() == hashlib.sha256(data.read_bytes()).digest()
    # Both sessions end (sshd closed the connection, or the plugin saw stdin end).
    ssm = stack.client("ssm")
    wait_sync(
        lambda: (
            not ssm.describe_sessions(State="Active", Filters=[{"key": "Target", "value": TARGET}])[
                "Sessions"
            ]
        ),
        30,
    )


# --- the plugin in-process: basic mode, slow readers, a dropped websocket ------------------------


def _start(broker: Any, document: str, parameters: dict[str, list[str]]) -> dict[str, str]:
    out: dict[str, str] = broker.client("ssm").start_session(
        Target=TARGET, DocumentName=document, Parameters=parameters
    )
    return out


@pytest.fixture
def admin_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in admin_env(os.environ.get("PATH", "")).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)


async def _local_port(client: PipeClient) -> int:
    await wait_for(lambda: re.search(rb"Port (\d+) opened", client.output) is not None, 20)
    m = re.search(rb"Port (\d+) opened", client.output)
    assert m is not None
    return int(m[1])


async def _fetch(port: int, path: str, *, pause: float = 0.0) -> bytes:
    """GET over a local connection; the body is read by its Content-Length (in basic mode
    nothing tells the local client that the destination closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    m = re.search(rb"Content-Length: (\d+)", head)
    assert m is not None
    if pause:
        await asyncio.sleep(pause)  # a reader that stops reading for a while
    body = await reader.readexactly(int(m[1]))
    writer.close()
    await writer.wait_closed()
    return body


def test_basic_forwarding_when_either_end_is_old(
    stack: Any, admin_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An agent at or below 3.0.196.0 (as our client sees it) and a client below 1.1.70 (as
    # the agent sees it): one connection at a time, raw bytes, DisconnectToPort in between.
    monkeypatch.setattr(client_port, "MUX_AFTER_AGENT", "9.9.9.9")
    with http_server() as web:
        response = _start(
            stack, "AWS-StartPortForwardingSession", {"portNumber": [str(web.server_port)]}
        )

        async def go() -> tuple[list[bytes], bytes]:
            client = PipeClient(response, stack.url)
            client.session.handshake.client_version = "1.1.0.0"
            task = asyncio.create_task(client.session.run())
            try:
                port = await _local_port(client)
                bodies = [await _fetch(port, f"/{i}/{200_000 + i}") for i in range(3)]
                client.session.end_locally(0)
                await asyncio.wait_for(task, 30)
            finally:
                client.close()
            return bodies, client.output

        bodies, out = asyncio.run(go())
    assert bodies == [blob(i, 200_000 + i) for i in range(3)]
    assert b"Connection accepted for session " in out
    assert b"Waiting for connections" not in out  # basic mode prints only the port line


def test_unix_socket_listener(stack: Any, admin_credentials: None, tmp_path: Path) -> None:
    # AWS-StartPortForwardingSessionToSocket's shape, as an account document.
    content = {
        "schemaVersion": "1.0",
        "sessionType": "Port",
        "parameters": {
            "portNumber": {"type": "String", "default": "80"},
            "localUnixSocket": {"type": "String"},
        },
        "properties": {
            "portNumber": "{{ portNumber }}",
            "type": "LocalPortForwarding",
            "localUnixSocket": "{{ localUnixSocket }}",
            "localConnectionType": "unix",
        },
    }
    stack.client("ssm").create_document(
        Name="Unix-Socket-Forwarding",
        DocumentType="Session",
        Content=json.dumps(content),
    )
    path = tmp_path / "forward.sock"
    with http_server() as web:
        response = _start(
            stack,
            "Unix-Socket-Forwarding",
            {"portNumber": [str(web.server_port)], "localUnixSocket": [str(path)]},
        )

        async def go() -> tuple[bytes, bytes]:
            client = PipeClient(response, stack.url)
            task = asyncio.create_task(client.session.run())
            try:
                await wait_for(lambda: b"Unix socket" in client.output, 20)
                reader, writer = await asyncio.open_unix_connection(str(path))
                writer.write(b"GET /5/70000 HTTP/1.0\r\n\r\n")
                data = await reader.read()
                writer.close()
                client.session.end_locally(0)
                await asyncio.wait_for(task, 30)
            finally:
                client.close()
            return data, client.output

        data, out = asyncio.run(go())
    assert data.endswith(b"\r\n\r\n" + blob(5, 70_000))
    assert f"Unix socket {path} opened for sessionId {response['SessionId']}.".encode() in out
    assert not path.exists()  # removed when the session ended


def test_slow_local_reader_holds_the_agent_back(stack: Any, admin_credentials: None) -> None:
    size = 40_000_000
    with http_server() as web:
        response = _start(
            stack, "AWS-StartPortForwardingSession", {"portNumber": [str(web.server_port)]}
        )

        async def go() -> tuple[bytes, int]:
            client = PipeClient(response, stack.url)
            session = client.session
            held = 0

            async def watch() -> None:
                nonlocal held
                while True:
                    held = max(held, sum(len(f.payload) for f in session.stream._ahead.values()))
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(session.run())
            watcher = asyncio.create_task(watch())
            try:
                port = await _local_port(client)
                body = await _fetch(port, f"/21/{size}", pause=2.0)
                session.end_locally(0)
                await asyncio.wait_for(task, 30)
            finally:
                watcher.cancel()
                client.close()
            return body, held

        body, held = asyncio.run(go())
    assert hashlib.sha256(body).digest() == hashlib.sha256(blob(21, size)).digest()
    # What the client held unacked while its reader slept is bounded by the agent's window.
    assert 0 < held <= 8 * 1024 * 1024 + 256 * 1024


def test_dropped_websocket_mid_transfer_loses_no_byte(stack: Any, admin_credentials: None) -> None:
    up = blob(31, 20_000_000)

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        digest = hashlib.sha256()
        count = 0
        while count < len(up) and (chunk := await reader.read(65536)):
            digest.update(chunk)
            count += len(chunk)
        writer.write(digest.hexdigest().encode() + b"\n")
        await writer.drain()
        writer.close()

    async def go() -> tuple[bytes, bytes, int]:
        server = await asyncio.start_server(sink, "127.0.0.1", 0)
        sink_port = server.sockets[0].getsockname()[1]
        with http_server() as web:
            mux = await asyncio.to_thread(
                _start,
                stack,
                "AWS-StartPortForwardingSession",
                {"portNumber": [str(web.server_port)]},
            )
            raw = await asyncio.to_thread(
                _start, stack, "AWS-StartPortForwardingSession", {"portNumber": [str(sink_port)]}
            )
            down_client = PipeClient(mux, stack.url)
            up_client = PipeClient(raw, stack.url)
            tasks = [
                asyncio.create_task(down_client.session.run()),
                asyncio.create_task(up_client.session.run()),
            ]
            try:
                down_port = await _local_port(down_client)
                up_port = await _local_port(up_client)
                download = asyncio.create_task(_fetch(down_port, f"/32/{30_000_000}"))
                reader, writer = await asyncio.open_connection("127.0.0.1", up_port)

                async def upload() -> bytes:
                    for i in range(0, len(up), 1 << 20):
                        writer.write(up[i : i + (1 << 20)])
                        await writer.drain()
                    return await reader.readline()

                uploading = asyncio.create_task(upload())
                # Mid-transfer, the network drops (no channel_closed): each client resumes.
                await wait_for(lambda: down_client.session.stream.expected_sequence_number > 20)
                await wait_for(lambda: up_client.session.stream.next_sequence_number > 20)
                for client in (down_client, up_client):
                    ws = client.session._ws
                    assert ws is not None
                    await ws.close()
                body = await asyncio.wait_for(download, 120)
                echoed = await asyncio.wait_for(uploading, 120)
                writer.close()
                for client in (down_client, up_client):
                    client.session.end_locally(0)
                await asyncio.wait_for(asyncio.gather(*tasks), 30)
            finally:
                down_client.close()
                up_client.close()
                server.close()
            return body, echoed, down_client.session.connections + up_client.session.connections

    body, echoed, connections = asyncio.run(go())
    assert connections == 4  # each client reconnected once
    assert hashlib.sha256(body).digest() == hashlib.sha256(blob(32, 30_000_000)).digest()
    assert echoed == hashlib.sha256(up).hexdigest().encode() + b"\n"
