"""A lean load agent and a lean load client: thousands of simulated nodes and sessions in one
asyncio process, speaking what ``hatchway agent`` and a session-manager-plugin speak.

Nodes (:class:`LoadAgent`):

* register through the normal path (``POST /hatchway/v1/register`` with an activation id and
  code, as ``hatchway agent`` does; the broker chooses each ``mi-`` id and returns its keys);
* open the control channel (``/v1/control-channel/<id>``, SigV4-signed upgrade with the node's
  own keys, service ``ssmmessages``), say ``hello`` with the node's facts and the sessions it
  runs, and send a ``heartbeat`` every ``pingInterval`` seconds the broker's ``welcome`` asks
  for (one scheduler per process, not a task per node), answering the broker's websocket pings;
* on ``start_session``: open the node's side of the data channel (signed upgrade,
  ``OpenDataChannelInput`` with ``ClientInstanceId``, ``agent_session_state: Connected``), run
  the handshake when the session type needs one (``AgentHandshake``), send a prompt (``$ ``) as
  ``output_stream_data``, acknowledge every client frame and answer input with the same bytes
  as output (an echoing shell, no process); ``terminate_session`` or ``channel_closed`` ends it
  with ``Terminating``.

Clients (:class:`LoadClient`): StartSession signed as boto3 signs it (``leanhttp``), the
StreamUrl's websocket with the single-use token (``OpenDataChannelInput``), the client side of
the handshake (``ClientHandshake``), acknowledgements; a session counts as established when the
node's first output (the prompt) has arrived, i.e. both ends are attached and any handshake is
done. TerminateSession at the end.

Both sides use the reliable stream of ``hatchway.protocol`` (sequence numbers, acks,
retransmission from one ticker per process) and the plugin's small websocket client
(``hatchway.client.websocket``), so a connection costs a socket, two small buffers and one
reader task.

The endpoints are a list of broker URLs (node *i* connects to ``endpoints[i % n]``) or one load
balancer's URL. Run as a process by ``bench/cluster.py``; each process reads commands from
stdin and answers one JSON line per command on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import sys
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from leanhttp import Connection, Signer

from hatchway.client.fastsign import StaticCredentials, sign_headers
from hatchway.client.websocket import MsgType, WebSocket, connect
from hatchway.protocol import (
    AgentHandshake,
    ChannelClosed,
    ClientHandshake,
    Deliver,
    Frame,
    GaveUp,
    MessageType,
    PayloadType,
    Role,
    SendBytes,
    Stream,
    build_agent_session_state,
    build_open_data_channel,
    encode,
    requires_handshake,
)

PROMPT = b"$ "
TICK = 0.2
START_TIMEOUT = 60.0
"""Seconds a session may take from StartSession to its prompt before it counts as failed."""
"""Seconds between two retransmission passes over the process's streams."""
AGENT = "Boto3/1.44.8 md/Botocore#1.44.8 hatchway-loadagent"


def facts(index: int) -> dict[str, str]:
    """What a simulated node reports (registration and hello)."""
    return {
        "ComputerName": f"load-{index}",
        "PlatformName": "Hatchway Load",
        "PlatformVersion": "1",
        "PlatformType": "Linux",
        "IPAddress": "127.0.0.1",
        "AgentName": "hatchway-loadagent",
        "AgentVersion": "0.1.0",
    }


def _split(url: str) -> tuple[str, str, str]:
    """``(host:port, path, query)`` of a URL (ws/http)."""
    parts = urlsplit(url)
    return parts.netloc, parts.path or "/", parts.query


def signed_upgrade(url: str, creds: StaticCredentials, region: str) -> dict[str, str]:
    """SigV4 headers of a websocket upgrade (GET, no body, service ``ssmmessages``), as
    ``hatchway agent`` signs it (``Host`` and ``X-Amz-Date`` signed)."""
    host, path, query = _split(url)
    query = "&".join(sorted(query.split("&"))) if query else ""
    return sign_headers("GET", path, query, {"Host": host}, b"", creds, region, "ssmmessages")


