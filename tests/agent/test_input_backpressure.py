"""A session's input never blocks the agent (issue 16, item 15), on a real AgentSession: what
a process does not read waits in a bounded buffer, client input beyond it stays
unacknowledged, and once the process reads again the agent itself delivers what it held back
(the peer here never retransmits, so nothing else could)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

from agentpeer import REG, Peer, task

from hatchway.agent.session import AgentSession, SessionSettings
from hatchway.agent.shell import INPUT_HIGH_WATER


class NoResendPeer(Peer):
    async def _resend(self) -> None:
        await asyncio.Event().wait()


async def _until(cond: object, what: str) -> None:
    deadline = time.monotonic() + 20
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.02)


def test_held_input_is_delivered_when_the_process_reads_again() -> None:
    fifo = Path(f"/tmp/hatchway-gate-{uuid.uuid4().hex}")
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)  # the session runs as ssm-user
    size = 600_000

    async def go() -> None:
        async with NoResendPeer() as peer:
            doc = {"schemaVersion": "1.0", "sessionType": "Standard_Stream"}
            session = AgentSession(REG, task(peer, doc), SessionSettings())
            run = asyncio.create_task(session.run())
            await asyncio.wait_for(peer.connected.wait(), 10)
            # Raw input (no line editing), then a process that reads nothing until the gate
            # opens, then reads exactly `size` bytes.
            await peer.send(
                f'stty -echo -icanon; echo RE""ADY; read -r _ < {fifo}; '
                f"printf 'read=%s.' \"$(head -c {size} | wc -c)\"\n".encode()
            )
            await peer.wait_for(b"READY")
            piece = b"x" * 32768
            for start in range(0, size, len(piece)):
                await peer.send(piece[: size - start])
            plugin = session.plugin
            assert plugin is not None
            await _until(lambda: not plugin.accepting(), "the agent stops taking input")
            assert peer.stream.unacked_count > 0  # held back, not acknowledged
            assert len(plugin.shell._input) < INPUT_HIGH_WATER + len(piece)  # type: ignore[attr-defined]
            gate = await asyncio.to_thread(os.open, fifo, os.O_WRONLY)
            os.write(gate, b"go\n")
            os.close(gate)
            await peer.wait_for(f"read={size}.".encode())  # all of it, in order
            assert peer.stream.unacked_count == 0
            await session.terminate()
            await asyncio.wait_for(run, 10)

    try:
        asyncio.run(go())
    finally:
        fifo.unlink()
