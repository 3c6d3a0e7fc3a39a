"""Slow clients, floods and trusted proxies (issue 16, items 9 and 17; docs/broker.md, "Limits").

Real brokers (``hatchway server`` subprocesses), real clients: raw sockets bound to loopback
addresses of their own (127.0.0.0/8 is all loopback on Linux, so each test's "attackers" have
addresses distinct from the test's own clients), boto3, and the real agent.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import resource
import selectors
import socket
import struct
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from harness import (
    ADMIN_KEY,
    ADMIN_SECRET,
    BIN,
    REGION,
    Broker,
    start_agent,
    start_broker,
    stop_broker,
    user_with_policy,
)

PROXY_V2 = b"\r\n\r\n\x00\r\nQUIT\n"


@pytest.fixture(scope="module", autouse=True)
def enough_descriptors() -> None:
    """The floods below hold over a thousand sockets in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard or hard == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))


def _port(broker: Broker) -> int:
    return int(broker.url.rsplit(":", 1)[1])


def _connect(broker: Broker, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(30)
    sock.connect(("127.0.0.1", _port(broker)))
    return sock


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the broker sends until it closes the connection (30 s at most)."""
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def _refused(socks: list[socket.socket], wait: float = 20.0) -> int:
    """How many of ``socks`` the broker answered 503 and closed (each looked at until it
    answers or ``wait`` seconds have passed for all; the held ones never answer)."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    refused, deadline = 0, time.monotonic() + wait
    data: dict[socket.socket, bytes] = {}
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            s = ready
            try:
                chunk = s.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionResetError:
                chunk = b""
            data[s] = data.get(s, b"") + chunk
            if not chunk:
                sel.unregister(s)
                if data[s].startswith(b"HTTP/1.1 503"):
                    refused += 1
        if refused and len(sel.get_map()) <= len(socks) - refused:
            # Nothing refused is still open; what is left is held: stop looking soon.
            deadline = min(deadline, time.monotonic() + 1.0)
    sel.close()
    for s in socks:
        s.setblocking(True)
    return refused


def _health(broker: Broker) -> int:
    with urllib.request.urlopen(f"{broker.url}/health", timeout=30) as r:
        return int(r.status)


def _audit(broker: Broker, match: Any, wait: float = 15.0) -> dict[str, Any]:
    """The first audit record for which ``match(record)`` holds (written before the answer)."""
    path = broker.data_dir / "audit.jsonl"
    deadline = time.monotonic() + wait
    while True:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if match(record):
                return record
        if time.monotonic() > deadline:
            raise AssertionError("no such audit record")
        time.sleep(0.1)


def _client(broker: Broker, service: str, key: str, secret: str, headers: dict[str, str]) -> Any:
    """boto3 with extra request headers (what a reverse proxy would add)."""
    client = boto3.client(
        service,
        endpoint_url=broker.url,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}),
    )

    def add(request: Any, **_: Any) -> None:
        for k, v in headers.items():
            request.headers[k] = v

    client.meta.events.register("before-sign.*.*", add)
    return client


def _proxy_header(source: str, tls: bool = False) -> bytes:
    """A PROXY protocol v2 header for a TCP/IPv4 connection from ``source``."""
    body = ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address("127.0.0.1").packed
    body += struct.pack("!HH", 40000, 8080)
    if tls:  # PP2_TYPE_SSL: client flags (0x01: over TLS), verify result
        body += b"\x20" + struct.pack("!H", 5) + b"\x01" + struct.pack("!I", 0)
    return PROXY_V2 + b"\x21\x11" + struct.pack("!H", len(body)) + body


# -- deadlines and throttling ----------------------------------------------------------------


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Short deadlines and a small burst (no trusted proxy)."""
    b = start_broker(
        tmp_path_factory.mktemp("quick") / "data",
        "--header-timeout",
        "1",
        "--body-timeout",
        "1",
        "--keepalive-timeout",
        "1",
        "--throttle-rate",
        "0.001",
        "--throttle-burst",
        "20",
    )
    yield b
    stop_broker(b)


def test_a_request_head_sent_slowly_is_cut_off(quick: Broker) -> None:
    """Slowloris: a head that never ends (it stayed open for aiohttp's hour)."""
    with _connect(quick) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        assert _until_closed(sock).startswith(b"HTTP/1.1 408")
    with _connect(quick) as silent:  # one that never sends a byte
        assert _until_closed(silent).startswith(b"HTTP/1.1 408")


def test_a_body_sent_slowly_is_cut_off(quick: Broker) -> None:
    with _connect(quick) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-amz-json-1.1\r\n"
            b"X-Amz-Target: AmazonSSM.DescribeSessions\r\nContent-Length: 100\r\n\r\n{"
        )
        assert _until_closed(sock).startswith(b"HTTP/1.1 408")


