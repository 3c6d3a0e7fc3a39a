"""A load generator's HTTP/1.1 client and SigV4 signer, kept lean so that the client process
leaves the machine's CPU to the server it measures (the role ``wrk`` plays elsewhere).

* :class:`Signer` builds each request exactly as boto3 does (``X-Amz-Target``, the JSON 1.1 or
  Query content type, ``User-Agent``, ``Content-Length``) and signs it with SigV4 through the
  plugin's botocore-free signer (``hatchway.client.fastsign``). At start-up it signs a sample
  request that way and with botocore's ``SigV4Auth`` at the same instant, and refuses to run
  unless both give the same headers: the broker sees boto3's bytes.
* :class:`Connection` is one keep-alive HTTP/1.1 connection on an asyncio ``Protocol``:
  one request in flight, responses framed by ``Content-Length`` (what the broker sends).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from hatchway.client.fastsign import StaticCredentials, sign_headers


class Signer:
    """boto3's requests to one endpoint, signed for one access key."""

    def __init__(self, url: str, key: str, secret: str, region: str, agent: str) -> None:
        rest = url.split("://", 1)[1].rstrip("/")
        self.host = rest.split("/", 1)[0]
        self.url = url.rstrip("/") + "/"
        self.key, self.secret, self.region, self.agent = key, secret, region, agent
        self.credentials = StaticCredentials(key, secret)
        self._check_against_botocore()

    def _sign(
        self, service: str, body: bytes, headers: dict[str, str], now: datetime | None = None
    ) -> dict[str, str]:
        # botocore signs every header but User-Agent (and a few others boto3 never sends).
        signed = {k: v for k, v in headers.items() if k != "User-Agent"}
        signed["Host"] = self.host
        auth = sign_headers(
            "POST", "/", "", signed, body, self.credentials, self.region, service, now
        )
        return {**headers, **auth}

    def _json_headers(self, target: str, body: bytes) -> dict[str, str]:
        return {
            "X-Amz-Target": f"AmazonSSM.{target}",
            "Content-Type": "application/x-amz-json-1.1",
            "User-Agent": self.agent,
            "Content-Length": str(len(body)),
        }

    def _query_headers(self, body: bytes) -> dict[str, str]:
        return {
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "User-Agent": self.agent,
            "Content-Length": str(len(body)),
        }

    def ssm(self, target: str, params: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(params).encode()
        return body, self._sign("ssm", body, self._json_headers(target, body))

    def sts(self, action: str) -> tuple[bytes, dict[str, str]]:
        body = f"Action={action}&Version=2011-06-15".encode()
        return body, self._sign("sts", body, self._query_headers(body))

    def botocore(self, service: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
        """The same request signed by botocore's ``SigV4Auth`` (what boto3 sends)."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        req = AWSRequest("POST", self.url, data=body, headers=headers)
        SigV4Auth(Credentials(self.key, self.secret), service, self.region).add_auth(req)
        return dict(req.headers.items())

    def _check_against_botocore(self) -> None:
        from unittest import mock

        when = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
        body = json.dumps({"Target": "i-0123456789abcdef0"}).encode()
        samples = [
            ("ssm", body, self._json_headers("StartSession", body)),
            ("sts", b"Action=GetCallerIdentity&Version=2011-06-15", None),
        ]
        for service, payload, headers in samples:
            headers = headers or self._query_headers(payload)
            ours = self._sign(service, payload, headers, when)
            with mock.patch(
                "botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)
            ):
                theirs = self.botocore(service, payload, headers)
            if ours != theirs:
                raise RuntimeError(f"lean signer differs from botocore:\n{ours}\n{theirs}")


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; :meth:`request` returns ``(status, body)``."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._lost: Exception | None = None

    @classmethod
    async def open(cls, host: str) -> Connection:
        name, _, port = host.rpartition(":")
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: cls(host), name, int(port))
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionError("connection closed")
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self._lost)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0 or self._waiter is None:
            return
        head = bytes(self._buf[:end]).decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        if len(self._buf) < end + 4 + length:
            return
        body = bytes(self._buf[end + 4 : end + 4 + length])
        del self._buf[: end + 4 + length]
        status = int(head.split(" ", 2)[1])
        waiter, self._waiter = self._waiter, None
        if not waiter.done():
            waiter.set_result((status, body))

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        if self._lost is not None or self.transport is None:
            raise ConnectionError("connection closed")
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if headers is None or "Content-Length" not in headers:
            lines.append(f"Content-Length: {len(body)}")
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return await self._waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
