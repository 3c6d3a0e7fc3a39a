"""Audit events leave the broker (webhook, syslog); audit.jsonl rotates; old audit rows and
recordings go (docs/audit.md). Brokers are real; rotation and retention use injected sizes
and clocks."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from harness import start_broker, stop_broker

from hatchway.server.app import open_state
from hatchway.server.base.crypto import SecretBox
from hatchway.server.runtime.audit import AuditLog, audit
from hatchway.server.runtime.retention import Rotation, expire_audit, retention_duty
from hatchway.server.runtime.state import ServerConfig, ServerState
from hatchway.server.store import Store
from hatchway.server.store import schema as t


def _audit_log(state: ServerState) -> AuditLog:
    """The state's audit log as the class it is (the state names only its protocol)."""
    assert isinstance(state.audit_log, AuditLog)
    return state.audit_log


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


class Hook:
    """A local HTTP server standing in for the webhook: fails the first ``fail`` POSTs
    with 503, then keeps what it is sent."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.posts: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.fail > 0:
                    hook.fail -= 1
                    status = 503
                else:
                    hook.posts.append(
                        {"type": self.headers["Content-Type"], "body": json.loads(body)}
                    )
                    status = 200
                hook.statuses.append(status)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/audit"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def records(self) -> list[dict[str, Any]]:
        return [r for p in self.posts for r in p["body"]["Records"]]


def test_audit_events_reach_a_webhook_in_batches_retried_after_failures(
    tmp_path: Path,
) -> None:
    hook = Hook(fail=2)
    b = start_broker(
        tmp_path / "data",
        "--audit-webhook-url", hook.url,
        "--audit-webhook-interval", "0.05",
        "--audit-webhook-batch", "5",
    )  # fmt: skip
    try:
        iam = b.client("iam")
        for n in range(12):
            iam.create_user(UserName=f"hooked-{n}")
        names = wait_for(
            "the 12 CreateUser events at the webhook",
            lambda: (lambda got: got if {f"hooked-{n}" for n in range(12)} <= got else None)(
                {r["requestParameters"].get("UserName") for r in hook.records()}
            ),
        )
        assert names
    finally:
        stop_broker(b)
    assert hook.statuses[:2] == [503, 503]  # the first two tries failed: tried again
    assert all(p["type"] == "application/json" for p in hook.posts)
    assert max(len(p["body"]["Records"]) for p in hook.posts) <= 5  # batched, bounded
    created = [r for r in hook.records() if r["eventName"] == "CreateUser"]
    assert len({r["eventID"] for r in created}) == 12
    assert created[0]["eventSource"] == "iam.amazonaws.com"
    assert created[0]["userIdentity"]["type"] == "IAMUser"


def test_the_webhook_is_https_verified_against_the_system_s_trust(tmp_path: Path) -> None:
    """HTTPS: the broker checks the webhook's certificate against the CAs it trusts
    (SSL_CERT_FILE here: a local CA that signed the hook's certificate for 127.0.0.1)."""
    import ssl

    from hatchway.server.base.tls import local_ca, server_context

    ca = local_ca(tmp_path / "ca")
    hook = Hook()
    context: ssl.SSLContext = server_context(ca.cert, ca.key)
    hook.server.socket = context.wrap_socket(hook.server.socket, server_side=True)
    url = hook.url.replace("http://", "https://")
    b = start_broker(
        tmp_path / "data",
        "--audit-webhook-url", url,
        "--audit-webhook-interval", "0.05",
        env={"SSL_CERT_FILE": str(ca.ca_cert)},
    )  # fmt: skip
    try:
        b.client("iam").create_user(UserName="over-tls")
        wait_for(
            "the CreateUser event at the HTTPS webhook",
            lambda: any(
                r["requestParameters"].get("UserName") == "over-tls" for r in hook.records()
            ),
        )
    finally:
        stop_broker(b)


RFC5424 = re.compile(
    rb"^<(\d+)>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (\S+) hatchway (\d+) (\S+) - "
    rb"\xef\xbb\xbf(.*)$",
    re.S,
)


def test_audit_events_reach_syslog_over_udp_as_rfc5424(tmp_path: Path) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(20)
    port = sink.getsockname()[1]
    b = start_broker(tmp_path / "data", "--audit-syslog", f"udp://127.0.0.1:{port}")
    try:
        b.client("iam").create_user(UserName="logged")
        with pytest.raises(ClientError):
            b.client("iam", "AKIANOSUCHKEY0000000", "x").list_users()  # not audited: no key
        messages: list[re.Match[bytes]] = []
        while not any(m.group(5) == b"CreateUser" for m in messages):
            data, _ = sink.recvfrom(70_000)
            m = RFC5424.match(data)
            assert m is not None, data[:200]
            messages.append(m)
    finally:
        stop_broker(b)
        sink.close()
    m = next(m for m in messages if m.group(5) == b"CreateUser")
    assert int(m.group(1)) == 10 * 8 + 6  # authpriv.info: an allowed call
    assert m.group(3) == socket.gethostname().encode()
    event = json.loads(m.group(6))
    assert event["eventName"] == "CreateUser"
    assert event["requestParameters"]["UserName"] == "logged"


def test_a_denied_call_is_a_syslog_notice(tmp_path: Path) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(20)
    port = sink.getsockname()[1]
    b = start_broker(
        tmp_path / "data",
        "--audit-syslog", f"udp://127.0.0.1:{port}",
        "--audit-syslog-facility", "local3",
    )  # fmt: skip
    try:
        iam = b.client("iam")
        iam.create_user(UserName="nobody-allowed")
        key = iam.create_access_key(UserName="nobody-allowed")["AccessKey"]
        with pytest.raises(ClientError):
            b.client("iam", key["AccessKeyId"], key["SecretAccessKey"]).list_users()
        while True:
            m = RFC5424.match(sink.recvfrom(70_000)[0])
            assert m is not None
            if m.group(5) == b"ListUsers":
                break
    finally:
        stop_broker(b)
        sink.close()
    assert int(m.group(1)) == (16 + 3) * 8 + 5  # local3.notice
    assert json.loads(m.group(6))["decision"] == "denied"


def test_a_bad_syslog_target_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="syslog target must be udp://, tcp:// or unix://"):
        start_broker(tmp_path / "data", "--audit-syslog", "http://127.0.0.1:514")


