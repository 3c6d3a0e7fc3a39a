"""Registering a node with an activation, once; the node's credentials stay in the state dir.

``DIR/registration.json`` (instance id, region, account, endpoint) and ``DIR/credentials``
(AWS credentials-file format) are created with mode 0600 before anything is written to them.
The activation code is used for the registration request only and never written anywhere.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import socket
import ssl
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from hatchway import __version__

AGENT_NAME = "hatchway-agent"
AGENT_VERSION = __version__
"""What the node reports to the broker (registration, control channel's hello): Hatchway's own
name and version, shown as AgentVersion by DescribeInstanceInformation. Not the version the data
channel's handshake announces to clients: that is :data:`hatchway.protocol.AGENT_VERSION`, an
AWS agent version above every gate of AWS's session-manager-plugin (smux, keep-alive, ...)."""


class RegistrationError(Exception):
    """The broker refused the registration (``code``: AWS-style error code)."""

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        """A server error (5xx, or an answer that is not the broker's JSON): try again."""


@dataclass
class Registration:
    instance_id: str
    region: str
    account_id: str
    endpoint: str
    access_key_id: str
    secret_access_key: str
    ca_file: str | None = None
    """CA bundle (PEM) the broker's certificate is checked against (``--ca-file``; None: the
    system store, or ``SSL_CERT_FILE``). Set on every start, never saved."""

    @property
    def tls_context(self) -> ssl.SSLContext:
        """The TLS context for https/wss to the broker."""
        return client_context(self.ca_file)

    @property
    def ca_bundle(self) -> str | None:
        """The same trust as a CA bundle path, for botocore (which otherwise trusts certifi's
        bundle, not the system store): ``--ca-file``, else ``SSL_CERT_FILE``, else the system
        store's bundle file; None if there is none."""
        if self.ca_file:
            return self.ca_file
        if os.environ.get("SSL_CERT_FILE"):
            return os.environ["SSL_CERT_FILE"]
        cafile = ssl.get_default_verify_paths().cafile
        return cafile if cafile and os.path.exists(cafile) else None


@functools.lru_cache(maxsize=8)
def client_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context: ``ca_file`` only, or the system store (and
    ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``, which OpenSSL reads) without one."""
    return ssl.create_default_context(cafile=ca_file)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def load(state_dir: Path) -> Registration | None:
    reg = state_dir / "registration.json"
    creds = state_dir / "credentials"
    if not reg.exists() or not creds.exists():
        return None
    data = json.loads(reg.read_text())
    keys: dict[str, str] = {}
    for line in creds.read_text().splitlines():
        k, eq, v = line.partition("=")
        if eq:
            keys[k.strip()] = v.strip()
    return Registration(
        data["instance_id"],
        data["region"],
        data["account_id"],
        data["endpoint"],
        keys["aws_access_key_id"],
        keys["aws_secret_access_key"],
    )


def save(state_dir: Path, reg: Registration) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    public = {
        k: v
        for k, v in asdict(reg).items()
        if k not in ("access_key_id", "secret_access_key", "ca_file")
    }
    _write_private(
        state_dir / "credentials",
        f"[default]\naws_access_key_id = {reg.access_key_id}\n"
        f"aws_secret_access_key = {reg.secret_access_key}\n",
    )
    _write_private(state_dir / "registration.json", json.dumps(public, indent=2) + "\n")


def os_release(path: str = "/etc/os-release") -> tuple[str, str]:
    """The distribution's name and version (``NAME``, ``VERSION_ID`` of os-release(5)), which
    AWS's agent reports as PlatformName / PlatformVersion (e.g. ``Ubuntu`` / ``22.04``);
    the kernel's name and release where the file is missing."""
    fields: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep and key in ("NAME", "VERSION_ID"):
                    fields[key] = value.strip().strip("\"'")
    except OSError:
        pass
    return (fields.get("NAME") or platform.system(), fields.get("VERSION_ID") or platform.release())


def host_facts() -> dict[str, Any]:
    name, version = os_release()
    try:
        ip = socket.gethostbyname(socket.gethostname())
    except OSError:
        ip = "127.0.0.1"
    return {
        "ComputerName": socket.gethostname(),
        "PlatformName": name,
        "PlatformVersion": version,
        "PlatformType": "Linux",
        "IPAddress": ip,
        "AgentName": AGENT_NAME,
        "AgentVersion": AGENT_VERSION,
    }


async def register(
    endpoint: str,
    activation_id: str,
    activation_code: str,
    instance_id: str | None,
    state_dir: Path,
    ca_file: str | None = None,
) -> Registration:
    """Register with the broker unless ``state_dir`` already holds a registration."""
    existing = load(state_dir)
    if existing is not None:
        existing.ca_file = ca_file
        return existing
    body = {"ActivationId": activation_id, "ActivationCode": activation_code, **host_facts()}
    if instance_id:
        body["InstanceId"] = instance_id
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            endpoint.rstrip("/") + "/hatchway/v1/register", json=body, ssl=client_context(ca_file)
        ) as resp,
    ):
        try:
            data = await resp.json(content_type=None)
        except ValueError:
            data = None
    if not isinstance(data, dict):
        raise RegistrationError(str(resp.status), "the answer is not JSON", retryable=True)
    if resp.status != 200:
        raise RegistrationError(
            str(data.get("__type", resp.status)),
            str(data.get("message", "")),
            retryable=resp.status >= 500,
        )
    reg = Registration(
        data["InstanceId"],
        data["Region"],
        data["AccountId"],
        endpoint,
        data["AccessKeyId"],
        data["SecretAccessKey"],
        ca_file,
    )
    save(state_dir, reg)
    return reg
