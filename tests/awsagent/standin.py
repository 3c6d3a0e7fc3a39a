"""A Python stand-in for AWS's amazon-ssm-agent 3.3: it speaks that agent's dialect on the wire.

What it sends, in the agent's order (docs/aws-agent.md; checked against the agent's source):
RegisterManagedInstance unsigned with an RSA public key and fingerprint, a chunked body;
RequestManagedInstanceRoleToken and UpdateManagedInstancePublicKey signed with the RSA variant of
SigV4 (SigV4's canonical request and string to sign, RSASSA-PSS SHA-256 salt 32 in place of the
HMAC, the instance id as access key id: built here with botocore's own SigV4 code, not the
broker's); UpdateInstanceInformation with the role credentials; CreateControlChannel (201 + XML);
the control channel (``stream=input``, OpenControlChannelInput, binary AgentMessages);
CreateDataChannel and the data channel with ``ClientInstanceId`` for each session.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from hatchway.protocol import frames

JSON_TYPE = "application/x-amz-json-1.1"


class RsaSigV4(SigV4Auth):
    """botocore's SigV4 with the agent's RSA-PSS signature in place of the HMAC."""

    def __init__(self, instance_id: str, key: rsa.RSAPrivateKey, region: str) -> None:
        super().__init__(Credentials(instance_id, "unused"), "ssm", region)
        self.key = key

    def signature(self, string_to_sign: str, request: Any) -> str:
        raw = self.key.sign(
            string_to_sign.encode(),
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
            hashes.SHA256(),
        )
        return base64.b64encode(raw).decode()


@dataclass
class RoleCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: float
    update_key_pair: bool


def public_key_text(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def xml_token(text: str) -> str:
    root = ET.fromstring(text)
    node = root.find("TokenValue")
    assert node is not None and node.text, text
    return node.text


class StandIn:
    """One node of AWS's agent's kind, driven step by step by a test."""

    def __init__(self, url: str, ca: str, region: str) -> None:
        self.url = url.rstrip("/")
        self.host = urlsplit(url).netloc
        self.region = region
        self.ssl = ssl.create_default_context(cafile=ca)
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.fingerprint = str(uuid.uuid4())
        self.instance_id = ""
        self.creds: RoleCredentials | None = None
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> StandIn:
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.ssl))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.http is not None
        await self.http.close()

    # --- SSM (JSON 1.1) ----------------------------------------------------------------------

    async def _post(
        self, headers: dict[str, str], body: bytes, url: str | None = None
    ) -> tuple[int, Any]:
        assert self.http is not None

        async def chunked() -> AsyncIterator[bytes]:  # the agent's SDK sends bodies chunked
            yield body

        async with self.http.post(url or self.url + "/", data=chunked(), headers=headers) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text) if text else {}
            except ValueError:
                return r.status, text

    async def ssm_unsigned(self, op: str, body: dict[str, Any]) -> tuple[int, Any]:
        headers = {"Content-Type": JSON_TYPE, "X-Amz-Target": f"AmazonSSM.{op}"}
        return await self._post(headers, json.dumps(body).encode())

    def rsa_headers(
        self, op: str, body: bytes, key: rsa.RSAPrivateKey | None = None
    ) -> dict[str, str]:
        req = AWSRequest(
            method="POST",
            url=self.url + "/",
            data=body,
            headers={"Content-Type": JSON_TYPE, "X-Amz-Target": f"AmazonSSM.{op}"},
        )
        RsaSigV4(self.instance_id, key or self.key, self.region).add_auth(req)
        return dict(req.headers.items())

    async def ssm_rsa(
        self, op: str, body: dict[str, Any], key: rsa.RSAPrivateKey | None = None
    ) -> tuple[int, Any]:
        raw = json.dumps(body).encode()
        return await self._post(self.rsa_headers(op, raw, key), raw)

    def _sigv4(
        self, method: str, url: str, body: bytes, headers: dict[str, str], service: str
    ) -> dict[str, str]:
        assert self.creds is not None
        req = AWSRequest(method=method, url=url, data=body, headers=headers)
        creds = Credentials(
            self.creds.access_key_id, self.creds.secret_access_key, self.creds.session_token
        )
        SigV4Auth(creds, service, self.region).add_auth(req)
        return dict(req.headers.items())

    async def ssm_signed(
        self, op: str, body: dict[str, Any], prefix: str = "AmazonSSM", service: str = "ssm"
    ) -> tuple[int, Any]:
        raw = json.dumps(body).encode()
        headers = {"Content-Type": JSON_TYPE, "X-Amz-Target": f"{prefix}.{op}"}
        return await self._post(self._sigv4("POST", self.url + "/", raw, headers, service), raw)

    # --- the agent's steps -----------------------------------------------------------------

    async def register(self, activation_id: str, code: str) -> str:
        status, out = await self.ssm_unsigned(
            "RegisterManagedInstance",
            {
                "ActivationCode": code,
                "ActivationId": activation_id,
                "PublicKey": public_key_text(self.key),
                "PublicKeyType": "Rsa",
                "Fingerprint": self.fingerprint,
            },
        )
        assert status == 200, out
        self.instance_id = out["InstanceId"]
        return self.instance_id

    async def role_token(self) -> RoleCredentials:
        status, out = await self.ssm_rsa(
            "RequestManagedInstanceRoleToken", {"Fingerprint": self.fingerprint}
        )
        assert status == 200, out
        self.creds = RoleCredentials(
            out["AccessKeyId"],
            out["SecretAccessKey"],
            out["SessionToken"],
            out["TokenExpirationDate"],
            out["UpdateKeyPair"],
        )
        return self.creds

    async def update_instance_information(self) -> tuple[int, Any]:
        return await self.ssm_signed(
            "UpdateInstanceInformation",
            {
                "InstanceId": self.instance_id,
                "AgentName": "amazon-ssm-agent",
                "AgentStatus": "Active",
                "AgentVersion": "3.3.0.0",
                "PlatformType": "Linux",
                "PlatformName": "Debian GNU/Linux",
                "PlatformVersion": "12",
                "IPAddress": "192.0.2.10",
                "ComputerName": "standin.example",
                "AvailabilityZone": "",
                "AvailabilityZoneId": "",
                "SSMConnectionChannel": "ssmmessages",
            },
        )

    async def rest(self, path: str, body: dict[str, Any]) -> tuple[int, str]:
        """An ssmmessages REST call (CreateControlChannel, CreateDataChannel)."""
        assert self.http is not None
        raw = json.dumps(body).encode()
        url = self.url + path
        headers = self._sigv4("POST", url, raw, {"Content-Type": "application/json"}, "ssmmessages")
        async with self.http.post(url, data=raw, headers=headers) as r:
            return r.status, await r.text()

    async def create_control_channel(self) -> str:
        status, text = await self.rest(
            f"/v1/control-channel/{self.instance_id}",
            {"MessageSchemaVersion": "1.0", "RequestId": str(uuid.uuid4())},
        )
        assert status == 201, text
        return xml_token(text)

    async def create_data_channel(self, session_id: str) -> tuple[int, str]:
        return await self.rest(
            f"/v1/data-channel/{session_id}",
            {
                "MessageSchemaVersion": "1.0",
                "RequestId": str(uuid.uuid4()),
                "ClientId": str(uuid.uuid4()),
            },
        )

    async def websocket(self, path: str) -> aiohttp.ClientWebSocketResponse:
        assert self.http is not None
        https = self.url + path
        headers = self._sigv4("GET", https, b"", {}, "ssmmessages")
        wss = "wss://" + https.split("://", 1)[1]
        return await self.http.ws_connect(wss, headers=headers, autoping=True, heartbeat=None)

    async def open_control_channel(self, token: str) -> ControlChannel:
        ws = await self.websocket(
            f"/v1/control-channel/{self.instance_id}?role=subscribe&stream=input"
        )
        await ws.send_str(
            json.dumps(
                {
                    "MessageSchemaVersion": "1.0",
                    "RequestId": str(uuid.uuid4()),
                    "TokenValue": token,
                    "AgentVersion": "3.3.0.0",
                    "PlatformType": "linux",
                }
            )
        )
        return ControlChannel(ws)

    async def open_data_channel(
        self, session_id: str, token: str
    ) -> aiohttp.ClientWebSocketResponse:
        ws = await self.websocket(f"/v1/data-channel/{session_id}?role=publish_subscribe")
        await ws.send_str(
            json.dumps(
                {
                    "MessageSchemaVersion": "1.0",
                    "RequestId": str(uuid.uuid4()),
                    "TokenValue": token,
                    "ClientInstanceId": self.instance_id,
                    "ClientId": str(uuid.uuid4()),
                }
            )
        )
        return ws


class ControlChannel:
    """The agent's control channel: read all the time (as the agent does, so that the broker's
    websocket pings are answered), AgentMessages queued for the test."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: asyncio.Queue[frames.Frame | str | None] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    await self.messages.put(frames.decode(msg.data))
                else:  # text frames are not part of this dialect: none may come
                    await self.messages.put(f"unexpected {msg.type}: {msg.data!r}")
        finally:
            await self.messages.put(None)

    async def next(self, timeout: float = 30.0) -> frames.Frame:
        item = await asyncio.wait_for(self.messages.get(), timeout)
        assert isinstance(item, frames.Frame), item or f"closed ({self.ws.close_code})"
        return item

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def wait_closed(self, timeout: float = 15.0) -> int | None:
        await asyncio.wait_for(asyncio.shield(self.reader), timeout)
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
        await self.reader


async def next_agent_message(control: ControlChannel, timeout: float = 30.0) -> frames.Frame:
    """The next binary AgentMessage the broker sent."""
    return await control.next(timeout)


def agent_message(message_type: str, payload: dict[str, Any]) -> bytes:
    return frames.encode(
        frames.Frame(
            message_type=message_type,
            sequence_number=0,
            payload_type=1,
            payload=json.dumps(payload).encode(),
            message_id=uuid.uuid4(),
            created_date=int(time.time() * 1000),
        )
    )