def test_an_idle_kept_alive_connection_is_closed(quick: Broker) -> None:
    with _connect(quick) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1


def test_a_principal_over_its_rate_is_throttled(quick: Broker) -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "ssm:DescribeSessions", "Resource": "*"}],
    }
    key, secret = user_with_policy(quick, "chatty", policy)
    ssm = _client(quick, "ssm", key, secret, {})
    errors: list[ClientError] = []
    for _ in range(25):
        try:
            ssm.describe_sessions(State="Active")
        except ClientError as exc:
            errors.append(exc)
    assert len(errors) >= 5
    err = errors[0].response
    assert err["Error"] == {"Code": "ThrottlingException", "Message": "Rate exceeded"}
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(ClientError) as query:  # IAM speaks Query: "Throttling"
        _client(quick, "iam", key, secret, {}).get_user()
    assert query.value.response["Error"]["Code"] == "Throttling"
    assert query.value.response["Error"]["Message"] == "Rate exceeded"
    assert query.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # Another principal is not affected; the refusals are audited.
    quick.client("ssm").describe_sessions(State="Active")
    _audit(
        quick,
        lambda r: (
            r.get("errorCode") == "ThrottlingException"
            and r["userIdentity"]["arn"].endswith(":user/chatty")
        ),
    )


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(quick: Broker) -> None:
    ssm = _client(
        quick,
        "ssm",
        ADMIN_KEY,
        ADMIN_SECRET,
        {"X-Forwarded-For": "203.0.113.99", "X-Forwarded-Proto": "https"},
    )
    ssm.describe_document(Name="AWS-StartSSHSession")
    record = _audit(quick, lambda r: r["eventName"] == "DescribeDocument")
    assert record["sourceIPAddress"] == "127.0.0.1"


