"""Registering a node with an activation, once; the node's credentials stay in the state dir.

``DIR/registration.json`` (instance id, region, account, endpoint) and ``DIR/credentials``
(AWS credentials-file format) are created with mode 0600 before anything is written to them.
The activation code is used for the registration request only and never written anywhere.
"""

from __future__ import annotations

import json
import os
import platform
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

AGENT_VERSION = "3.3.0.0"


class RegistrationError(Exception):
    """The broker refused the registration (``code``: AWS-style error code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class Registration:
    instance_id: str
    region: str
    account_id: str
    endpoint: str
    access_key_id: str
    secret_access_key: str


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
        k: v for k, v in asdict(reg).items() if k not in ("access_key_id", "secret_access_key")
    }
    _write_private(
        state_dir / "credentials",
        f"[default]\naws_access_key_id = {reg.access_key_id}\n"
        f"aws_secret_access_key = {reg.secret_access_key}\n",
    )
    _write_private(state_dir / "registration.json", json.dumps(public, indent=2) + "\n")


def host_facts() -> dict[str, Any]:
    try:
        ip = socket.gethostbyname(socket.gethostname())
    except OSError:
        ip = "127.0.0.1"
    return {
        "ComputerName": socket.gethostname(),
        "PlatformName": platform.system(),
        "PlatformVersion": platform.release(),
        "PlatformType": "Linux",
        "IPAddress": ip,
        "AgentVersion": AGENT_VERSION,
    }


async def register(
    endpoint: str,
    activation_id: str,
    activation_code: str,
    instance_id: str | None,
    state_dir: Path,
) -> Registration:
    """Register with the broker unless ``state_dir`` already holds a registration."""
    existing = load(state_dir)
    if existing is not None:
        return existing
    body = {"ActivationId": activation_id, "ActivationCode": activation_code, **host_facts()}
    if instance_id:
        body["InstanceId"] = instance_id
    async with (
        aiohttp.ClientSession() as http,
        http.post(endpoint.rstrip("/") + "/hatchway/v1/register", json=body) as resp,
    ):
        data = await resp.json(content_type=None)
    if resp.status != 200:
        raise RegistrationError(str(data.get("__type", resp.status)), str(data.get("message", "")))
    reg = Registration(
        data["InstanceId"],
        data["Region"],
        data["AccountId"],
        endpoint,
        data["AccessKeyId"],
        data["SecretAccessKey"],
    )
    save(state_dir, reg)
    return reg
