"""Secrets at rest and identifiers.

Secret access keys are stored encrypted with AES-256-GCM under a key kept in the data
directory (``master.key``, mode 0600): a copy of the database alone reveals no secret.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import string
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_UPPER_ALNUM = string.ascii_uppercase + string.digits


class SecretBox:
    """AES-256-GCM with a random 12-byte nonce per value; the output is base64 text."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the master key must be 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def from_dir(cls, data_dir: Path) -> SecretBox:
        """Load ``master.key`` from ``data_dir``, creating it (mode 0600) on first start."""
        path = data_dir / "master.key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        os.chmod(path, 0o600)
        return cls(path.read_bytes())

    def seal(self, plaintext: str, context: str = "") -> str:
        nonce = secrets.token_bytes(12)
        ct = self._aead.encrypt(nonce, plaintext.encode(), context.encode() or None)
        return base64.b64encode(nonce + ct).decode()

    def open(self, sealed: str, context: str = "") -> str:
        raw = base64.b64decode(sealed)
        return self._aead.decrypt(raw[:12], raw[12:], context.encode() or None).decode()


def unique_id(prefix: str) -> str:
    """IAM-style unique ids: AIDA… (user), AROA… (role), AGPA… (group), ANPA… (policy)."""
    return prefix + "".join(secrets.choice(_UPPER_ALNUM) for _ in range(17))


def request_id() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` gives, in a third of the
    time: every API call takes two (its request id and its audit event id)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def access_key_id(temporary: bool = False) -> str:
    return ("ASIA" if temporary else "AKIA") + "".join(
        secrets.choice(_UPPER_ALNUM) for _ in range(16)
    )


def secret_access_key() -> str:
    return base64.b64encode(secrets.token_bytes(30)).decode()


def token(nbytes: int = 32) -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(nbytes)).decode().rstrip("=")


def digest(value: str) -> str:
    """SHA-256 hex of a secret we only need to recognise (tokens, activation codes)."""
    return hashlib.sha256(value.encode()).hexdigest()
