"""The agent's Port plugin against real sockets, driven through the plugin contract.

The session side is a small stand-in for :class:`~hatchway.agent.session.AgentSession` that
records what the plugin asks for (output frames, connection records, exit, resume); the
destinations are real asyncio TCP servers on loopback. End-to-end tests with the broker,
the client and the AWS CLI are in tests/client/test_port_forwarding.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import hatchway.agent.port as port_mod
from hatchway.agent.plugin import PluginError
from hatchway.agent.port import PortMode, PortPlugin, denied_networks, is_forbidden
from hatchway.protocol import AgentHandshake, Flag, PayloadType, build_flag
from hatchway.protocol.port import FRAME_BYTES
from hatchway.protocol.smux import Cmd, Decoder, SmuxFrame, encode_frame


class FakeIO:
    """What a plugin sees of its session."""

    def __init__(self, properties: dict[str, Any], client_version: str = "1.2.764.0") -> None:
        self.session_id = "alice-0123456789abcdef0"
        self.task: dict[str, Any] = {}
        self.parameters: dict[str, list[str]] = {}
        self.document: dict[str, Any] = {"sessionType": "Port", "properties": properties}
        self.settings: Any = None
        self.handshake: AgentHandshake | None = AgentHandshake("Port", properties)
        self.handshake.client_version = client_version
        self.writable = True
        self.outputs: list[tuple[int, bytes]] = []
        self.records: list[dict[str, Any]] = []
        self.exit_code: int | None = None
        self.resumed = 0
        self.smux = Decoder()

    def output(self, data: bytes, payload_type: int = PayloadType.OUTPUT) -> None:
        assert len(data) <= FRAME_BYTES
        self.outputs.append((payload_type, data))

    def exited(self, code: int) -> None:
        self.exit_code = code

    def record(self, kind: str, data: Any) -> None:
        assert kind == "conn"
        self.records.append(data)

    def resume_input(self) -> None:
        self.resumed += 1

    def frames(self) -> list[SmuxFrame]:
        """smux frames in the Output so far (consumed)."""
        data = b"".join(d for t, d in self.outputs if t == PayloadType.OUTPUT)
        self.outputs = [(t, d) for t, d in self.outputs if t != PayloadType.OUTPUT]
        return self.smux.feed(data)

    def raw(self) -> bytes:
        data = b"".join(d for t, d in self.outputs if t == PayloadType.OUTPUT)
        self.outputs = [(t, d) for t, d in self.outputs if t != PayloadType.OUTPUT]
        return data

    def flags(self) -> list[bytes]:
        return [d for t, d in self.outputs if t == PayloadType.FLAG]


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def until(cond: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


async def server(handler: Handler) -> tuple[asyncio.Server, int]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    return srv, int(srv.sockets[0].getsockname()[1])


def mux_props(port: int, **extra: str) -> dict[str, Any]:
    return {"portNumber": str(port), "type": "LocalPortForwarding", "localPortNumber": "0", **extra}


# --- addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("169.254.169.254", True),
        ("fd00:ec2::254", True),
        ("::ffff:169.254.169.254", True),  # IPv4-mapped
        ("169.254.169.253", True),  # Amazon DNS
        ("fd00:ec2::253", True),
        ("fe80::1%eth0", False),
        ("127.0.0.1", False),
        ("10.1.2.3", True),  # the extra network below
        ("not-an-address", True),
    ],
)
def test_denied_addresses(address: str, forbidden: bool) -> None:
    denied = denied_networks("10.0.0.0/8, bogus")  # a bad entry is logged and skipped
    assert is_forbidden(address, denied) is forbidden


def test_denied_networks_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(port_mod.DENIED_ENV, "192.0.2.7 2001:db8::/32")
    nets = denied_networks()
    assert ipaddress.ip_network("192.0.2.7/32") in nets
    assert is_forbidden("2001:db8::1", nets)


# --- starting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        ({"type": "LocalPortForwarding"}, "Port number is empty in session properties."),
        ({"portNumber": "99999"}, "Invalid port number 99999"),
        ({"portNumber": "²2"}, "Invalid port number ²2"),
        ({"portNumber": "22", "host": "169.254.169.254"}, "Forwarding to IP address"),
    ],
)
def test_bad_properties_refuse_the_session(properties: dict[str, Any], message: str) -> None:
    plugin = PortPlugin(FakeIO(properties))
    with pytest.raises(PluginError, match=message):
        asyncio.run(plugin.start())
    plugin.close()


@pytest.mark.parametrize(
    ("client", "port_type", "mode"),
    [
        ("1.2.764.0", "LocalPortForwarding", PortMode.MUX),
        ("1.1.70", "LocalPortForwarding", PortMode.MUX),
        ("1.1.69.0", "LocalPortForwarding", PortMode.BASIC),
        ("garbage", "LocalPortForwarding", PortMode.BASIC),
        ("1.2.764.0", "", PortMode.STREAM),
    ],
)
def test_mode_follows_type_and_client_version(client: str, port_type: str, mode: PortMode) -> None:
    async def go() -> PortMode | None:
        srv, port = await server(lambda r, w: asyncio.sleep(0))
        props = {"portNumber": str(port), **({"type": port_type} if port_type else {})}
        plugin = PortPlugin(FakeIO(props, client))
        await plugin.start()
        plugin.close()
        srv.close()
        return plugin.mode

    assert asyncio.run(go()) is mode


# --- mux ---------------------------------------------------------------------------------------


def test_mux_stream_round_trip_with_records() -> None:
    async def echo_upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readexactly(5)
        writer.write(data.upper() + b"!")
        await writer.drain()
        writer.close()

    async def go() -> FakeIO:
        srv, port = await server(echo_upper)
        io = FakeIO(mux_props(port))
        plugin = PortPlugin(io)
        await plugin.start()
        await asyncio.sleep(0)
        assert plugin.accepting() and io.resumed == 1
        plugin.on_input(PayloadType.OUTPUT, encode_frame(Cmd.SYN, 3)[:5])  # any split
        plugin.on_input(PayloadType.OUTPUT, encode_frame(Cmd.SYN, 3)[5:] + b"\x01\x02\x05")
        plugin.on_input(PayloadType.OUTPUT, b"\x00\x03\x00\x00\x00hello")
        frames: list[SmuxFrame] = []

        def fin_seen() -> bool:
            frames.extend(io.frames())
            return any(f.cmd == Cmd.FIN for f in frames)

        await until(fin_seen)
        assert frames == [SmuxFrame(Cmd.PSH, 3, b"HELLO!"), SmuxFrame(Cmd.FIN, 3)]
        plugin.on_input(PayloadType.OUTPUT, encode_frame(Cmd.FIN, 3))
        plugin.close()
        srv.close()
        return io

    io = asyncio.run(go())
    opened, closed = io.records
    assert opened["event"] == "open" and opened["stream"] == 3 and opened["host"] == "127.0.0.1"
    assert closed == {
        "event": "close",
        "stream": 3,
        "host": "127.0.0.1",
        "port": opened["port"],
        "bytes_in": 6,
        "bytes_out": 5,
        "error": None,
    }
    assert io.exit_code is None  # a mux session outlives its connections


def test_refused_connection_flags_and_closes_the_stream_only() -> None:
    async def go() -> FakeIO:
        srv, port = await server(lambda r, w: asyncio.sleep(0))
        srv.close()
        await srv.wait_closed()  # nothing listens on that port now
        io = FakeIO(mux_props(port))
        plugin = PortPlugin(io)
        await plugin.start()
        plugin.on_input(
            PayloadType.OUTPUT, encode_frame(Cmd.SYN, 3) + encode_frame(Cmd.PSH, 3, b"x")
        )
        await until(lambda: bool(io.flags()))
        assert io.flags() == [build_flag(Flag.CONNECT_TO_PORT_ERROR)]
        assert io.frames() == [SmuxFrame(Cmd.FIN, 3)]
        assert plugin.accepting()
        plugin.close()
        return io

    io = asyncio.run(go())
    (refused,) = io.records
    assert refused["event"] == "refused" and refused["stream"] == 3 and refused["error"]
    assert io.exit_code is None


def test_too_many_streams_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(port_mod, "MAX_STREAMS", 1)

    async def go() -> FakeIO:
        srv, port = await server(lambda r, w: asyncio.sleep(5))
        io = FakeIO(mux_props(port))
        plugin = PortPlugin(io)
        await plugin.start()
        plugin.on_input(PayloadType.OUTPUT, encode_frame(Cmd.SYN, 3) + encode_frame(Cmd.SYN, 5))
        await until(lambda: bool(io.flags()))
        await until(lambda: len(io.records) == 2)
        plugin.close()
        srv.close()
        return io

    io = asyncio.run(go())
    events = sorted((r["event"], r["stream"]) for r in io.records)
    assert events == [("close", 3), ("open", 3), ("refused", 5)]  # 3 closed by close()


def test_a_slow_destination_holds_client_data_back() -> None:
    # The destination does not read at first: the plugin must stop accepting client data
    # once a bounded amount is buffered, then take it again as the destination drains.
    chunk = b"z" * 60_000
    total = 400

    async def go() -> tuple[int, int, int]:
        gate = asyncio.Event()
        received = bytearray()

        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await gate.wait()
            while data := await reader.read(1 << 20):
                received.extend(data)

        srv, port = await server(slow)
        io = FakeIO(mux_props(port))
        plugin = PortPlugin(io)
        await plugin.start()
        plugin.on_input(PayloadType.OUTPUT, encode_frame(Cmd.SYN, 3))
        await until(lambda: bool(io.records))
        fed = 0
        while plugin.accepting() and fed < total:
            plugin.on_input(PayloadType.OUTPUT, encode_frame(Cmd.PSH, 3, chunk))
            fed += 1
            await asyncio.sleep(0)  # let the loop try to write
        fed_before_block = fed
        resumed = io.resumed
        gate.set()
        while fed < total:
            await until(plugin.accepting)
            plugin.on_input(PayloadType.OUTPUT, encode_frame(Cmd.PSH, 3, chunk))
            fed += 1
        await until(lambda: len(received) == total * len(chunk))
        assert io.resumed > resumed  # the session was told to deliver again
        plugin.close()
        srv.close()
        return fed_before_block, len(received), resumed

    fed_before_block, received, _ = asyncio.run(go())
    assert fed_before_block < total  # it did stop accepting
    assert received == total * len(chunk)


def test_a_full_window_pauses_the_destination_sockets() -> None:
    async def go() -> None:
        async def talker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in range(200):
                writer.write(b"y" * 65536)
                await writer.drain()
            writer.close()

        srv, port = await server(talker)
        io = FakeIO(mux_props(port))
        io.writable = False  # nothing acked: the window is full
        plugin = PortPlugin(io)
        await plugin.start()
        plugin.on_input(PayloadType.OUTPUT, encode_frame(Cmd.SYN, 3))
        await until(lambda: plugin.reading_paused)
        await asyncio.sleep(0.2)
        assert io.outputs == []  # held in the plugin while the window is full
        io.writable = True
        got = bytearray()

        def more() -> bool:
            plugin.on_writable()
            for f in io.frames():
                got.extend(f.data)
                if f.cmd == Cmd.FIN:
                    return True
            return False

        await until(more, 30)
        assert got == b"y" * 65536 * 200
        plugin.close()
        srv.close()

    asyncio.run(go())


def test_garbage_from_the_client_ends_the_session_without_crashing() -> None:
    async def go() -> FakeIO:
        srv, port = await server(lambda r, w: asyncio.sleep(0))
        io = FakeIO(mux_props(port))
        plugin = PortPlugin(io)
        await plugin.start()
        plugin.on_input(PayloadType.OUTPUT, b"\x07garbage!")
        plugin.on_input(PayloadType.OUTPUT, encode_frame(Cmd.SYN, 3))  # ignored: broken
        plugin.on_input(PayloadType.FLAG, b"\x01")  # malformed flag: logged, ignored
        await asyncio.sleep(0.05)
        plugin.close()
        srv.close()
        return io

    io = asyncio.run(go())
    assert io.exit_code == 1


def test_terminate_flag_ends_the_session() -> None:
    async def go() -> FakeIO:
        srv, port = await server(lambda r, w: asyncio.sleep(0))
        io = FakeIO(mux_props(port))
        plugin = PortPlugin(io)
        await plugin.start()
        plugin.on_input(PayloadType.FLAG, build_flag(Flag.TERMINATE_SESSION))
        plugin.close()
        srv.close()
        return io

    assert asyncio.run(go()).exit_code == 0


# --- basic and stream --------------------------------------------------------------------------


def test_stream_mode_ends_when_the_destination_closes() -> None:
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-fake\r\n")
        line = await reader.readline()
        writer.write(b"you said " + line)
        await writer.drain()
        writer.close()

    async def go() -> FakeIO:
        srv, port = await server(banner)
        io = FakeIO({"portNumber": str(port)})
        plugin = PortPlugin(io)
        await plugin.start()
        plugin.on_input(PayloadType.OUTPUT, b"\n")  # a lone newline stays a newline
        await until(lambda: io.exit_code is not None)
        plugin.close()
        srv.close()
        return io

    io = asyncio.run(go())
    assert io.raw() == b"SSH-2.0-fake\r\nyou said \n"
    assert io.exit_code == 0
    assert [r["event"] for r in io.records] == ["open", "close"]


def test_basic_mode_redials_after_disconnect_to_port() -> None:
    async def go() -> tuple[FakeIO, list[bytes]]:
        seen: list[bytes] = []

        async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await reader.read(100))
            writer.write(b"ok%d" % len(seen))
            await writer.drain()
            await reader.read()  # until we are disconnected
            writer.close()

        srv, port = await server(record)
        io = FakeIO({"portNumber": str(port), "type": "LocalPortForwarding"}, "1.0.0.0")
        plugin = PortPlugin(io)
        await plugin.start()
        got = bytearray()

        def answer(text: bytes) -> Callable[[], bool]:
            def check() -> bool:
                got.extend(io.raw())
                return got.endswith(text)

            return check

        plugin.on_input(PayloadType.OUTPUT, b"first")
        await until(answer(b"ok1"))
        plugin.on_input(PayloadType.FLAG, build_flag(Flag.DISCONNECT_TO_PORT))
        await until(lambda: len(io.records) == 2)  # the first connection closed
        plugin.on_input(PayloadType.OUTPUT, b"second")  # dials again
        await until(lambda: len(seen) == 2)
        await until(answer(b"ok2"))
        assert got == b"ok1ok2"
        assert io.exit_code is None
        plugin.close()
        srv.close()
        return io, seen

    io, seen = asyncio.run(go())
    assert seen == [b"first", b"second"]
    assert [r["event"] for r in io.records] == ["open", "close", "open", "close"]


def test_data_sent_while_dialing_keeps_its_order() -> None:
    # Client data keeps arriving while the destination is being dialed; what was buffered
    # must reach it before anything delivered after the connection came up.
    async def go() -> tuple[bytes, int]:
        received = bytearray()
        done = asyncio.Event()

        async def collect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                received.extend(data)
            done.set()

        srv, port = await server(collect)
        io = FakeIO(mux_props(port))
        plugin = PortPlugin(io)
        await plugin.start()
        plugin.on_input(PayloadType.OUTPUT, encode_frame(Cmd.SYN, 3))
        sent, after_open = 0, 0
        while after_open < 50:  # one piece per loop turn, from before the dial to well after
            plugin.on_input(PayloadType.OUTPUT, encode_frame(Cmd.PSH, 3, b"%06d," % sent))
            sent += 1
            after_open += bool(io.records)
            await asyncio.sleep(0)
        plugin.on_input(PayloadType.OUTPUT, encode_frame(Cmd.FIN, 3))
        await asyncio.wait_for(done.wait(), 10)
        plugin.close()
        srv.close()
        return bytes(received), sent

    received, sent = asyncio.run(go())
    assert received == b"".join(b"%06d," % i for i in range(sent))


def test_keepalive_nops_for_clients_that_still_run_smux_keepalive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Plugins up to 1.2.331.0 drop a smux session silent for 30 s: talk to them every 10 s.
    monkeypatch.setattr(port_mod, "KEEPALIVE_INTERVAL", 0.01)

    async def go(client: str) -> list[SmuxFrame]:
        srv, port = await server(lambda r, w: asyncio.sleep(0))
        io = FakeIO(mux_props(port), client)
        plugin = PortPlugin(io)
        await plugin.start()
        await asyncio.sleep(0.1)
        plugin.close()
        srv.close()
        return io.frames()

    old = asyncio.run(go("1.2.0.0"))
    assert old and all(f == SmuxFrame(Cmd.NOP, 0) for f in old)
    assert asyncio.run(go("1.2.764.0")) == []