# -- connection caps and trusted proxies ------------------------------------------------------


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Default limits; this test process (127.0.0.1) is a trusted proxy."""
    b = start_broker(tmp_path_factory.mktemp("capped") / "data", "--trusted-proxy", "127.0.0.1/32")
    yield b
    stop_broker(b)


def test_health_answers_while_a_thousand_half_open_connections_are_held(capped: Broker) -> None:
    """1,000 half-open connections from ten addresses (100 each: the per-address cap) are
    held; the 101st of an address makes its oldest one close (503); /health answers."""
    held: list[socket.socket] = []
    extra: list[socket.socket] = []
    try:
        for i in range(10):
            source = f"127.0.0.{20 + i}"
            for _ in range(100):
                held.append(_connect(capped, source))
                held[-1].sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            extra.append(_connect(capped, source))
        assert _health(capped) == 200
        oldest = held[::100]
        assert _refused(oldest) == 10
        assert _refused(held[1:50] + extra, wait=0.5) == 0  # the others are held
        assert _health(capped) == 200
    finally:
        for s in held + extra:
            s.close()


def test_the_per_address_cap_counts_the_address_a_proxy_forwards(capped: Broker) -> None:
    """PROXY protocol v2 from a trusted proxy: the cap applies to the client it names, not to
    the proxy; its address is the one audited."""
    held: list[socket.socket] = []
    try:
        for _ in range(100):
            held.append(_connect(capped))
            held[-1].sendall(_proxy_header("198.51.100.7"))
        held.append(_connect(capped))
        held[-1].sendall(_proxy_header("198.51.100.7"))
        assert _refused(held[:1]) == 1  # the client's oldest made way
        assert _refused(held[1:], wait=0.5) == 0
        with _connect(capped) as other:  # another client through the same proxy
            other.sendall(
                _proxy_header("198.51.100.8")
                + b"POST /hatchway/v1/register HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: 2\r\n\r\n{}"
            )
            assert _until_closed(other).startswith(b"HTTP/1.1 400")
        record = _audit(
            capped,
            lambda r: r["eventName"] == "RegisterManagedInstance" and "errorCode" in r,
        )
        assert record["sourceIPAddress"] == "198.51.100.8"
    finally:
        for s in held:
            s.close()


def test_forwarded_for_feeds_source_ip_and_secure_transport(capped: Broker) -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "ssm:DescribeSessions",
                "Resource": "*",
                "Condition": {
                    "IpAddress": {"aws:SourceIp": "203.0.113.0/24"},
                    "Bool": {"aws:SecureTransport": "true"},
                },
            }
        ],
    }
    key, secret = user_with_policy(capped, "behind-proxy", policy)

    def call(headers: dict[str, str]) -> str:
        try:
            _client(capped, "ssm", key, secret, headers).describe_sessions(State="Active")
        except ClientError as exc:
            return str(exc.response["Error"]["Code"])
        return "ok"

    https = {"X-Forwarded-Proto": "https"}
    assert call({"X-Forwarded-For": "203.0.113.5", **https}) == "ok"
    # What the client wrote itself (left of the last untrusted hop) is not believed.
    assert (
        call({"X-Forwarded-For": "203.0.113.5, 198.51.100.1", **https}) == "AccessDeniedException"
    )
    assert call({"X-Forwarded-For": "198.51.100.1, 203.0.113.6", **https}) == "ok"
    assert call({"X-Forwarded-For": "203.0.113.5"}) == "AccessDeniedException"  # not over TLS
    assert call({}) == "AccessDeniedException"  # the proxy's own address
    record = _audit(
        capped,
        lambda r: (
            r["eventName"] == "DescribeSessions"
            and r["userIdentity"]["arn"].endswith("/behind-proxy")
            and r["decision"] == "allowed"
        ),
    )
    assert record["sourceIPAddress"] == "203.0.113.5"


# -- room for the nodes ---------------------------------------------------------------------


def _start_with_descriptors(data_dir: Path, nofile: int, *extra: str) -> Broker:
    """``hatchway server`` under RLIMIT_NOFILE ``nofile`` (soft and hard)."""
    log = data_dir.parent / f"{data_dir.name}.log"
    env = {
        **os.environ,
        "HATCHWAY_ADMIN_ACCESS_KEY_ID": ADMIN_KEY,
        "HATCHWAY_ADMIN_SECRET_ACCESS_KEY": ADMIN_SECRET,
    }
    argv = [str(BIN / "hatchway"), "server", "--listen", "127.0.0.1:0"]
    argv += ["--data-dir", str(data_dir), "--region", REGION, *extra]
    proc = subprocess.Popen(
        argv,
        stdout=open(log, "w"),  # noqa: SIM115 - lives as long as the broker
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = re.search(r"listening on (http://[\d.]+:\d+)", log.read_text())
        if m:
            return Broker(m.group(1), data_dir, proc, log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"broker did not start:\n{log.read_text()}")


def test_a_flood_leaves_room_for_nodes_and_stream_urls_follow_the_proxy(
    tmp_path: Path,
) -> None:
    """300 half-open connections (from 20 addresses, under the per-address cap) against a
    broker with 256 descriptors used to exhaust them: nodes could not connect. The total cap
    stays below the limit, the oldest idle connections make way, and the agent registers and
    opens its control channel. The StreamUrl follows a trusted proxy's X-Forwarded-Proto.
    Data-channel upgrades waiting for their token count against the per-address cap."""
    broker = _start_with_descriptors(
        tmp_path / "data",
        256,
        "--trusted-proxy",
        "127.0.0.1/32",
        "--max-connections-per-address",
        "20",
    )
    flood: list[socket.socket] = []
    waiting: list[socket.socket] = []
    agent = None
    try:
        for i in range(300):
            flood.append(_connect(broker, f"127.0.0.{40 + i % 20}"))
            flood[-1].sendall(b"G")
        agent = start_agent(broker, tmp_path / "agent")
        assert _health(broker) == 200
        urls = {}
        for proto in ("https", "http"):
            ssm = _client(broker, "ssm", ADMIN_KEY, ADMIN_SECRET, {"X-Forwarded-Proto": proto})
            started = ssm.start_session(Target=agent.instance_id)
            urls[proto] = started["StreamUrl"]
        assert urls["https"].startswith("wss://127.0.0.1:")
        assert urls["http"].startswith("ws://127.0.0.1:")
        # A data-channel upgrade that never sends its first message (the token) holds a place
        # of its address like any request: it is not a channel yet.
        path = urls["http"].split(":", 2)[2].split("/", 1)[1]
        upgrade = (
            f"GET /{path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        for _ in range(20):
            waiting.append(_connect(broker, "127.0.0.70"))
            waiting[-1].sendall(upgrade)
            assert waiting[-1].recv(12) == b"HTTP/1.1 101"
        waiting.append(_connect(broker, "127.0.0.70"))
        assert _refused(waiting[-1:]) == 1
    finally:
        for s in flood + waiting:
            s.close()
        if agent is not None:
            agent.stop()
        stop_broker(broker)


# -- item 17: idle sockets in --workers mode ------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_one_byte_connections_do_not_keep_the_primary_busy(tmp_path: Path) -> None:
    """Connections that sent one byte were looked at every 10 ms each: 2,000 of them cost the
    primary 0.6-0.8 s of CPU every 3 s here (6,000, a full core). The primary now waits for
    them to be readable again: about 0.02 s."""
    broker = start_broker(tmp_path / "data", "--workers", "1")
    socks: list[socket.socket] = []
    try:
        for i in range(2000):  # from 20 addresses: 100 each, the per-address cap
            socks.append(_connect(broker, f"127.0.0.{60 + i % 20}"))
            socks[-1].sendall(b"P")
        assert _health(broker) == 200
        before = _cpu_seconds(broker.proc.pid)
        start = time.monotonic()
        while time.monotonic() - start < 3.0:  # a measuring window, not a wait for anything
            time.sleep(0.25)
        used = _cpu_seconds(broker.proc.pid) - before
        assert used < 0.2, f"the primary used {used:.2f} s of CPU in 3 s"
        assert _refused(socks[:20], wait=0.5) == 0  # still held, not dropped
    finally:
        for s in socks:
            s.close()
        stop_broker(broker)


# -- the pieces, directly ---------------------------------------------------------------------


def test_forwarded_for_is_read_hop_by_hop_through_trusted_proxies_only() -> None:
    from hatchway.server.front.limits import Client, TrustedProxies

    proxies = TrustedProxies(["10.0.0.0/8", "2001:db8::/32"])
    # Two trusted hops (10.1.1.1 appended by the inner one): the client is the next one left.
    xff = "6.6.6.6, 203.0.113.5, 10.1.1.1"
    assert proxies.client("10.2.2.2", False, xff, "https, http") == Client("203.0.113.5", True)
    assert proxies.client("10.2.2.2", False, xff, "http") == Client("203.0.113.5", False)
    assert proxies.client("::ffff:10.2.2.2", False, "198.51.100.1", None).address == (
        "198.51.100.1"
    )
    # Garbage stops the walk at the last valid hop; an untrusted peer's headers count for nothing.
    assert proxies.client("10.2.2.2", False, "bogus, 10.1.1.1", None).address == "10.1.1.1"
    assert proxies.client("192.0.2.1", False, "203.0.113.5", "https") == Client("192.0.2.1", False)
    assert TrustedProxies([]).client("10.2.2.2", True, "203.0.113.5", "http") == Client(
        "10.2.2.2", True
    )


def test_proxy_v2_headers_are_parsed_or_refused() -> None:
    from hatchway.server.front.limits import PROXY_V2_SIGNATURE, parse_proxy_v2

    v4 = _proxy_header("198.51.100.7", tls=True)
    assert parse_proxy_v2(v4 + b"GET") == (len(v4), "198.51.100.7", True)
    assert parse_proxy_v2(v4[:20]) is None  # more bytes needed
    six = ipaddress.IPv6Address("2001:db8::7").packed + bytes(16) + b"\x00\x01\x00\x02"
    v6 = PROXY_V2_SIGNATURE + b"\x21\x21" + struct.pack("!H", len(six)) + six
    assert parse_proxy_v2(v6) == (len(v6), "2001:db8::7", False)
    local = PROXY_V2_SIGNATURE + b"\x20\x00\x00\x00"
    assert parse_proxy_v2(local) == (16, None, False)
    for bad in (b"\x11\x11", b"\x23\x11"):  # version 1; command 3
        with pytest.raises(ValueError):
            parse_proxy_v2(PROXY_V2_SIGNATURE + bad + b"\x00\x0c" + bytes(12))
    with pytest.raises(ValueError):  # addresses shorter than the family needs
        parse_proxy_v2(PROXY_V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4))
    with pytest.raises(ValueError):  # longer than any real header
        parse_proxy_v2(PROXY_V2_SIGNATURE + b"\x21\x11\xff\xff")


def test_the_token_bucket_refills_at_its_rate() -> None:
    from hatchway.server.runtime.throttle import Throttle

    now = [0.0]
    bucket = Throttle(2.0, 3, clock=lambda: now[0])
    assert [bucket.allow("a") for _ in range(4)] == [True, True, True, False]
    assert bucket.allow("b")  # per principal
    now[0] = 0.5  # one token back
    assert bucket.allow("a") and not bucket.allow("a")
    now[0] = 100.0  # never more than the burst
    assert [bucket.allow("a") for _ in range(4)] == [True, True, True, False]
    assert all(Throttle(0, 1).allow("a") for _ in range(100))  # rate 0: off


def test_refused_and_evicted_connections_leave_the_counts_as_they_were() -> None:
    from hatchway.server.front.limits import ConnectionGuard, Held
    from hatchway.server.runtime.state import ServerConfig

    class Conn(Held):
        evicted = False

        def evict(self) -> None:
            self.evicted = True

    guard = ConnectionGuard(
        ServerConfig(max_connections=20, node_reserve=2, max_connections_per_address=3)
    )
    first = [Conn() for _ in range(3)]
    assert all(guard.admit(c, "192.0.2.1") for c in first)
    for c in first:
        guard.busy(c)
    refused = Conn()
    assert not guard.admit(refused, "192.0.2.1")  # over the per-address cap, all busy
    guard.release(refused)  # its connection_lost
    assert guard.open == 3 and guard.per_address["192.0.2.1"] == 3
    for c in first:
        guard.rested(c)
    guard.promote(first[0])  # a control channel: not counted per address, never evicted
    guard.busy(first[0])
    others = [Conn() for _ in range(16)]
    assert all(guard.admit(c, f"198.51.100.{i}") for i, c in enumerate(others))
    assert guard.pools == {"general": 18, "node": 1}
    # The general pool is full: its oldest idle connection makes way (not the reserve).
    a = Conn()
    assert guard.admit(a, "203.0.113.1") and a.pool == "general"
    assert first[1].evicted and not first[0].evicted
    guard.release(first[1])  # its connection_lost, later
    assert guard.per_address["192.0.2.1"] == 1
    # Every general connection busy: the reserve, then its own idle ones, then refusal.
    for c in [first[2], *others, a]:
        guard.busy(c)
    b, c, d = Conn(), Conn(), Conn()
    assert guard.admit(b, "203.0.113.2") and b.pool == "reserve"
    assert guard.admit(c, "203.0.113.3") and c.pool == "reserve" and b.evicted
    guard.release(b)
    guard.busy(c)
    assert not guard.admit(d, "203.0.113.4")
    guard.release(d)
    assert guard.open == 20 and "203.0.113.4" not in guard.per_address
    for x in [*first, *others, a, c]:
        guard.release(x)
    assert guard.open == 0 and not guard.per_address and not guard.idle and not guard.idle_at


def test_at_its_cap_an_address_s_oldest_idle_connection_makes_way() -> None:
    from hatchway.server.front.limits import ConnectionGuard, Held
    from hatchway.server.runtime.state import ServerConfig

    class Conn(Held):
        evicted = False

        def evict(self) -> None:
            self.evicted = True

    guard = ConnectionGuard(ServerConfig(max_connections=50, max_connections_per_address=2))
    x, y, z, w = Conn(), Conn(), Conn(), Conn()
    assert guard.admit(x, "192.0.2.1") and guard.admit(y, "192.0.2.1")
    assert guard.admit(Conn(), "192.0.2.2")  # another address's idle one is not touched
    assert guard.admit(z, "192.0.2.1") and x.evicted and not y.evicted
    guard.release(x)
    guard.busy(y)
    guard.busy(z)
    assert not guard.admit(w, "192.0.2.1")  # every one of the address's is busy
    guard.release(w)
    assert guard.per_address == {"192.0.2.1": 2, "192.0.2.2": 1} and guard.open == 3
