"""botocore's service models for the services the broker speaks, and a compiled view of shapes.

Everything the protocol code knows about an operation (member names, wire names, types,
constraints) comes from botocore's own model files, so the broker accepts and produces
exactly what boto3 and the ``aws`` CLI send and expect. :class:`ShapeInfo` is a flattened,
cached view of one botocore shape that the parsers, serializers and the validator walk
instead of botocore's lazily built shape objects (microseconds per request, not
milliseconds).
"""

from __future__ import annotations

import json
import threading
import weakref
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import botocore.loaders
from botocore.model import (
    OperationModel,
    OperationNotFoundError,
    ServiceModel,
    Shape,
)

__all__ = [
    "SERVICES",
    "MemberInfo",
    "ShapeInfo",
    "input_info",
    "load_service",
    "operation",
    "output_info",
    "shape_info",
]

#: Services whose models the broker loads, by botocore's service name. ``hatchway`` is the
#: broker's own service (session recordings and port connections, docs/audit.md): its model,
#: in botocore's format, ships in ``hatchway/server/data/models`` (:data:`MODELS_DIR`).
SERVICES: tuple[str, ...] = ("ssm", "iam", "sts", "kms", "cloudtrail", "hatchway")

MODELS_DIR = Path(__file__).resolve().parent.parent / "data" / "models"
"""botocore's data layout (``<service>/<api version>/service-2.json``) for Hatchway's own
service; a botocore session with this on its search path makes a ``hatchway`` client."""

_loader_lock = threading.Lock()


@lru_cache(maxsize=1)
def _loader() -> Any:
    return botocore.loaders.create_loader(str(MODELS_DIR))


@cache
def load_service(name: str) -> ServiceModel:
    """Return botocore's :class:`ServiceModel` for ``name`` (one of :data:`SERVICES`), cached.

    Raises :class:`KeyError` for a service the broker does not speak.
    """
    if name not in SERVICES:
        raise KeyError(f"unsupported service: {name!r}")
    with _loader_lock:
        data = _loader().load_service_model(name, "service-2")
    if name == "ssm":  # the private operations AWS's own agent calls (docs/aws-agent.md)
        data = _with_private_operations(data)
    return ServiceModel(data, service_name=name)


_PRIVATE_SSM = Path(__file__).resolve().parent.parent / "data" / "ssm-private-2.json"


def _with_private_operations(data: dict[str, Any]) -> dict[str, Any]:
    """botocore's SSM model plus ``data/ssm-private-2.json`` (same format): the operations
    AWS's amazon-ssm-agent calls that the public model lacks (RegisterManagedInstance, …)."""
    extra = json.loads(_PRIVATE_SSM.read_text(encoding="utf-8"))
    return {
        **data,
        "operations": {**data["operations"], **extra["operations"]},
        "shapes": {**data["shapes"], **extra["shapes"]},
    }


def operation(service: ServiceModel | str, name: str) -> OperationModel | None:
    """Return the operation ``name`` (e.g. ``"StartSession"``) of ``service``, or ``None``."""
    model = load_service(service) if isinstance(service, str) else service
    if name not in _operation_names(model):
        return None
    try:
        return model.operation_model(name)
    except OperationNotFoundError:  # pragma: no cover - guarded by the name set above
        return None


_op_names: weakref.WeakKeyDictionary[ServiceModel, frozenset[str]] = weakref.WeakKeyDictionary()


def _operation_names(model: ServiceModel) -> frozenset[str]:
    names = _op_names.get(model)
    if names is None:
        names = frozenset(model.operation_names)
        _op_names[model] = names
    return names


class MemberInfo:
    """One member of a structure: its Python name, wire names and shape."""

    __slots__ = ("info", "name", "path", "wire", "xml")

    def __init__(self, name: str, wire: str, xml: str, info: ShapeInfo) -> None:
        self.name = name
        #: key in JSON bodies and Query parameter names
        self.wire = wire
        #: element name in XML (Query) responses
        self.xml = xml
        #: AWS's name in validation messages: first letter lower-cased
        self.path = name[:1].lower() + name[1:]
        self.info = info


