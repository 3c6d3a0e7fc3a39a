"""The control channel: an outbound websocket to the broker, kept open with back-off.

The upgrade request is SigV4-signed (service ``ssmmessages``) with the node's credentials, as
AWS's agent signs its control channel. The agent says hello with its facts, then sends a
heartbeat every ``pingInterval`` seconds (the broker says how often in its welcome).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from hatchway.agent.registration import Registration, host_facts

log = logging.getLogger("hatchway.agent")

MessageHandler = Callable[[dict[str, Any]], Awaitable[None]]


def signed_headers(url: str, reg: Registration) -> dict[str, str]:
    """SigV4 headers for a GET of ``url`` (http/https form), service ``ssmmessages``."""
    req = AWSRequest(method="GET", url=url)
    SigV4Auth(
        Credentials(reg.access_key_id, reg.secret_access_key), "ssmmessages", reg.region
    ).add_auth(req)
    return {k: v for k, v in req.headers.items()}


def signed_post_headers(url: str, body: bytes, reg: Registration) -> dict[str, str]:
    """SigV4 headers for a JSON POST of ``body`` to ``url``, service ``ssmmessages`` (the
    REST calls such as CreateDataChannel)."""
    req = AWSRequest(
        method="POST", url=url, data=body, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(
        Credentials(reg.access_key_id, reg.secret_access_key), "ssmmessages", reg.region
    ).add_auth(req)
    return {k: v for k, v in req.headers.items()}


BACKOFF_CAP = 5.0
"""The longest wait between two attempts to reach the broker, jitter included."""


def backoff_delays(base: float = 1.0, cap: float = BACKOFF_CAP) -> Any:
    """1, 2, 4, 5, 5 … seconds, each shortened by up to 20% (jitter, so that nodes cut off
    together do not come back in step); never more than ``cap``."""
    delay = base
    while True:
        yield min(delay, cap) * random.uniform(0.8, 1.0)
        delay = min(cap, delay * 2)


class ControlChannel:
    """Runs until cancelled: connect, greet, heartbeat, reconnect on any failure."""

    def __init__(self, reg: Registration, on_message: MessageHandler | None = None) -> None:
        self.reg = reg
        self.on_message = on_message
        self.hello_extra: Callable[[], dict[str, Any]] | None = None
        """More members of the hello (the sessions the node still runs)."""
        self.connected = asyncio.Event()
        self.connections = 0
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def send(self, message: dict[str, Any]) -> None:
        """Send a message to the broker if the channel is open (else it is dropped)."""
        ws = self.ws
        if ws is not None and not ws.closed:
            await ws.send_json(message)

    @property
    def url(self) -> str:
        return f"{self.reg.endpoint.rstrip('/')}/v1/control-channel/{self.reg.instance_id}"

    async def run(self) -> None:
        delays = backoff_delays()
        while True:
            try:
                await self._session()
                delays = backoff_delays()  # a clean session resets the back-off
            except asyncio.CancelledError:
                raise
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.warning("control channel: %s", exc)
            except Exception as exc:  # a broker's odd answer must not end the agent
                log.warning("control channel: %s: %s", type(exc).__name__, exc)
            self.connected.clear()
            delay = next(delays)
            log.info("control channel: reconnecting in %.1fs", delay)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        query = "?role=subscribe&stream=input"
        headers = signed_headers(self.url + query, self.reg)
        ws_url = "ws" + (self.url + query)[len("http") :]
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                ws_url, headers=headers, heartbeat=None, ssl=self.reg.tls_context
            ) as ws,
        ):
            self.connections += 1
            self.ws = ws
            extra = self.hello_extra() if self.hello_extra is not None else {}
            await ws.send_json({"type": "hello", **host_facts(), **extra})
            self.connected.set()
            log.info("control channel open (%s)", self.reg.instance_id)
            interval = 20.0
            beat: asyncio.Task[None] | None = None

            async def heartbeat() -> None:
                while True:
                    await asyncio.sleep(interval)
                    await ws.send_json({"type": "heartbeat"})

            try:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    data = msg.json()
                    if data.get("type") == "welcome":
                        interval = float(data.get("pingInterval", interval))
                        if beat is None:
                            beat = asyncio.create_task(heartbeat())
                    elif self.on_message is not None:
                        await self.on_message(data)
            finally:
                self.ws = None
                if beat is not None:
                    beat.cancel()
            log.info("control channel closed by the broker (code %s)", ws.close_code)
