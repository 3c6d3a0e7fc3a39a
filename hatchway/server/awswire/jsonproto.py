"""AWS JSON 1.1 (SSM): operation from ``X-Amz-Target``, request bodies, responses, errors.

Request bodies are decoded per the operation's input shape: members are looked up by their
wire name (unknown ones ignored, JSON ``null`` treated as absent), timestamps become aware
UTC ``datetime`` objects (epoch seconds, or ISO 8601 strings), blobs are base64-decoded.
A JSON type that does not fit the shape is a ``SerializationException`` worded as AWS's
Coral front end words it (e.g. ``STRING_VALUE cannot be converted to Integer``,
``Start of structure or map found where not expected``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
import math
import re
from collections.abc import Callable
from email.utils import format_datetime
from typing import Any

from botocore.model import OperationModel, ServiceModel

from hatchway.server.awswire.models import ShapeInfo, input_info, operation, output_info
from hatchway.server.base.errors import ServiceError

__all__ = [
    "CONTENT_TYPE",
    "load_document",
    "parse_json_body",
    "parse_target",
    "serialize_json_error",
    "serialize_json_output",
]

CONTENT_TYPE = "application/x-amz-json-1.1"

_INT_BOUNDS: dict[str, tuple[int, int, str]] = {
    "integer": (-(2**31), 2**31 - 1, "Integer"),
    "long": (-(2**63), 2**63 - 1, "Long"),
    "short": (-(2**15), 2**15 - 1, "Short"),
    "byte": (-(2**7), 2**7 - 1, "Byte"),
}


def parse_target(header: str | None, service: ServiceModel) -> OperationModel:
    """Return the operation named by an ``X-Amz-Target`` header (``AmazonSSM.StartSession``).

    Raises ``UnknownOperationException`` when the header is missing, has another service's
    prefix, or names no operation of ``service``.
    """
    if not header:
        raise ServiceError("UnknownOperationException", "Missing X-Amz-Target header")
    prefix, _, name = header.strip().rpartition(".")
    op = operation(service, name) if prefix == service.metadata.get("targetPrefix") else None
    if op is None:
        raise ServiceError("UnknownOperationException", f"Unknown operation {header.strip()}")
    return op


# --------------------------------------------------------------------------- request decoding


class _Mismatch(Exception):
    """A JSON value of the wrong kind for its shape; the message is AWS's."""


def _token(value: object) -> str:
    """Jackson's token name for a JSON scalar, as it appears in Coral's messages."""
    if value is True:
        return "TRUE_VALUE"
    if value is False:
        return "FALSE_VALUE"
    if isinstance(value, int):
        return "NUMBER_VALUE"
    if isinstance(value, float):
        return "DECIMAL_VALUE"
    return "STRING_VALUE"


def _not_expected(value: object, java_type: str) -> _Mismatch:
    if isinstance(value, dict):
        return _Mismatch("Start of structure or map found where not expected")
    if isinstance(value, list):
        return _Mismatch("Start of list found where not expected")
    return _Mismatch(f"{_token(value)} cannot be converted to {java_type}")


def _dec_string(info: ShapeInfo, value: Any) -> Any:
    if isinstance(value, str):
        return value
    raise _not_expected(value, "String")


def _dec_int(info: ShapeInfo, value: Any) -> Any:
    lo, hi, java = _INT_BOUNDS.get(info.type, _INT_BOUNDS["long"])
    if isinstance(value, int) and not isinstance(value, bool):
        if lo <= value <= hi:
            return value
        raise _Mismatch(f"NUMBER_VALUE cannot be converted to {java}")
    raise _not_expected(value, java)


