"""Issue 12: brokers on one PostgreSQL database behind HAProxy behave as one service.

Real parts only: a throwaway PostgreSQL cluster, three ``hatchway server`` processes, HAProxy
(Debian's package) in front with a configuration as docs/scale-out.md gives it (health checks
on ``/readyz``, ``/v1/data-channel/<session id>`` hashed to one broker, the rest by least
connections), 20 ``hatchway agent`` processes that know only HAProxy's URL, and the real
``aws`` CLI with our plugin through HAProxy. Which broker holds a node's control channel and a
session's relay is read from the brokers' claims (``hw_claims``) and logs.

Deadlines are generous bounds (a loaded 2-core CI machine), never sleeps "long enough".
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from botocore.exceptions import ClientError
from faulthelp import srv, wait_until  # first: it puts tests/client on the path
from harness.client import clean_aws_env, plugin_on_path

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
AGENTS = 20
RESUME_WINDOW = 15.0  # seconds (--resume-window): sessions nobody resumes end after it
AUTH_ERRORS = {"InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch"}


@pytest.fixture(scope="module", autouse=True)
def haproxy_installed() -> None:
    """HAProxy is required in CI (.ci/run installs it); elsewhere its absence skips."""
    if not Path(HAPROXY).exists():
        if os.environ.get("CI"):
            pytest.fail("HAProxy is required in CI (.ci/run installs Debian's haproxy)")
        pytest.skip("HAProxy is not installed (apt-get install haproxy)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def haproxy_config(port: int, brokers: list[int]) -> str:
    """The configuration of docs/scale-out.md, on loopback ports."""
    servers = "\n".join(
        f"    server b{i} 127.0.0.1:{p} check" for i, p in enumerate(brokers, start=1)
    )
    return f"""global
    maxconn 4096

defaults
    mode http
    option redispatch 1
    retries 3
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout client-fin 5s
    default-server inter 500ms fall 2 rise 2

frontend hatchway
    bind 127.0.0.1:{port}
    acl data_channel path_beg /v1/data-channel/
    use_backend data_channels if data_channel
    default_backend brokers

backend brokers
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
{servers}

backend data_channels
    balance uri
    hash-type consistent
    option httpchk GET /readyz
    http-check expect status 200
{servers}
"""


@dataclass
class Cluster:
    db: str
    root: Path
    lb: Any  # a srv.Broker whose url is HAProxy's
    brokers: dict[str, Any]  # name -> srv.Broker
    spare_port: int
    agents: list[Any] = field(default_factory=list)
    path: str = ""

    def broker_id(self, name: str) -> str:
        return (self.root / name / "broker-id").read_text().strip()

    def name_of(self, broker_id: str) -> str:
        return next(n for n in self.brokers if self.broker_id(n) == broker_id)

    def claims(self, kind: str) -> dict[str, str]:
        """key -> broker name, of live brokers' claims."""
        with psycopg.connect(self.db, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT key, broker_id FROM hw_claims c JOIN hw_leases l "
                "ON l.name = 'broker/' || c.broker_id AND l.expires >= now() WHERE kind = %s",
                (kind,),
            ).fetchall()
        ids = {self.broker_id(n): n for n in self.brokers}
        return {str(k): ids[str(b)] for k, b in rows if str(b) in ids}

    def relay_of(self, session_id: str) -> str | None:
        """The broker that relayed the session (its log says it started it)."""
        needle = f"data channel {session_id}: the node is asked to start the session"
        for name, b in self.brokers.items():
            if needle in b.log.read_text():
                return name
        return None