class ShapeInfo:
    """A botocore shape reduced to what the protocol code needs, built once per shape."""

    __slots__ = (
        "by_wire",
        "document",
        "enum",
        "flattened",
        "key",
        "max",
        "member",
        "members",
        "min",
        "name",
        "pattern",
        "required",
        "result_wrapper",
        "sensitive",
        "timestamp_format",
        "type",
        "union",
        "value",
        "wire_name",
    )

    def __init__(self, shape: Shape) -> None:
        meta: dict[str, Any] = shape.metadata
        ser: dict[str, Any] = shape.serialization
        self.name: str = shape.name
        self.type: str = shape.type_name
        self.wire_name: str | None = ser.get("name")
        self.flattened: bool = bool(ser.get("flattened", False))
        self.timestamp_format: str | None = ser.get("timestampFormat")
        self.result_wrapper: str | None = ser.get("resultWrapper")
        self.min: int | float | None = meta.get("min")
        self.max: int | float | None = meta.get("max")
        self.pattern: str | None = meta.get("pattern")
        enum = meta.get("enum")
        self.enum: tuple[str, ...] | None = tuple(enum) if enum else None
        self.required: tuple[str, ...] = tuple(meta.get("required", ()))
        self.union: bool = bool(meta.get("union", False))
        self.document: bool = bool(meta.get("document", False))
        self.sensitive: bool = bool(meta.get("sensitive", False))
        self.members: tuple[MemberInfo, ...] = ()
        self.by_wire: dict[str, MemberInfo] = {}
        self.member: ShapeInfo | None = None
        self.key: ShapeInfo | None = None
        self.value: ShapeInfo | None = None


_cache_lock = threading.RLock()
_shape_cache: weakref.WeakKeyDictionary[ServiceModel, dict[tuple[object, ...], ShapeInfo]] = (
    weakref.WeakKeyDictionary()
)
_op_cache: weakref.WeakKeyDictionary[OperationModel, tuple[ShapeInfo | None, ShapeInfo | None]] = (
    weakref.WeakKeyDictionary()
)


def _shape_key(shape: Shape) -> tuple[object, ...]:
    # Member references may override traits (locationName, flattened, ...), so the
    # serialization traits are part of the identity of a compiled shape.
    return (shape.name, tuple(sorted((k, repr(v)) for k, v in shape.serialization.items())))


def _xml_member_name(name: str, shape: Shape) -> str:
    # A flattened list whose member has a locationName repeats that name in place of the
    # list's own element (botocore's serializer and parser agree on this).
    if shape.type_name == "list" and shape.serialization.get("flattened"):
        inner = shape.member.serialization.get("name")
        if inner:
            return str(inner)
    return str(shape.serialization.get("name", name))


def shape_info(service: ServiceModel, shape: Shape) -> ShapeInfo:
    """Return the cached :class:`ShapeInfo` for ``shape`` of ``service`` (recursive shapes ok)."""
    with _cache_lock:
        cache = _shape_cache.get(service)
        if cache is None:
            cache = {}
            _shape_cache[service] = cache
        return _build(cache, shape)


def _build(cache: dict[tuple[object, ...], ShapeInfo], shape: Shape) -> ShapeInfo:
    key = _shape_key(shape)
    info = cache.get(key)
    if info is not None:
        return info
    info = ShapeInfo(shape)
    cache[key] = info  # registered before the children: recursive shapes terminate
    kind = info.type
    if kind == "structure" and not info.document:
        members = []
        for name, member_shape in shape.members.items():
            child = _build(cache, member_shape)
            wire = _xml_member_name(name, member_shape)
            members.append(MemberInfo(name, wire, wire, child))
        info.members = tuple(members)
        info.by_wire = {m.wire: m for m in members}
    elif kind == "list":
        info.member = _build(cache, shape.member)
    elif kind == "map":
        info.key = _build(cache, shape.key)
        info.value = _build(cache, shape.value)
    return info


def _op_infos(op: OperationModel) -> tuple[ShapeInfo | None, ShapeInfo | None]:
    cached = _op_cache.get(op)
    if cached is None:
        service = op.service_model
        in_shape = op.input_shape
        out_shape = op.output_shape
        cached = (
            shape_info(service, in_shape) if in_shape is not None else None,
            shape_info(service, out_shape) if out_shape is not None else None,
        )
        with _cache_lock:
            _op_cache[op] = cached
    return cached


def input_info(op: OperationModel) -> ShapeInfo | None:
    """The compiled input shape of ``op`` (``None`` when the operation takes no input)."""
    return _op_infos(op)[0]


def output_info(op: OperationModel) -> ShapeInfo | None:
    """The compiled output shape of ``op`` (``None`` when the operation has no output)."""
    return _op_infos(op)[1]
