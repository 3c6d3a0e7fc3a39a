"""The shared data-channel endpoint (hatchway/protocol/endpoint.py) with a fake websocket, a
fake clock and a fake sleep: nothing here waits on real time.

Also the guard that agent and client drive their streams through it, not through resend loops
of their own again (the two copies that drifted, issue 10 item 4)."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hatchway.protocol import (
    RESEND_INTERVAL,
    Acked,
    Deliver,
    GaveUp,
    PayloadType,
    Role,
    SendBytes,
    Stream,
)
from hatchway.protocol.endpoint import Endpoint, Link
from hatchway.protocol.frames import decode
from hatchway.protocol.handshake import HANDSHAKE_TIMEOUT_MESSAGE, AgentHandshake

ROOT = Path(__file__).resolve().parents[2] / "hatchway"


class FakeSocket:
    def __init__(self, incoming: list[bytes] | None = None) -> None:
        self.sent: list[bytes] = []
        self.closed = False
        self.incoming = list(incoming or [])

    async def send_bytes(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionError("closed")
        self.sent.append(data)


class FakeTime:
    """A clock that only moves when the endpoint sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds


def seqs(frames: list[bytes]) -> list[int]:
    return [decode(f).sequence_number for f in frames]


def test_a_frame_not_acked_is_resent_after_the_interval_without_sleeping() -> None:
    async def main() -> None:
        clock, ws = FakeTime(), FakeSocket()
        stream = Stream(Role.CLIENT)
        ep = Endpoint(stream, clock=clock, sleep=clock.sleep)
        await ep.attach(ws)
        await ep.send_stream(PayloadType.OUTPUT, b"ls\r")
        assert seqs(ws.sent) == [0]
        assert await ep.tick()  # not yet due: the RTO (0.2 s) has not passed
        assert seqs(ws.sent) == [0]
        ticks = 0
        while len(ws.sent) < 2:
            await clock.sleep(ep.interval)
            assert await ep.tick()
            ticks += 1
        assert seqs(ws.sent) == [0, 0]
        assert 2 <= ticks <= 4  # the 0.2 s RTO at 0.1 s ticks
        assert clock.sleeps == ticks

    asyncio.run(main())


def test_the_resend_loop_ticks_on_the_injected_sleep_and_ends_when_the_stream_gives_up() -> None:
    gave_up: list[GaveUp] = []

    async def on_gave_up(exc: GaveUp) -> None:
        gave_up.append(exc)

    async def main() -> None:
        clock, ws = FakeTime(), FakeSocket()
        ep = Endpoint(
            Stream(Role.AGENT, max_attempts=3),
            clock=clock,
            sleep=clock.sleep,
            on_gave_up=on_gave_up,
        )
        await ep.attach(ws)
        await ep.send_stream(PayloadType.OUTPUT, b"out")
        await asyncio.wait_for(ep.resend_loop(), 5)  # returns: no real time passes

    asyncio.run(main())
    assert len(gave_up) == 1 and gave_up[0].sequence_number == 0
    assert RESEND_INTERVAL == 0.1


def test_acks_are_written_and_stop_the_resends() -> None:
    async def main() -> None:
        clock, agent_ws, client_ws = FakeTime(), FakeSocket(), FakeSocket()
        agent = Endpoint(Stream(Role.AGENT), clock=clock, sleep=clock.sleep)
        client = Endpoint(Stream(Role.CLIENT), clock=clock, sleep=clock.sleep)
        await agent.attach(agent_ws)
        await client.attach(client_ws)
        await agent.send_stream(PayloadType.OUTPUT, b"hello")
        events = await client.receive(agent_ws.sent[0])
        assert events == [Deliver(PayloadType.OUTPUT, b"hello", 0)]  # the ack is not an event
        assert len(client_ws.sent) == 1  # …it went out on the client's socket
        events = await agent.receive(client_ws.sent[0])
        assert events == [Acked(0)]
        assert agent.stream.unacked_count == 0
        for _ in range(20):
            await clock.sleep(agent.interval)
            await agent.tick()
        assert len(agent_ws.sent) == 1  # acked: never re-sent

    asyncio.run(main())


def test_handshake_deadline_runs_on_the_tick() -> None:
    failed: list[str] = []
    hs = AgentHandshake("Standard_Stream")

    def deadlines(now: float) -> None:
        if not hs.done and not hs.failed and hs.check_timeout(now):
            failed.append(hs.error or "")

    async def main() -> None:
        clock, ws = FakeTime(), FakeSocket()
        ep = Endpoint(Stream(Role.AGENT), clock=clock, sleep=clock.sleep, on_tick=deadlines)
        await ep.attach(ws)
        await ep.send_stream(PayloadType.HANDSHAKE_REQUEST, hs.request(clock()))
        # The client never answers: its ack alone keeps the stream from giving up.
        peer = Stream(Role.CLIENT)
        for event in peer.receive(ws.sent[0], clock()):
            if isinstance(event, SendBytes):
                await ep.receive(event.data)
        while not failed:
            await clock.sleep(ep.interval)
            assert await ep.tick()
            assert clock.now < 1000.0 + 60  # fails at 15 s, well before this

    asyncio.run(main())
    assert failed == [HANDSHAKE_TIMEOUT_MESSAGE]