_closing: set[asyncio.Future[None]] = set()
"""Closes under way (kept referenced until done)."""


def _close_later(ws: WebSocket) -> None:
    task = asyncio.ensure_future(ws.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


class Ticker:
    """One retransmission pass over every open stream of the process (instead of a timer per
    session)."""

    def __init__(self) -> None:
        self.streams: dict[Any, None] = {}
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = time.time()
            for ch in list(self.streams):
                if ch.stream.unacked_count:
                    try:
                        for data in ch.stream.due(now):
                            ch.write(data)
                    except GaveUp:
                        ch.abort()


@dataclass(eq=False)
class Channel:
    """One end of a data channel: its websocket and its reliable stream."""

    ws: WebSocket
    stream: Stream
    session_id: str
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def write(self, data: bytes) -> None:
        """Queue ``data`` as one binary message (the transport buffers; no await per frame)."""
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            self.ws.write_bytes(data)

    def abort(self) -> None:
        self.closed.set()
        _close_later(self.ws)


# -- nodes ------------------------------------------------------------------------------------


@dataclass(eq=False)
class Node:
    index: int
    endpoint: str
    instance_id: str
    creds: StaticCredentials
    region: str
    control: WebSocket | None = None
    sessions: dict[str, AgentSide] = field(default_factory=dict)
    ping_interval: float = 20.0
    online: asyncio.Event = field(default_factory=asyncio.Event)


class AgentSide(Channel):
    """The node's side of one session."""

    node: Node
    handshake: AgentHandshake | None = None


class LoadAgent:
    """Simulated nodes: registration, control channels, sessions."""

    def __init__(self, endpoints: list[str], region: str = "us-east-1") -> None:
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.region = region
        self.nodes: list[Node] = []
        self.ticker = Ticker()
        self.tasks: set[asyncio.Future[Any]] = set()
        self.stats = {"started": 0, "ended": 0, "echoed": 0, "heartbeats": 0, "errors": 0}
        self.first_error = ""

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _error(self, what: str) -> None:
        self.stats["errors"] += 1
        if not self.first_error:
            self.first_error = what[:500]
        print(f"loadagent: {what[:500]}", file=sys.stderr, flush=True)

    async def register(
        self, activations: list[tuple[str, str, int]], concurrency: int = 16, offset: int = 0
    ) -> None:
        """Register ``count`` nodes with each ``(activation id, code, count)``."""
        jobs: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue()
        index = offset
        for act_id, code, count in activations:
            for _ in range(count):
                jobs.put_nowait((index, act_id, code))
                index += 1
        found: list[Node] = []

        async def worker(endpoint: str) -> None:
            host = _split(endpoint)[0]
            conn = await Connection.open(host)
            try:
                while not jobs.empty():
                    i, act_id, code = jobs.get_nowait()
                    body = json.dumps(
                        {"ActivationId": act_id, "ActivationCode": code, **facts(i)}
                    ).encode()
                    headers = {"Content-Type": "application/json"}
                    status, raw = await conn.request("POST", "/hatchway/v1/register", body, headers)
                    if status != 200:
                        raise RuntimeError(f"registration refused: {status} {raw[:300]!r}")
                    data = json.loads(raw)
                    found.append(
                        Node(
                            i,
                            self.endpoints[i % len(self.endpoints)],
                            data["InstanceId"],
                            StaticCredentials(data["AccessKeyId"], data["SecretAccessKey"]),
                            data["Region"],
                        )
                    )
            finally:
                conn.close()

        await asyncio.gather(
            *(worker(self.endpoints[k % len(self.endpoints)]) for k in range(concurrency))
        )
        found.sort(key=lambda n: n.index)
        self.nodes += found

    async def connect_all(self, concurrency: int = 64) -> None:
        """Open every node's control channel; returns once all are welcomed."""
        self.ticker.start()
        self._spawn(self._heartbeats())
        queue = list(self.nodes)
        sem = asyncio.Semaphore(concurrency)

        async def one(node: Node) -> None:
            async with sem:
                await self._open_control(node)

        await asyncio.gather(*(one(n) for n in queue))
        await asyncio.gather(*(n.online.wait() for n in queue))

    async def _open_control(self, node: Node) -> None:
        url = f"{node.endpoint}/v1/control-channel/{node.instance_id}?role=subscribe&stream=input"
        ws_url = "ws" + url[len("http") :]
        for attempt in range(5):
            try:
                ws = await connect(ws_url, signed_upgrade(url, node.creds, node.region))
                break
            except Exception as exc:
                if attempt == 4:
                    raise
                self._error(f"control channel {node.instance_id}: {exc!r}")
                await asyncio.sleep(0.5 * (attempt + 1))
        node.control = ws
        await ws.send_str(json.dumps({"type": "hello", **facts(node.index), "sessions": []}))
        self._spawn(self._control_reader(node, ws))

    async def _control_reader(self, node: Node, ws: WebSocket) -> None:
        async for msg in ws:
            if msg.type is not MsgType.TEXT:
                continue
            data = json.loads(msg.data)
            kind = data.get("type")
            if kind == "welcome":
                node.ping_interval = float(data.get("pingInterval", node.ping_interval))
                node.online.set()
            elif kind == "start_session":
                self._spawn(self._run_session(node, data))
            elif kind == "terminate_session":
                side = node.sessions.get(str(data.get("sessionId")))
                if side is not None:
                    self._end(side)
        node.online.clear()

    async def _heartbeats(self) -> None:
        """Every node's heartbeat, spread evenly over the interval, from one task."""
        while True:
            nodes = [n for n in self.nodes if n.control is not None and n.online.is_set()]
            interval = nodes[0].ping_interval if nodes else 1.0
            if not nodes:
                await asyncio.sleep(interval)
                continue
            gap = interval / len(nodes)
            start = time.monotonic()
            for k, node in enumerate(nodes):
                ws = node.control
                if ws is not None and not ws.closed:
                    with contextlib.suppress(Exception):
                        await ws.send_str('{"type":"heartbeat"}')
                        self.stats["heartbeats"] += 1
                delay = start + (k + 1) * gap - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    async def _run_session(self, node: Node, task: dict[str, Any]) -> None:
        sid = str(task["sessionId"])
        url: str = task["streamUrl"]
        http_url = "http" + url[len("ws") :]
        try:
            ws = await connect(url, signed_upgrade(http_url, node.creds, node.region))
        except Exception as exc:
            self._error(f"data channel {sid}: {exc!r}")
            return
        side = AgentSide(ws, Stream(Role.AGENT), sid)
        side.node = node
        node.sessions[sid] = side
        self.stats["started"] += 1
        try:
            await ws.send_str(
                build_open_data_channel(
                    str(task["token"]),
                    request_id=uuid.uuid4(),
                    client_id=str(uuid.uuid4()),
                    client_instance_id=node.instance_id,
                )
            )
            side.write(_state_frame("Connected", sid))
            self.ticker.streams[side] = None
            doc = task.get("documentContent") or {}
            session_type = str(doc.get("sessionType", "Standard_Stream"))
            now = time.time()
            if requires_handshake(session_type, False):
                side.handshake = AgentHandshake(session_type)
                side.write(
                    side.stream.send(
                        PayloadType.HANDSHAKE_REQUEST, side.handshake.request(now), now
                    )
                )
            else:
                side.write(side.stream.send(PayloadType.OUTPUT, PROMPT, now))
            async for msg in ws:
                if msg.type is not MsgType.BINARY:
                    continue
                try:
                    events = side.stream.receive(msg.data, time.time())
                except ValueError:
                    continue
                for ev in events:
                    if isinstance(ev, SendBytes):
                        side.write(ev.data)
                    elif isinstance(ev, Deliver):
                        self._deliver(side, ev)
                    elif isinstance(ev, ChannelClosed):
                        self._end(side)
        finally:
            self.ticker.streams.pop(side, None)
            node.sessions.pop(sid, None)
            self.stats["ended"] += 1
            await ws.close()

    def _deliver(self, side: AgentSide, ev: Deliver) -> None:
        now = time.time()
        hs = side.handshake
        if hs is not None and not hs.done:
            if ev.payload_type == PayloadType.HANDSHAKE_RESPONSE:
                hs.receive_response(ev.payload)
                if hs.failed:
                    self._error(f"handshake {side.session_id}: {hs.error}")
                    self._end(side)
                    return
                side.write(
                    side.stream.send(PayloadType.HANDSHAKE_COMPLETE, hs.complete(now, ""), now)
                )
                side.write(side.stream.send(PayloadType.OUTPUT, PROMPT, now))
            return
        if ev.payload_type == PayloadType.OUTPUT and ev.payload:
            side.write(side.stream.send(PayloadType.OUTPUT, ev.payload, now))  # the echo
            self.stats["echoed"] += 1

    def _end(self, side: AgentSide) -> None:
        if side.closed.is_set():
            return
        side.closed.set()
        side.write(_state_frame("Terminating", side.session_id, exit_code=0))
        _close_later(side.ws)


def _state_frame(state: str, sid: str, exit_code: int | None = None) -> bytes:
    payload = build_agent_session_state(state, sid, None, exit_code)
    return encode(
        Frame(
            MessageType.AGENT_SESSION_STATE,
            0,
            0,
            payload,
            uuid.uuid4(),
            int(time.time() * 1000),
            flags=3,
        )
    )


# -- clients ----------------------------------------------------------------------------------


class ClientSide(Channel):
    """The client's side of one session."""

    handshake: ClientHandshake
    started: float = 0.0  # perf_counter at StartSession's request
    established: float = 0.0  # ... when the first output arrived
    endpoint: str = ""
    output: bytearray
    waiter: asyncio.Future[None] | None = None


class LoadClient:
    """Simulated clients: StartSession, the data channel, echo probes, TerminateSession."""

    def __init__(self, key: str, secret: str, region: str = "us-east-1") -> None:
        self.key, self.secret, self.region = key, secret, region
        self.signers: dict[str, Signer] = {}
        self.http: dict[str, list[Connection]] = {}
        self.sessions: list[ClientSide] = []
        self.ticker = Ticker()
        self.tasks: set[asyncio.Future[Any]] = set()
        self.errors: dict[str, int] = {}
        self.first_error = ""

    def _error(self, kind: str, what: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if not self.first_error:
            self.first_error = what[:500]
        print(f"loadclient: {kind}: {what[:500]}", file=sys.stderr, flush=True)

    def signer(self, endpoint: str) -> Signer:
        if endpoint not in self.signers:
            self.signers[endpoint] = Signer(endpoint, self.key, self.secret, self.region, AGENT)
        return self.signers[endpoint]

    async def call(
        self, conn: Connection, endpoint: str, target: str, params: dict[str, Any]
    ) -> dict[str, Any]:
        body, headers = self.signer(endpoint).ssm(target, params)
        status, raw = await conn.request("POST", "/", body, headers)
        if status != 200:
            raise RuntimeError(f"{target}: {status} {raw[:300]!r}")
        out: dict[str, Any] = json.loads(raw) if raw else {}
        return out

    async def start_many(
        self,
        targets: list[tuple[str, str]],
        concurrency: int = 32,
        document: str | None = None,
        deadline: float | None = None,
    ) -> None:
        """One session per ``(instance id, endpoint)``, ``concurrency`` at a time; returns
        when every one is established (or failed), or, after ``deadline`` seconds, once the
        sessions under way are (no new one is started then)."""
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + deadline if deadline else float("inf")
        self.ticker.start() if self.ticker.task is None else None
        jobs = list(enumerate(targets))
        jobs.reverse()

        async def worker() -> None:
            conns: dict[str, Connection] = {}
            try:
                while jobs and loop.time() < stop_at:
                    _, (target, endpoint) = jobs.pop()
                    conn = conns.get(endpoint)
                    if conn is None:
                        conn = conns[endpoint] = await Connection.open(_split(endpoint)[0])
                    try:
                        await asyncio.wait_for(
                            self.start_one(conn, endpoint, target, document), START_TIMEOUT
                        )
                    except Exception as exc:
                        self._error("start", f"{target}: {exc!r}")
                        conns.pop(endpoint, None)
                        conn.close()
            finally:
                for c in conns.values():
                    c.close()

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def start_one(
        self,
        conn: Connection,
        endpoint: str,
        target: str,
        document: str | None = None,
        parameters: dict[str, list[str]] | None = None,
    ) -> ClientSide:
        """StartSession on ``target`` through ``endpoint``, then its data channel; returns once
        the node's first output (the prompt) arrived."""
        t0 = time.perf_counter()
        params: dict[str, Any] = {"Target": target}
        if document:
            params["DocumentName"] = document
        if parameters:
            params["Parameters"] = parameters
        answer = await self.call(conn, endpoint, "StartSession", params)
        ws = await connect(answer["StreamUrl"])
        side = ClientSide(ws, Stream(Role.CLIENT), answer["SessionId"])
        side.handshake = ClientHandshake()
        side.started, side.endpoint, side.output = t0, endpoint, bytearray()
        side.waiter = asyncio.get_running_loop().create_future()
        await ws.send_str(
            build_open_data_channel(
                answer["TokenValue"],
                request_id=uuid.uuid4(),
                client_id=str(uuid.uuid4()),
                client_version="1.2.764.0",
            )
        )
        self.sessions.append(side)
        self.ticker.streams[side] = None
        task = asyncio.ensure_future(self._reader(side))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        await side.waiter  # the prompt
        return side

    async def _reader(self, side: ClientSide) -> None:
        try:
            async for msg in side.ws:
                if msg.type is not MsgType.BINARY:
                    continue
                try:
                    events = side.stream.receive(msg.data, time.time())
                except ValueError:
                    continue
                for ev in events:
                    if isinstance(ev, SendBytes):
                        side.write(ev.data)
                    elif isinstance(ev, Deliver):
                        self._deliver(side, ev)
                    elif isinstance(ev, ChannelClosed):
                        side.closed.set()
        finally:
            self.ticker.streams.pop(side, None)
            side.closed.set()
            if side.waiter is not None and not side.waiter.done():
                side.waiter.set_exception(ConnectionError("the data channel closed"))

    def _deliver(self, side: ClientSide, ev: Deliver) -> None:
        if ev.payload_type in (PayloadType.HANDSHAKE_REQUEST, PayloadType.HANDSHAKE_COMPLETE):
            answer = side.handshake.handle(ev.payload_type, ev.payload)
            if answer is not None:
                side.write(side.stream.send(answer[0], answer[1], time.time()))
            return
        if ev.payload_type != PayloadType.OUTPUT:
            return
        side.output += ev.payload
        if not side.established:
            side.established = time.perf_counter()
        if side.waiter is not None and not side.waiter.done():
            side.waiter.set_result(None)

    async def echo(self, side: ClientSide, data: bytes = b"x") -> float:
        """Seconds from sending ``data`` as input until the node's echo of it arrived."""
        side.output.clear()
        side.waiter = asyncio.get_running_loop().create_future()
        t0 = time.perf_counter()
        side.write(side.stream.send(PayloadType.OUTPUT, data, time.time()))
        while bytes(side.output) != data:
            await side.waiter
            side.waiter = asyncio.get_running_loop().create_future()
        return time.perf_counter() - t0

    async def terminate_all(self, concurrency: int = 32) -> None:
        jobs = list(self.sessions)

        async def worker() -> None:
            conns: dict[str, Connection] = {}
            try:
                while jobs:
                    side = jobs.pop()
                    conn = conns.get(side.endpoint)
                    if conn is None:
                        conn = conns[side.endpoint] = await Connection.open(
                            _split(side.endpoint)[0]
                        )
                    try:
                        await self.call(
                            conn, side.endpoint, "TerminateSession", {"SessionId": side.session_id}
                        )
                    except Exception as exc:
                        self._error("terminate", repr(exc))
            finally:
                for c in conns.values():
                    c.close()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(s.closed.wait() for s in self.sessions)), 60)