def eventually(check: Callable[[], bool], deadline: float) -> float | None:
    """Seconds until ``check`` held (None: not within ``deadline``)."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start >= deadline:
            return None
        time.sleep(0.05)


def error_code(call: Callable[[], object]) -> str | None:
    try:
        call()
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return None


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
            return int(r.status) == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS hatchway_scale")
        conn.execute("CREATE DATABASE hatchway_scale")
    db = postgres_url.rsplit("/", 1)[0] + "/hatchway_scale"
    root = tmp_path_factory.mktemp("scale")
    lb_port, spare = free_port(), free_port()
    lb_url = f"http://127.0.0.1:{lb_port}"
    common = ["--database-url", db, "--public-url", lb_url, "--resume-window", str(RESUME_WINDOW)]
    brokers = {"b1": srv.start_broker(root / "b1", *common)}
    for name in ("b2", "b3"):  # one deployment: one master key
        (root / name).mkdir(mode=0o700)
        shutil.copy(root / "b1" / "master.key", root / name / "master.key")
        brokers[name] = srv.start_broker(root / name, *common)
    ports = [int(b.url.rsplit(":", 1)[1]) for b in brokers.values()] + [spare]
    (root / "haproxy.cfg").write_text(haproxy_config(lb_port, ports))
    log = root / "haproxy.log"
    out = open(log, "w")  # noqa: SIM115 - lives as long as HAProxy
    proc = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(root / "haproxy.cfg")],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lb = srv.Broker(lb_url, root / "b1", proc, log)
    c = Cluster(db, root, lb, brokers, spare, path=plugin_on_path(root))
    try:
        wait_until(lambda: ready(lb_url), 30, "HAProxy in front of ready brokers")
        for i in range(AGENTS):
            (root / f"node{i}").mkdir()
        with ThreadPoolExecutor(4) as pool:
            c.agents = list(
                pool.map(lambda i: srv.start_agent(lb, root / f"node{i}" / "state"), range(AGENTS))
            )
        yield c
    finally:
        for a in c.agents:
            a.stop()
        for b in c.brokers.values():
            if b.proc.poll() is None:
                srv.stop_broker(b)
        proc.terminate()
        proc.wait(10)


class Shell:
    """``aws ssm start-session`` through HAProxy, stdin a pipe the test types into."""

    def __init__(self, c: Cluster, target: str, *args: str) -> None:
        env = clean_aws_env(
            {
                "AWS_ACCESS_KEY_ID": srv.ADMIN_KEY,
                "AWS_SECRET_ACCESS_KEY": srv.ADMIN_SECRET,
                "PATH": c.path,
            }
        )
        self.proc = subprocess.Popen(
            [
                str(srv.BIN / "aws"),
                "ssm",
                "start-session",
                "--target",
                target,
                "--endpoint-url",
                c.lb.url,
                *args,
            ],
            env=env,
            stdin=subprocess.PIPE,
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

    def wait_text(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.text)
            if m:
                return m
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not printed; output so far:\n{self.text}")
            time.sleep(0.02)

    @property
    def session_id(self) -> str:
        return self.wait_text(r"Starting session with SessionId: (\S+)")[1]

    def type(self, keys: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(keys)
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60) -> int:
        with contextlib.suppress(BrokenPipeError):
            self.type(b"exit\r")
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def active_sessions(c: Cluster) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = c.lb.client("ssm").describe_sessions(State="Active")["Sessions"]
    return found


def test_nodes_spread_over_the_brokers_and_every_broker_answers_alike(c: Cluster) -> None:
    nodes = c.claims("node")
    assert len(nodes) == AGENTS
    assert len(set(nodes.values())) >= 2, nodes  # least connections spreads them
    ids = sorted(a.instance_id for a in c.agents)
    for b in c.brokers.values():
        ssm = b.client("ssm")
        listed = ssm.describe_instance_information(MaxResults=50)["InstanceInformationList"]
        assert sorted(i["InstanceId"] for i in listed if i["PingStatus"] == "Online") == ids
        for iid in ids[:3]:
            assert ssm.get_connection_status(Target=iid)["Status"] == "connected"


@pytest.fixture(scope="module")
def c(cluster: Cluster) -> Cluster:
    return cluster


def test_shells_whose_control_channel_and_relay_are_on_different_brokers(c: Cluster) -> None:
    """The node's control channel on one broker, the data channel's relay (where HAProxy
    hashes the session id) on another: the broker relaying asks the node's broker (NOTIFY)
    to start the session, and the shell works through HAProxy."""
    nodes = c.claims("node")
    apart = 0
    for attempt, agent in enumerate(c.agents[:12]):
        shell = Shell(c, agent.instance_id)
        try:
            sid = shell.session_id
            shell.type(b"echo scale-$((6*7))-%d\r" % attempt)
            shell.wait_text(rf"scale-42-{attempt}")
            assert shell.finish() == 0, shell.text
        finally:
            shell.kill()
        relay = c.relay_of(sid)
        assert relay is not None
        if relay != nodes[agent.instance_id]:
            apart += 1
            if apart >= 2:
                break
    assert apart >= 2, "no session had its relay and its node's channel on different brokers"


class _Blob(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = (self.path * 1000).encode()[:200_000]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_port_forwards_through_haproxy_across_brokers(c: Cluster) -> None:
    web = ThreadingHTTPServer(("127.0.0.1", 0), _Blob)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    nodes = c.claims("node")
    apart = 0
    try:
        for agent in c.agents[:12]:
            params = json.dumps({"portNumber": [str(web.server_port)], "localPortNumber": ["0"]})
            cli = Shell(
                c,
                agent.instance_id,
                "--document-name",
                "AWS-StartPortForwardingSession",
                "--parameters",
                params,
            )
            try:
                port = int(cli.wait_text(r"Port (\d+) opened for sessionId ")[1])
                cli.wait_text("Waiting for connections...")
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/x{port}", timeout=60) as r:
                    assert r.read() == (f"/x{port}" * 1000).encode()[:200_000]
                sid = cli.session_id
            finally:
                cli.kill()
            if c.relay_of(sid) != nodes[agent.instance_id]:
                apart += 1
                if apart >= 1:
                    break
        assert apart >= 1
    finally:
        web.shutdown()


def test_access_key_deleted_through_one_broker_is_refused_by_another(c: Cluster) -> None:
    """Within a second or so (the generation poll is 0.25 s): the bound is generous."""
    b1, b2 = c.brokers["b1"], c.brokers["b2"]
    key = srv.user_with_policy(
        b1,
        "scaleuser",
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "sts:GetCallerIdentity", "Resource": "*"}],
        },
    )
    sts_b2 = b2.client("sts", *key)
    assert sts_b2.get_caller_identity()["Arn"].endswith(":user/scaleuser")  # b2 caches it
    b1.client("iam").delete_access_key(UserName="scaleuser", AccessKeyId=key[0])
    took = eventually(lambda: error_code(sts_b2.get_caller_identity) in AUTH_ERRORS, 5.0)
    assert took is not None
    print(f"access key refused by the other broker after {took:.2f} s")


def test_a_broker_killed_with_sessions_open_leaves_no_zombie(c: Cluster) -> None:
    """SIGKILL the broker relaying an open shell: the shell resumes through another broker
    (both ends reconnect through HAProxy), every node is back on a live broker, new sessions
    work, and every session ends up either working or ended: none Active with nothing
    behind it."""
    shells = [Shell(c, a.instance_id) for a in c.agents[:4]]
    try:
        sids = [s.session_id for s in shells]
        for i, s in enumerate(shells):
            s.type(b"echo before-$((40+%d))\r" % i)
            s.wait_text(rf"before-{40 + i}")
        victim = c.relay_of(sids[0])
        assert victim is not None
        on_victim = [sid for sid in sids if c.relay_of(sid) == victim]
        killed = c.brokers.pop(victim)
        killed.proc.send_signal(signal.SIGKILL)
        killed.proc.wait(10)
        t0 = time.monotonic()
        # Every node has a control channel on a live broker again.
        wait_until(lambda: len(c.claims("node")) == AGENTS, 60, "every node back on a broker")
        print(f"all {AGENTS} nodes back on a live broker after {time.monotonic() - t0:.1f} s")
        assert victim not in set(c.claims("node").values())
        # The open shells resume through another broker and keep working.
        for i, s in enumerate(shells):
            s.type(b"echo after-$((50+%d))\r" % i)
            s.wait_text(rf"after-{50 + i}", timeout=90)
        assert on_victim  # at least the first shell was relayed by the broker killed
        # New sessions work, on nodes the dead broker held too.
        fresh = Shell(c, c.agents[5].instance_id)
        fresh.type(b"echo fresh-$((9*9))\r")
        fresh.wait_text("fresh-81")
        assert fresh.finish() == 0
        for s in shells:
            assert s.finish() == 0, s.text
    finally:
        for s in shells:
            s.kill()
    # Nothing stays Active: the relays' brokers ended them, or the lease holder did.
    wait_until(lambda: not active_sessions(c), RESUME_WINDOW + 60, "no session left Active")


def test_a_broker_started_later_joins_and_takes_load(c: Cluster) -> None:
    """A fourth broker on HAProxy's spare server: it becomes ready, serves API calls and, as
    the least loaded, takes the control channels of agents that (re)connect."""
    first = next(iter(c.brokers.values()))
    name = "b4"
    (c.root / name).mkdir(mode=0o700)
    shutil.copy(c.root / "b1" / "master.key", c.root / name / "master.key")
    args = list(cast(list[str], first.proc.args))
    db = args[args.index("--database-url") + 1]
    c.brokers[name] = srv.start_broker(
        c.root / name,
        "--database-url",
        db,
        "--public-url",
        c.lb.url,
        "--resume-window",
        str(RESUME_WINDOW),
        port=c.spare_port,
    )
    # HAProxy's health check admits it (rise 2 × 500 ms).
    wait_until(
        lambda: "b4 is UP" in c.lb.log.read_text() or "b4 succeeded" in c.lb.log.read_text(),
        30,
        "HAProxy sees b4 up",
    )
    moved = c.agents[10:14]
    for a in moved:
        a.stop()
        c.agents.remove(a)
    restarted = [srv.start_agent(c.lb, a.state_dir) for a in moved]
    c.agents += restarted
    nodes = c.claims("node")
    assert any(nodes.get(a.instance_id) == "b4" for a in restarted), nodes
    shell = Shell(c, next(a for a in restarted if nodes.get(a.instance_id) == "b4").instance_id)
    try:
        shell.type(b"echo joined-$((5*5))\r")
        shell.wait_text("joined-25")
        assert shell.finish() == 0
    finally:
        shell.kill()