# --- rotation and retention ------------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> Iterator[ServerState]:
    config = ServerConfig(data_dir=tmp_path)
    store = Store(config.store_url)
    st = open_state(config, store, SecretBox.from_dir(tmp_path), [])
    yield st
    st.audit_log.close()
    store.close()


def record(state: ServerState, name: str = "ListUsers", log: AuditLog | None = None) -> None:
    if log is not None:
        saved, state.audit_log = state.audit_log, log
    try:
        audit(
            state,
            service="iam",
            operation=name,
            principal="arn:aws:iam::123456789012:user/admin",
            user_id="AIDAEXAMPLE",
            source_ip="127.0.0.1",
            params={"UserName": "x" * 200},
            decisions=[],
            error=None,
            request_id="r",
        )
    finally:
        if log is not None:
            state.audit_log = saved


def test_audit_jsonl_rotates_by_size_keeping_n(state: ServerState, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = _audit_log(state)
    record(state)
    line = path.stat().st_size  # bytes of one event's line
    log.rotation = Rotation(path, max_bytes=4 * line, keep=2)
    for _ in range(2):
        record(state)
    log.check_rotation()
    assert not (tmp_path / "audit.jsonl.1").exists()  # 3 lines: under the size, not yet
    for _round in range(4):
        for _ in range(5):
            record(state)
        log.check_rotation()
    rotated = sorted(p.name for p in tmp_path.glob("audit.jsonl.*") if not p.name.endswith("lock"))
    assert rotated == ["audit.jsonl.1", "audit.jsonl.2"]  # keep=2: the oldest went
    record(state, "AfterRotation")
    lines = path.read_text().splitlines()
    assert [json.loads(line)["eventName"] for line in lines] == ["AfterRotation"]
    for name in rotated:
        assert all(json.loads(line) for line in (tmp_path / name).read_text().splitlines())


def test_audit_jsonl_rotates_by_age_and_other_processes_follow(
    state: ServerState, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    now = [1_000_000.0]
    log = _audit_log(state)
    log.rotation = Rotation(path, max_age=3600, clock=lambda: now[0])
    other = AuditLog(state.store, path)  # an API worker writing the same file
    other.rotation = Rotation(path, max_age=3600, clock=lambda: now[0])
    record(state, "First")
    now[0] += 3599
    log.check_rotation()
    assert not (tmp_path / "audit.jsonl.1").exists()
    now[0] += 1
    log.check_rotation()
    assert [json.loads(x)["eventName"] for x in (tmp_path / "audit.jsonl.1").open()] == ["First"]
    other.check_rotation()  # it sees the file moved and reopens instead of rotating again
    record(state, "Second", log=other)
    record(state, "Third")
    names = [json.loads(x)["eventName"] for x in path.read_text().splitlines()]
    assert names == ["Second", "Third"]
    assert not (tmp_path / "audit.jsonl.2").exists()
    other.close()


def test_the_retention_duty_deletes_old_audit_rows(state: ServerState) -> None:
    for _ in range(3):
        record(state)
    _audit_log(state).flush()
    assert state.store.count(t.audit) == 3
    now = datetime.now(UTC)
    assert state.config.audit_retention_days == 90
    assert retention_duty(state, now + timedelta(days=89)).audit_rows == 0
    state.config.audit_retention_days = 0  # 0: kept for ever
    assert expire_audit(state, now + timedelta(days=3650)) == 0
    state.config.audit_retention_days = 90
    done = retention_duty(state, now + timedelta(days=91))
    assert done.audit_rows == 3 and done.recordings == []
    assert state.store.count(t.audit) == 0


# --- exporters in-process: TCP framing, the local socket, refusals, the bound ----------------


def test_syslog_over_tcp_is_octet_counted_and_over_a_unix_socket_one_datagram_each(
    tmp_path: Path,
) -> None:
    import asyncio

    from hatchway.server.runtime.auditexport import SyslogExporter

    async def go() -> tuple[bytes, list[bytes]]:
        received = bytearray()
        got_all = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while chunk := await reader.read(65536):
                received.extend(chunk)
                if received.count(b"hatchway") >= 2:
                    got_all.set()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tcp = SyslogExporter(f"tcp://127.0.0.1:{port}", facility="local7")
        path = str(tmp_path / "log.sock")
        sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sink.bind(path)
        sink.setblocking(False)
        unix = SyslogExporter(f"unix://{path}")
        tasks = [asyncio.create_task(tcp.run()), asyncio.create_task(unix.run())]
        for n, exporter in enumerate((tcp, unix, tcp, unix)):
            exporter.offer(json.dumps({"eventName": f"Op{n}", "decision": "error"}))
        await asyncio.wait_for(got_all.wait(), 20)
        datagrams: list[bytes] = []
        loop = asyncio.get_running_loop()
        while len(datagrams) < 2:
            datagrams.append(await asyncio.wait_for(loop.sock_recv(sink, 70_000), 20))
        for task in tasks:
            task.cancel()
        server.close()
        sink.close()
        return bytes(received), datagrams

    stream, datagrams = asyncio.run(go())
    frames = []
    rest = stream
    while rest:  # RFC 6587 octet counting: "LEN SP MSG" back to back
        length, _, rest = rest.partition(b" ")
        frames.append(rest[: int(length)])
        rest = rest[int(length) :]
    assert [RFC5424.match(f).group(5) for f in frames] == [b"Op0", b"Op2"]  # type: ignore[union-attr]
    assert all(int(RFC5424.match(f).group(1)) == 23 * 8 + 4 for f in frames)  # type: ignore[union-attr]
    assert [RFC5424.match(d).group(5) for d in datagrams] == [b"Op1", b"Op3"]  # type: ignore[union-attr]


def test_a_webhook_that_refuses_a_batch_for_good_drops_it_and_the_queue_is_bounded() -> None:
    import asyncio

    from hatchway.server.runtime.auditexport import Queue, WebhookExporter

    hook = Hook()
    statuses = iter([400])

    class Refusing(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            status = next(statuses, 200)
            hook.statuses.append(status)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    hook.server.RequestHandlerClass = Refusing

    async def go() -> None:
        exporter = WebhookExporter(hook.url, batch=10, interval=0.01)
        task = asyncio.create_task(exporter.run())
        exporter.offer('{"eventName": "Refused"}')
        while not hook.statuses:
            await asyncio.sleep(0.01)
        exporter.offer('{"eventName": "Accepted"}')
        while exporter.sent < 1:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(go())
    assert hook.statuses == [400, 200]  # the refused batch was not sent again

    q = Queue("test", limit=3)
    for n in range(5):
        q.offer(str(n))
    assert list(q.items) == ["2", "3", "4"] and q.dropped == 2


def test_lookup_reads_a_bounded_number_of_rows_per_call(
    state: ServerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rare attribute over a long history: each call reads at most SCAN_LIMIT rows and
    answers with a token to go on from, instead of scanning the whole table at once."""
    from hatchway.server.ops import cloudtrail

    record(state, "Rare")
    for _ in range(1100):
        record(state, "Common")
    _audit_log(state).flush()
    monkeypatch.setattr(cloudtrail, "SCAN_LIMIT", 500)
    pages = []
    cursor = None
    while True:
        found, cursor = cloudtrail.scan(state.store, [], cursor, "EventName", "Rare", None, 50)
        pages.append([r["event_name"] for r in found])
        if cursor is None:
            break
    assert pages == [[], [], ["Rare"]]  # 500 rows, 500 rows, then the rest and the match
