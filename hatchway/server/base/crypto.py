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
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_UPPER_ALNUM = string.ascii_uppercase + string.digits


class SecretBox:
    """AES-256-GCM with a random 12-byte nonce per value; the output is base64 text.

    A keyring: values are sealed with the current key (``master.key``) and opened with it or
    with the previous one (``master.key.previous``) while a rotation re-seals them
    (``hatchway key rotate``, docs/backup.md). A box made :meth:`from_dir` notices when the
    key files change (checked at most every :attr:`RELOAD_INTERVAL` seconds, and at once when
    no key opens a value) and reloads them, so running brokers follow a rotation without a
    restart.
    """

    RELOAD_INTERVAL = 1.0

    def __init__(
        self, key: bytes, previous: Sequence[bytes] = (), source: Path | None = None
    ) -> None:
        self._use(key, previous)
        self._source = source
        self._stamp = _key_stamp(source) if source is not None else None
        self._checked = time.monotonic()

    def _use(self, key: bytes, previous: Sequence[bytes]) -> None:
        if len(key) != 32 or any(len(k) != 32 for k in previous):
            raise ValueError("the master key must be 32 bytes")
        self._aead = AESGCM(key)
        self._previous = [AESGCM(k) for k in previous if k != key]

    @classmethod
    def from_dir(cls, data_dir: Path) -> SecretBox:
        """Load ``master.key`` from ``data_dir``, creating it (mode 0600) on first start."""
        path = data_dir / "master.key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        os.chmod(path, 0o600)
        key, previous = read_keys(data_dir)
        return cls(key, previous, data_dir)

    def _reload(self, force: bool = False) -> bool:
        """Re-read the key files if they changed; whether the keys did."""
        if self._source is None:
            return False
        now = time.monotonic()
        if not force and now - self._checked < self.RELOAD_INTERVAL:
            return False
        self._checked = now
        stamp = _key_stamp(self._source)
        if stamp == self._stamp:
            return False
        try:
            key, previous = read_keys(self._source)
            self._use(key, previous)
        except (OSError, ValueError):
            return False  # a rotation half-way through its renames: the next check sees it
        self._stamp = stamp
        return True

    def seal(self, plaintext: str, context: str = "") -> str:
        self._reload()
        nonce = secrets.token_bytes(12)
        ct = self._aead.encrypt(nonce, plaintext.encode(), context.encode() or None)
        return base64.b64encode(nonce + ct).decode()

    def open(self, sealed: str, context: str = "") -> str:
        self._reload()
        raw = base64.b64decode(sealed)
        try:
            return self._open(raw, context)
        except InvalidTag:
            if not self._reload(force=True):
                raise
            return self._open(raw, context)

    def _open(self, raw: bytes, context: str) -> str:
        aad = context.encode() or None
        for aead in (self._aead, *self._previous):
            try:
                return aead.decrypt(raw[:12], raw[12:], aad).decode()
            except InvalidTag:
                continue
        raise InvalidTag()

    def is_current(self, sealed: str, context: str = "") -> bool:
        """Whether ``sealed`` is sealed with the current key (a rotation is done with it)."""
        raw = base64.b64decode(sealed)
        try:
            self._aead.decrypt(raw[:12], raw[12:], context.encode() or None)
        except InvalidTag:
            return False
        return True


KEY_FILE = "master.key"
PREVIOUS_KEY_FILE = "master.key.previous"


def read_keys(data_dir: Path) -> tuple[bytes, list[bytes]]:
    """The current key and the previous one (while a rotation runs) from ``data_dir``."""
    key = (data_dir / KEY_FILE).read_bytes()
    previous = data_dir / PREVIOUS_KEY_FILE
    return key, [previous.read_bytes()] if previous.exists() else []


def _key_stamp(data_dir: Path) -> tuple[tuple[int, int] | None, ...]:
    stamps: list[tuple[int, int] | None] = []
    for name in (KEY_FILE, PREVIOUS_KEY_FILE):
        try:
            st = os.stat(data_dir / name)
        except FileNotFoundError:
            stamps.append(None)
        else:
            stamps.append((st.st_ino, st.st_mtime_ns))
    return tuple(stamps)


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