# -- the process ------------------------------------------------------------------------------


def own_usage() -> dict[str, float]:
    """This process's RSS (MiB), open descriptors and CPU seconds."""
    rss = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "rss_mib": rss / 1024,
        "fds": len(os.listdir("/proc/self/fd")),
        "cpu_s": r.ru_utime + r.ru_stime,
    }


def raise_nofile() -> int:
    """The soft RLIMIT_NOFILE raised to the hard limit (root cannot pass it here)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _lines() -> Any:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        yield json.loads(line)


async def agent_main(spec: dict[str, Any]) -> None:
    """Nodes: register, connect, then serve sessions until stdin closes."""
    raise_nofile()
    agent = LoadAgent(spec["endpoints"], spec.get("region", "us-east-1"))
    t0 = time.perf_counter()
    acts = [(str(a), str(c), int(n)) for a, c, n in spec["activations"]]
    await agent.register(acts, spec.get("concurrency", 16), spec.get("offset", 0))
    t1 = time.perf_counter()
    await agent.connect_all(spec.get("connect_concurrency", 64))
    t2 = time.perf_counter()
    _say(
        {
            "event": "ready",
            "nodes": [[n.instance_id, n.endpoint] for n in agent.nodes],
            "register_s": t1 - t0,
            "connect_s": t2 - t1,
            **own_usage(),
        }
    )
    async for cmd in _lines():
        if cmd.get("cmd") == "usage":
            sessions = sum(len(n.sessions) for n in agent.nodes)
            _say({"event": "usage", "sessions": sessions, **agent.stats, **own_usage()})
        elif cmd.get("cmd") == "exit":
            break
    _say({"event": "bye", **agent.stats, "first_error": agent.first_error, **own_usage()})


async def client_main(spec: dict[str, Any]) -> None:
    """Clients: start the sessions, then echo probes / terminate on command."""
    raise_nofile()
    client = LoadClient(spec["key"], spec["secret"], spec.get("region", "us-east-1"))
    targets = [(t, e) for t, e in spec["targets"]]
    t0 = time.perf_counter()
    await client.start_many(
        targets, spec.get("concurrency", 32), spec.get("document"), spec.get("deadline")
    )
    t1 = time.perf_counter()
    ok = [s for s in client.sessions if s.established]
    _say(
        {
            "event": "established",
            "sessions": len(ok),
            "wall_s": t1 - t0,
            "latencies": [s.established - s.started for s in ok],
            "errors": client.errors,
            "first_error": client.first_error,
            **own_usage(),
        }
    )
    async for cmd in _lines():
        kind = cmd.get("cmd")
        if kind == "echo":
            lat: list[float] = []
            sample = ok[:: max(1, len(ok) // int(cmd.get("count", 100)))]
            for side in sample:
                try:
                    lat.append(await asyncio.wait_for(client.echo(side), 30))
                except Exception as exc:
                    client._error("echo", repr(exc))
            _say({"event": "echo", "latencies": lat, "errors": client.errors})
        elif kind == "usage":
            _say({"event": "usage", **own_usage()})
        elif kind == "terminate":
            t2 = time.perf_counter()
            await client.terminate_all(spec.get("concurrency", 32))
            _say(
                {
                    "event": "terminated",
                    "wall_s": time.perf_counter() - t2,
                    "errors": client.errors,
                    "first_error": client.first_error,
                    **own_usage(),
                }
            )
        elif kind == "exit":
            break


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("role", choices=("agent", "client"), help="which side this process plays")
    ap.add_argument("spec", help="JSON (or @FILE): endpoints, activations / targets, keys")
    args = ap.parse_args()
    text = Path(args.spec[1:]).read_text() if args.spec.startswith("@") else args.spec
    spec = json.loads(text)
    socket.setdefaulttimeout(None)
    asyncio.run(agent_main(spec) if args.role == "agent" else client_main(spec))


if __name__ == "__main__":
    main()
