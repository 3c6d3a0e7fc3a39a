"""Errors as values carrying AWS's code, message and HTTP status."""

from __future__ import annotations


class ServiceError(Exception):
    """An AWS error: ``code`` (``__type`` / ``<Code>``), ``message``, HTTP ``status``.

    ``sender`` is False for server faults (Query ``<Type>Receiver</Type>``); ``extra`` holds
    additional modeled members sent beside the message.
    """

    def __init__(
        self,
        code: str,
        message: str,
        status: int = 400,
        *,
        sender: bool = True,
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.sender = sender
        self.extra = dict(extra or {})


def access_denied(message: str, protocol: str = "json") -> ServiceError:
    """AWS's AccessDenied: ``AccessDeniedException`` (JSON) / ``AccessDenied`` (Query)."""
    if protocol == "query":
        return ServiceError("AccessDenied", message, 403)
    return ServiceError("AccessDeniedException", message, 400)


def not_found(code: str, message: str) -> ServiceError:
    return ServiceError(code, message, 404 if code == "NoSuchEntity" else 400)
