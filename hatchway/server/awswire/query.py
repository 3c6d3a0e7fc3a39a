"""AWS Query protocol (IAM, STS): form parameters in, XML out.

Input parameters are decoded per the operation's input shape, the way botocore's
``QuerySerializer`` encodes them: ``Name.Field`` for structures, ``Name.member.N`` for
lists (1-based; a lone ``Name=`` is an empty list), ``Name.entry.N.key`` / ``.value`` for
maps, with the models' ``locationName`` and ``flattened`` traits honoured. Scalars are
converted (``true``/``false``, integers, ISO 8601 timestamps, base64 blobs); a value of the
wrong type is a ``ValidationError`` worded like AWS's validation messages.

Responses are ``<OpResponse xmlns=…><OpResult>…</OpResult><ResponseMetadata>…`` with
lists as ``<member>``, maps as ``<entry><key/><value/></entry>``, timestamps as
``2026-11-27T20:31:07Z`` and booleans in lower case.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from botocore.model import OperationModel, ServiceModel

from hatchway.server.awswire.jsonproto import parse_timestamp_text
from hatchway.server.awswire.models import ShapeInfo, input_info, operation, output_info
from hatchway.server.awswire.validate import render_value, validation_message
from hatchway.server.base.errors import ServiceError

__all__ = [
    "CONTENT_TYPE",
    "parse_query_input",
    "parse_query_params",
    "resolve_action",
    "serialize_query_error",
    "serialize_query_output",
]

CONTENT_TYPE = "text/xml"


def parse_query_params(form: Mapping[str, str]) -> tuple[str, str | None]:
    """Return ``(Action, Version)`` of a Query request; ``Version`` may be absent (``None``).

    Raises ``MissingAction`` when there is no (or an empty) ``Action`` parameter.
    """
    action = form.get("Action")
    if not action:
        raise ServiceError("MissingAction", "Missing Action")
    return action, form.get("Version") or None


def resolve_action(service: ServiceModel, action: str, version: str | None) -> OperationModel:
    """Return ``service``'s operation for ``Action``; ``InvalidAction`` if none or wrong version.

    The message is AWS's: ``Could not find operation Foo for version 2010-05-08``. A missing
    ``Version`` is tolerated (the model's API version is assumed).
    """
    api_version = service.metadata.get("apiVersion")
    op = operation(service, action) if version in (None, api_version) else None
    if op is None:
        raise ServiceError(
            "InvalidAction",
            f"Could not find operation {action} for version {version or api_version}",
        )
    return op


# --------------------------------------------------------------------------- request decoding


class _Node:
    """One dotted segment of the parameter names: its own value and its sub-segments."""

    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.value: str | None = None
        self.children: dict[str, _Node] = {}


def _tree(form: Mapping[str, str], roots: frozenset[str] | set[str]) -> _Node:
    root = _Node()
    for name, value in form.items():
        head, _, _rest = name.partition(".")
        if head not in roots:
            continue
        node = root
        for part in name.split("."):
            child = node.children.get(part)
            if child is None:
                child = _Node()
                node.children[part] = child
            node = child
        node.value = value
    return root


_MISSING: Any = object()
_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|NaN|[+-]?Infinity")
_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "integer": (-(2**31), 2**31 - 1),
    "long": (-(2**63), 2**63 - 1),
    "short": (-(2**15), 2**15 - 1),
    "byte": (-(2**7), 2**7 - 1),
}


class _Decoder:
    """Decodes a parameter tree per a shape, collecting type errors with AWS-style paths."""

    __slots__ = ("errors",)

    def __init__(self) -> None:
        self.errors: list[str] = []

    def bad(self, info: ShapeInfo, raw: str, path: str) -> Any:
        shown = render_value(raw, sensitive=info.sensitive)
        self.errors.append(
            f"{shown} at '{path}' failed to satisfy constraint: Member must be of type {info.type}"
        )
        return _MISSING

    def decode(self, info: ShapeInfo, node: _Node, path: str) -> Any:
        handler = _NODE_HANDLERS.get(info.type)
        if handler is not None:
            return handler(self, info, node, path)
        if node.value is None:
            return _MISSING
        scalar = _SCALARS.get(info.type)
        if scalar is None:
            return node.value
        result = scalar(info, node.value)
        return self.bad(info, node.value, path) if result is _MISSING else result

    def structure(self, info: ShapeInfo, node: _Node, path: str) -> Any:
        if not node.children:
            return {} if node.value is not None else _MISSING
        out: dict[str, Any] = {}
        prefix = f"{path}." if path else ""
        for member in info.members:
            child = node.children.get(member.wire)
            if child is None:
                continue
            value = self.decode(member.info, child, prefix + member.path)
            if value is not _MISSING:
                out[member.name] = value
        return out

    def list(self, info: ShapeInfo, node: _Node, path: str) -> Any:
        element = info.member
        assert element is not None
        items = node if info.flattened else node.children.get(element.wire_name or "member")
        if items is None:
            return [] if node.value is not None and not node.children else _MISSING
        out: list[Any] = []
        self.index_zero(items, path, "member")
        for index in _indexes(items):
            value = self.decode(element, items.children[str(index)], f"{path}.{index}.member")
            if value is not _MISSING:
                out.append(value)
        return out

    def index_zero(self, items: _Node, path: str, kind: str) -> None:
        """Query lists and maps count from 1 (``Tags.member.1``): an item numbered 0 is a
        validation error, never silently dropped (what it carried would be lost unseen)."""
        for key in items.children:
            if key.isascii() and key.isdigit() and int(key) == 0:
                self.errors.append(
                    f"Value at '{path}.{kind}.{key}' failed to satisfy constraint: "
                    "Member must be numbered from 1"
                )
                return

    def map(self, info: ShapeInfo, node: _Node, path: str) -> Any:
        key_info, value_info = info.key, info.value
        assert key_info is not None and value_info is not None
        entries = node if info.flattened else node.children.get("entry")
        if entries is None:
            return {} if node.value is not None and not node.children else _MISSING
        key_name, value_name = key_info.wire_name or "key", value_info.wire_name or "value"
        out: dict[Any, Any] = {}
        self.index_zero(entries, path, "entry")
        for index in _indexes(entries):
            entry = entries.children[str(index)]
            key_node = entry.children.get(key_name)
            if key_node is None or key_node.value is None:
                continue
            entry_path = f"{path}.entry.{index}"
            key = self.decode(key_info, key_node, f"{entry_path}.key")
            value_node = entry.children.get(value_name)
            value = (
                _MISSING
                if value_node is None
                else self.decode(value_info, value_node, f"{entry_path}.value")
            )
            if key is not _MISSING:
                out[key] = None if value is _MISSING else value
        return out


def _indexes(node: _Node) -> list[int]:
    return sorted(int(k) for k in node.children if k.isdigit() and k.isascii() and int(k) > 0)


def _scalar_int(info: ShapeInfo, raw: str) -> Any:
    if not _INT_RE.fullmatch(raw):
        return _MISSING
    value = int(raw)
    lo, hi = _INT_BOUNDS.get(info.type, _INT_BOUNDS["long"])
    return value if lo <= value <= hi else _MISSING


def _scalar_float(info: ShapeInfo, raw: str) -> Any:
    if not _FLOAT_RE.fullmatch(raw):
        return _MISSING
    return float(raw.replace("Infinity", "inf"))


_BOOLEANS = {"true": True, "false": False}


def _scalar_bool(info: ShapeInfo, raw: str) -> Any:
    return _BOOLEANS.get(raw.lower(), _MISSING)


def _scalar_timestamp(info: ShapeInfo, raw: str) -> Any:
    parsed = parse_timestamp_text(raw)
    return _MISSING if parsed is None else parsed


def _scalar_blob(info: ShapeInfo, raw: str) -> Any:
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return _MISSING


_SCALARS: dict[str, Callable[[ShapeInfo, str], Any]] = {
    "integer": _scalar_int,
    "long": _scalar_int,
    "short": _scalar_int,
    "byte": _scalar_int,
    "float": _scalar_float,
    "double": _scalar_float,
    "boolean": _scalar_bool,
    "timestamp": _scalar_timestamp,
    "blob": _scalar_blob,
}

_NODE_HANDLERS: dict[str, Callable[[_Decoder, ShapeInfo, _Node, str], Any]] = {
    "structure": _Decoder.structure,
    "list": _Decoder.list,
    "map": _Decoder.map,
}

_roots_cache: dict[int, tuple[ShapeInfo, frozenset[str]]] = {}


def _roots(info: ShapeInfo) -> frozenset[str]:
    hit = _roots_cache.get(id(info))
    if hit is None:
        hit = (info, frozenset(info.by_wire))
        _roots_cache[id(info)] = hit
    return hit[1]


def parse_query_input(
    op: OperationModel, form: Mapping[str, str], *, code: str = "ValidationError"
) -> dict[str, Any]:
    """Decode Query form parameters into botocore-style parameters for ``op``.

    Parameters that are not members of the input shape (``Action``, ``Version``, signing
    parameters, unknown names) are ignored. Values of the wrong type raise
    :class:`ServiceError` ``code`` listing every such value.
    """
    info = input_info(op)
    if info is None:
        return {}
    decoder = _Decoder()
    root = _tree(form, _roots(info))
    root.value = ""
    parsed = decoder.structure(info, root, "")
    if decoder.errors:
        raise ServiceError(code, validation_message(decoder.errors))
    result: dict[str, Any] = {} if parsed is _MISSING else parsed
    return result


# --------------------------------------------------------------------------- responses

_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#xD;"})
_ATTR_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})


def _text(value: str) -> str:
    return value.translate(_ESCAPES)


def _iso_seconds(value: _dt.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(_dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _fmt_timestamp(info: ShapeInfo, value: Any) -> str:
    if not isinstance(value, _dt.datetime):
        return str(value)
    if info.timestamp_format == "unixTimestamp":
        aware = value if value.tzinfo else value.replace(tzinfo=_dt.UTC)
        return str(int(aware.timestamp()))
    return _iso_seconds(value)


def _fmt_bool(info: ShapeInfo, value: Any) -> str:
    return "true" if value else "false"


def _fmt_float(info: ShapeInfo, value: Any) -> str:
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return repr(number)


def _fmt_blob(info: ShapeInfo, value: Any) -> str:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return base64.b64encode(raw).decode("ascii")


_FORMATTERS: dict[str, Callable[[ShapeInfo, Any], str]] = {
    "timestamp": _fmt_timestamp,
    "boolean": _fmt_bool,
    "float": _fmt_float,
    "double": _fmt_float,
    "blob": _fmt_blob,
}


def _xml_structure(info: ShapeInfo, value: Any, out: list[str]) -> None:
    for member in info.members:
        item = value.get(member.name)
        if item is not None:
            _xml(member.info, member.xml, item, out)


def _xml(info: ShapeInfo, name: str, value: Any, out: list[str]) -> None:
    kind = info.type
    if kind == "structure":
        out.append(f"<{name}>")
        _xml_structure(info, value, out)
        out.append(f"</{name}>")
    elif kind == "list":
        _xml_list(info, name, value, out)
    elif kind == "map":
        _xml_map(info, name, value, out)
    else:
        formatter = _FORMATTERS.get(kind)
        text = formatter(info, value) if formatter is not None else str(value)
        out.append(f"<{name}>{_text(text)}</{name}>")


def _xml_list(info: ShapeInfo, name: str, value: Any, out: list[str]) -> None:
    element = info.member
    assert element is not None
    if info.flattened:
        for item in value:
            if item is not None:
                _xml(element, name, item, out)
        return
    tag = element.wire_name or "member"
    out.append(f"<{name}>")
    for item in value:
        if item is not None:
            _xml(element, tag, item, out)
    out.append(f"</{name}>")


def _xml_map(info: ShapeInfo, name: str, value: Any, out: list[str]) -> None:
    key_info, value_info = info.key, info.value
    assert key_info is not None and value_info is not None
    key_tag, value_tag = key_info.wire_name or "key", value_info.wire_name or "value"
    flattened = info.flattened
    if not flattened:
        out.append(f"<{name}>")
    for key, item in value.items():
        if item is None:
            continue
        out.append(f"<{name}>" if flattened else "<entry>")
        _xml(key_info, key_tag, key, out)
        _xml(value_info, value_tag, item, out)
        out.append(f"</{name}>" if flattened else "</entry>")
    if not flattened:
        out.append(f"</{name}>")


def _xmlns(service: ServiceModel | None) -> str:
    namespace = service.metadata.get("xmlNamespace") if service is not None else None
    return f' xmlns="{str(namespace).translate(_ATTR_ESCAPES)}"' if namespace else ""


def _metadata(request_id: str) -> str:
    return f"<ResponseMetadata><RequestId>{_text(request_id)}</RequestId></ResponseMetadata>"


def serialize_query_output(op: OperationModel, data: Mapping[str, Any], request_id: str) -> bytes:
    """Encode ``data`` as ``op``'s Query (XML) response body, ``ResponseMetadata`` included.

    Only members of the output shape are written; ``None`` members are dropped; empty lists
    and maps are written as empty elements. Operations without an output shape get only
    ``<ResponseMetadata>``.
    """
    root = f"{op.name}Response"
    out = [f"<{root}{_xmlns(op.service_model)}>"]
    info = output_info(op)
    if info is not None:
        wrapper = info.result_wrapper or f"{op.name}Result"
        out.append(f"<{wrapper}>")
        _xml_structure(info, data, out)
        out.append(f"</{wrapper}>")
    out.append(_metadata(request_id))
    out.append(f"</{root}>")
    return "".join(out).encode("utf-8")


def serialize_query_error(
    err: ServiceError, request_id: str, *, service: ServiceModel | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Return ``(status, headers, body)`` for an error in the Query protocol.

    ``<ErrorResponse xmlns=…><Error><Type>Sender|Receiver</Type><Code/><Message/>…</Error>
    <RequestId/></ErrorResponse>``; the namespace is ``service``'s ``xmlNamespace`` (none
    when no service is given). ``err.extra`` entries become further children of ``<Error>``.
    """
    kind = "Sender" if err.sender else "Receiver"
    parts = [
        f"<ErrorResponse{_xmlns(service)}><Error><Type>{kind}</Type>",
        f"<Code>{_text(err.code)}</Code><Message>{_text(err.message)}</Message>",
    ]
    for key, value in err.extra.items():
        if key not in ("Type", "Code", "Message") and _TAG_RE.fullmatch(key):
            parts.append(f"<{key}>{_text(str(value))}</{key}>")
    parts.append(f"</Error><RequestId>{_text(request_id)}</RequestId></ErrorResponse>")
    return err.status, {"Content-Type": CONTENT_TYPE}, "".join(parts).encode("utf-8")


_TAG_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
