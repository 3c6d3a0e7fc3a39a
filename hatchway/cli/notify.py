"""systemd's readiness protocol (``Type=notify``): a datagram to ``$NOTIFY_SOCKET``.

The service manager passes the path of a datagram socket in ``NOTIFY_SOCKET`` (a leading ``@``
names one in the abstract namespace); the service sends newline-separated ``KEY=VALUE``
assignments to it: ``READY=1`` once it serves, ``STATUS=…`` for ``systemctl status``,
``STOPPING=1`` when it begins to stop (sd_notify(3)). Without ``NOTIFY_SOCKET`` (not under
systemd) nothing is sent. The variable is taken out of the environment at the first message,
so that nothing the broker or the agent starts (API workers, session shells) inherits it.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("hatchway.notify")

_ADDRESS: list[str | None] = []


def _address() -> str | None:
    if not _ADDRESS:
        _ADDRESS.append(os.environ.pop("NOTIFY_SOCKET", None))
    return _ADDRESS[0]


def notify(message: str) -> bool:
    """Send ``message`` (``READY=1``, ``STATUS=…``; several joined by newlines) to the service
    manager; whether it was sent. A failure is logged, never raised: readiness reporting must
    not stop the service."""
    address = _address()
    if not address:
        return False
    if address.startswith("@"):
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        log.warning("NOTIFY_SOCKET=%s: only unix socket paths are supported", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("could not notify the service manager at %s: %s", address, exc)
        return False
    return True


def reset() -> None:
    """Forget the address read (tests)."""
    _ADDRESS.clear()