def _dec_float(info: ShapeInfo, value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
        return float(value.replace("Infinity", "inf"))
    raise _not_expected(value, "Double" if info.type == "double" else "Float")


def _dec_bool(info: ShapeInfo, value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        raise _Mismatch("Unexpected token received from parser")
    raise _not_expected(value, "Boolean")


def _dec_timestamp(info: ShapeInfo, value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return _dt.datetime.fromtimestamp(value, _dt.UTC)
        except (OverflowError, OSError, ValueError):
            raise _Mismatch(f"{_token(value)} cannot be converted to Timestamp") from None
    if isinstance(value, str):
        parsed = parse_timestamp_text(value)
        if parsed is not None:
            return parsed
    raise _not_expected(value, "Timestamp")


def parse_timestamp_text(text: str) -> _dt.datetime | None:
    """Parse epoch seconds or ISO 8601 text into an aware UTC datetime; ``None`` if neither."""
    text = text.strip()
    try:
        return _dt.datetime.fromtimestamp(float(text), _dt.UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        parsed = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=_dt.UTC)
    return parsed.astimezone(_dt.UTC)


def _dec_blob(info: ShapeInfo, value: Any) -> Any:
    if not isinstance(value, str):
        if isinstance(value, dict | list):
            raise _not_expected(value, "ByteBuffer")
        raise _Mismatch("only base-64-encoded strings are convertible to bytes")
    if len(value) % 4:
        raise _Mismatch(
            f"Base64 encoded length is expected a multiple of 4 bytes but found: {len(value)}"
        )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _Mismatch("Invalid Base64 character detected") from None


def _dec_structure(info: ShapeInfo, value: Any) -> Any:
    if info.document:
        return value
    if not isinstance(value, dict):
        if isinstance(value, list):
            raise _Mismatch("Start of list found where not expected")
        raise _Mismatch("Unexpected field type")
    out: dict[str, Any] = {}
    by_wire = info.by_wire
    for key, raw in value.items():
        member = by_wire.get(key)
        if member is None or raw is None:
            continue
        out[member.name] = _decode(member.info, raw)
    return out


def _dec_list(info: ShapeInfo, value: Any) -> Any:
    if not isinstance(value, list):
        if isinstance(value, dict):
            raise _Mismatch("Start of structure or map found where not expected")
        raise _Mismatch("Unexpected field type")
    element = info.member
    if element is None:  # pragma: no cover - every list shape has a member
        return value
    return [None if item is None else _decode(element, item) for item in value]


def _dec_map(info: ShapeInfo, value: Any) -> Any:
    if not isinstance(value, dict):
        if isinstance(value, list):
            raise _Mismatch("Start of list found where not expected")
        raise _Mismatch("Unexpected field type")
    key_info, value_info = info.key, info.value
    if key_info is None or value_info is None:  # pragma: no cover
        return value
    return {
        _decode(key_info, k): None if v is None else _decode(value_info, v)
        for k, v in value.items()
    }


_DECODERS: dict[str, Callable[[ShapeInfo, Any], Any]] = {
    "structure": _dec_structure,
    "list": _dec_list,
    "map": _dec_map,
    "string": _dec_string,
    "character": _dec_string,
    "integer": _dec_int,
    "long": _dec_int,
    "short": _dec_int,
    "byte": _dec_int,
    "float": _dec_float,
    "double": _dec_float,
    "boolean": _dec_bool,
    "timestamp": _dec_timestamp,
    "blob": _dec_blob,
}


def _decode(info: ShapeInfo, value: Any) -> Any:
    decoder = _DECODERS.get(info.type)
    return value if decoder is None else decoder(info, value)


_TOO_DEEP = "Request body nested too deeply"
_LONE_SURROGATE = "Malformed JSON request body: a string holds an unpaired UTF-16 surrogate"
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""A ``\\uD800``-``\\uDFFF`` escape: only then can the decoded document hold a lone
surrogate (raw UTF-8 cannot encode one), so only then is the document walked."""


def _has_lone_surrogate(value: Any) -> bool:
    """Whether any string (key or value) in a decoded JSON document is not valid Unicode text:
    a ``\\uD800`` escape without its pair. Such a string cannot be stored, logged as UTF-8 or
    echoed in an error, so the body is refused as malformed."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def load_document(body: bytes) -> Any:
    """``json.loads`` for a request body, every failure a ``SerializationException``: invalid
    JSON or UTF-8, nesting too deep for the parser, a string with a lone surrogate."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ServiceError(
            "SerializationException", f"Malformed JSON request body: {exc}"
        ) from None
    except RecursionError:
        raise ServiceError("SerializationException", _TOO_DEEP) from None
    if _SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(document):
        raise ServiceError("SerializationException", _LONE_SURROGATE)
    return document


def parse_json_body(op: OperationModel, body: bytes) -> dict[str, Any]:
    """Decode a JSON 1.1 request body into botocore-style parameters for ``op``.

    An empty body counts as ``{}``. Raises ``SerializationException`` for invalid JSON, a
    non-object document, or a member whose JSON type does not fit its shape.
    """
    if not body.strip():
        return {}
    document = load_document(body)
    info = input_info(op)
    try:
        if info is None:
            if not isinstance(document, dict):
                raise _not_expected(document, "Object")
            return {}
        parsed = _dec_structure(info, document)
    except _Mismatch as exc:
        raise ServiceError("SerializationException", str(exc)) from None
    except RecursionError:
        raise ServiceError("SerializationException", _TOO_DEEP) from None
    result: dict[str, Any] = parsed
    return result


# --------------------------------------------------------------------------- responses


def _epoch(value: _dt.datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    return round(value.timestamp(), 3)


def _iso(value: _dt.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(_dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{value.microsecond // 1000:03d}Z" if value.microsecond else "Z"
    )


def _rfc822(value: _dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    return format_datetime(value.astimezone(_dt.UTC), usegmt=True)


_TIMESTAMP_FORMATS: dict[str, Callable[[_dt.datetime], object]] = {
    "unixTimestamp": _epoch,
    "iso8601": _iso,
    "rfc822": _rfc822,
}


def _enc_timestamp(info: ShapeInfo, value: Any) -> Any:
    if not isinstance(value, _dt.datetime):
        return value
    return _TIMESTAMP_FORMATS.get(info.timestamp_format or "unixTimestamp", _epoch)(value)


def _enc_blob(info: ShapeInfo, value: Any) -> Any:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return base64.b64encode(raw).decode("ascii")


def _enc_float(info: ShapeInfo, value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _enc_structure(info: ShapeInfo, value: Any) -> Any:
    if info.document:
        return value
    out: dict[str, Any] = {}
    for member in info.members:
        item = value.get(member.name)
        if item is not None:
            out[member.wire] = _encode(member.info, item)
    return out


def _enc_list(info: ShapeInfo, value: Any) -> Any:
    element = info.member
    assert element is not None
    return [_encode(element, item) for item in value if item is not None]


def _enc_map(info: ShapeInfo, value: Any) -> Any:
    value_info = info.value
    assert value_info is not None
    return {k: _encode(value_info, v) for k, v in value.items() if v is not None}


_ENCODERS: dict[str, Callable[[ShapeInfo, Any], Any]] = {
    "structure": _enc_structure,
    "list": _enc_list,
    "map": _enc_map,
    "timestamp": _enc_timestamp,
    "blob": _enc_blob,
    "float": _enc_float,
    "double": _enc_float,
}


def _encode(info: ShapeInfo, value: Any) -> Any:
    encoder = _ENCODERS.get(info.type)
    return value if encoder is None else encoder(info, value)


def _dumps(document: object) -> bytes:
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: escaped, as JSON can carry it
        return json.dumps(document, separators=(",", ":"), default=_json_default).encode()


def _json_default(value: object) -> object:
    if isinstance(value, _dt.datetime):
        return _epoch(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def serialize_json_output(op: OperationModel, data: dict[str, Any]) -> bytes:
    """Encode ``data`` as ``op``'s JSON 1.1 response body.

    Only members of the output shape are written, ``None`` members are dropped,
    datetimes become epoch seconds (millisecond precision), bytes become base64.
    """
    info = output_info(op)
    if info is None:
        return b"{}"
    return _dumps(_enc_structure(info, data))


_RESERVED_ERROR_KEYS = frozenset({"__type", "message", "Message"})


def serialize_json_error(err: ServiceError) -> tuple[int, dict[str, str], bytes]:
    """Return ``(status, headers, body)`` for an error in AWS JSON 1.1.

    The body is ``{"__type": code, "message": msg, "Message": msg, **extra}``; botocore
    reads the code from ``__type`` and the message from either spelling.
    """
    document: dict[str, object] = {
        "__type": err.code,
        "message": err.message,
        "Message": err.message,
    }
    for key, value in err.extra.items():
        if key not in _RESERVED_ERROR_KEYS:
            document[key] = value
    headers = {"Content-Type": CONTENT_TYPE, "x-amzn-ErrorType": err.code}
    return err.status, headers, _dumps(document)