def test_nothing_is_resent_while_disconnected_and_everything_after_the_reconnect() -> None:
    async def main() -> None:
        clock = FakeTime()
        first, second = FakeSocket(), FakeSocket()
        ep = Endpoint(Stream(Role.CLIENT), clock=clock, sleep=clock.sleep)
        assert await ep.attach(first) == 0
        await ep.send_stream(PayloadType.OUTPUT, b"a")
        first.closed = True  # the network drops
        ep.detach()
        await ep.send_stream(PayloadType.OUTPUT, b"b")  # buffered only
        for _ in range(10):
            await clock.sleep(ep.interval)
            assert await ep.tick()  # never gives up while reconnecting
        assert seqs(first.sent) == [0] and second.sent == []
        assert await ep.attach(second) == 2
        assert seqs(second.sent) == [0, 1]  # oldest first, sequence numbers continue
        assert ep.connections == 2

    asyncio.run(main())


def test_a_write_that_fails_is_dropped_and_the_frame_resent_later() -> None:
    async def main() -> None:
        clock = FakeTime()
        ws = FakeSocket()
        ep = Endpoint(Stream(Role.CLIENT), clock=clock, sleep=clock.sleep)
        await ep.attach(ws)

        async def broken(data: bytes) -> None:
            raise ConnectionResetError("reset")

        ws.send_bytes = broken  # type: ignore[method-assign]
        await ep.send_stream(PayloadType.OUTPUT, b"x")  # no exception
        assert ep.stream.unacked_count == 1

    asyncio.run(main())


def test_a_role_can_route_frames_through_its_own_writer() -> None:
    queued: list[bytes] = []

    async def queue(data: bytes) -> None:
        queued.append(data)

    async def main() -> None:
        clock = FakeTime()
        ep = Endpoint(Stream(Role.AGENT), clock=clock, sleep=clock.sleep, send=queue)
        await ep.attach(FakeSocket())
        await ep.send_stream(PayloadType.OUTPUT, b"x")
        await ep.resend_all()

    asyncio.run(main())
    assert seqs(queued) == [0, 0]


def test_serve_reads_frames_reconnects_through_the_role_and_stops_when_told() -> None:
    agent = Stream(Role.AGENT)
    to_client = [agent.send(PayloadType.OUTPUT, f"{i}".encode(), 0.0) for i in range(3)]
    handled: list[Any] = []
    dropped: list[Link] = []

    async def frames(link: Link) -> AsyncIterator[bytes]:
        assert isinstance(link, FakeSocket)
        while link.incoming:
            yield link.incoming.pop(0)
        link.closed = True  # the peer went away

    async def handle(events: list[Any]) -> bool:
        handled.extend(events)
        return len(handled) == 3  # the role says the session is over

    async def main() -> tuple[FakeSocket, FakeSocket]:
        clock = FakeTime()
        first = FakeSocket([to_client[0], b"not a frame", to_client[1]])
        second = FakeSocket([to_client[2], to_client[2]])
        ep = Endpoint(Stream(Role.CLIENT), clock=clock, sleep=clock.sleep)

        async def reconnect(ws: Link) -> Link | None:  # the role's connect, injected
            dropped.append(ws)
            return second

        await ep.attach(first)
        await ep.send_stream(PayloadType.OUTPUT, b"typed")  # unacked across the drop
        await asyncio.wait_for(ep.serve(frames, handle, reconnect), 5)
        assert ep.connections == 2 and ep.ws is second
        return first, second

    first, second = asyncio.run(main())
    assert dropped == [first]
    assert [e.payload for e in handled] == [b"0", b"1", b"2"]  # the bad frame was dropped
    assert seqs(second.sent)[0] == 0  # the unacked input re-sent first, then the ack of 2
    assert len(second.sent) == 2 and second.incoming == [to_client[2]]  # stopped when told


def test_serve_ends_when_the_role_does_not_reconnect() -> None:
    async def frames(link: Link) -> AsyncIterator[bytes]:
        assert isinstance(link, FakeSocket)
        link.closed = True
        for _ in ():
            yield b""

    async def handle(events: list[Any]) -> bool:
        return False

    async def no(ws: Link) -> Link | None:
        return None

    async def main() -> Endpoint:
        clock = FakeTime()
        ep = Endpoint(Stream(Role.AGENT), clock=clock, sleep=clock.sleep)
        await ep.attach(FakeSocket())
        await asyncio.wait_for(ep.serve(frames, handle, no), 5)
        return ep

    ep = asyncio.run(main())
    assert not ep.connected and ep.ws is not None and ep.ws.closed  # left for the role to close


def _source(path: str) -> tuple[str, ast.Module]:
    text = (ROOT / path).read_text()
    return text, ast.parse(text)


def test_agent_and_client_have_no_resend_loop_of_their_own() -> None:
    for path in ("agent/session.py", "client/session.py"):
        text, tree = _source(path)
        names = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        assert not names & {"_resender", "_resend_loop", "_write"}, path
        on_stream = {
            node.func.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr == "stream"
        }
        # The stream's timer, reconnect and receive calls are the endpoint's alone.
        assert not on_stream & {"due", "resend_all", "receive"}, (path, on_stream)
        assert "RESEND_INTERVAL" not in text and "sleep(0.1)" not in text, path
        assert "from hatchway.protocol.endpoint import Endpoint" in text, path
        assert "Endpoint(" in text and "endpoint.resend_loop()" in text, path
        assert "endpoint.serve(" in text and "async for msg in ws" not in text, path
        assert not names & {"_reader", "_read_loop", "_on_frame"}, path


def test_the_protocol_core_does_no_io_and_only_the_endpoint_awaits() -> None:
    """The core stays sans-I/O: no sockets, clocks or HTTP; asyncio only in endpoint.py,
    which is handed its websocket, clock and sleep."""
    for path in sorted((ROOT / "protocol").glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
        forbidden = {"socket", "ssl", "select", "time", "aiohttp", "websockets", "subprocess"}
        if path.name != "endpoint.py":
            forbidden.add("asyncio")
        assert not imported & forbidden, (path.name, imported & forbidden)
