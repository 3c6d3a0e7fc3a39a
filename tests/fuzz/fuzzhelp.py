"""The fuzz suite's tools: a signed raw client and request bodies drawn from botocore's models.

Every body is built from the operation's own input shape, then mutated: members of the wrong
type, huge numbers (``99999999999999999999999``, ``1e999``), lone surrogates, deep nesting,
oversized strings and forms, ``.member.0`` indexes. The requests are signed with valid admin
credentials, so each one reaches the protocol parsers, the validator and the handler.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import quote

import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.model import OperationModel, Shape
from hypothesis import strategies as st

from hatchway.server.awswire.models import load_service


def server_helpers() -> ModuleType:
    """The harness (start_broker, start_agent, the admin key)."""
    import harness

    return harness


def examples(default: int) -> int:
    """``HATCHWAY_FUZZ_EXAMPLES`` (per test) if set, else ``default`` (what ``make test`` runs)."""
    return int(os.environ.get("HATCHWAY_FUZZ_EXAMPLES") or default)


# --------------------------------------------------------------------------- raw requests

RAW = "@@raw:"
"""A string value ``"@@raw:TEXT"`` is replaced by TEXT itself in the JSON body (numbers JSON
cannot carry through :func:`json.dumps`, deep nesting)."""

DEEP = "[" * 3000 + "]" * 3000
RAW_TOKENS = (
    "99999999999999999999999",
    "-99999999999999999999999",
    "1e999",
    "-1e999",
    "1e-999",
    "NaN",
    "Infinity",
    "-0.0",
    "1.5",
    '"\\ud800"',
    '"a\\udfffb"',
    DEEP,
    '{"a":' * 2000 + "1" + "}" * 2000,
)
NASTY_SCALARS: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    2**31,
    2**63,
    10**23,
    1e308,
    "",
    " ",
    "\ud800",
    "\x00",
    "é" * 3,
    "x" * 70_000,
    "*" * 2000,
    "arn:aws:iam::123456789012:role/x",
    "{",
    [],
    {},
    [None],
    {"": None},
)


@dataclass
class Reply:
    status: int
    body: bytes


class SignedClient:
    """Signs any body with SigV4 (admin key) and sends it on a kept-alive connection."""

    def __init__(self, url: str, key: str, secret: str, region: str) -> None:
        self.url = url.rstrip("/")
        self.credentials = Credentials(key, secret)
        self.region = region
        self.http = urllib3.PoolManager(maxsize=2, retries=False, timeout=60.0)

    def send(
        self,
        service: str,
        body: bytes,
        headers: dict[str, str],
        path: str = "/",
        method: str = "POST",
    ) -> Reply:
        req = AWSRequest(method, self.url + path, data=body, headers=headers)
        SigV4Auth(self.credentials, service, self.region).add_auth(req)
        resp = self.http.request(
            method, self.url + path, body=body, headers=dict(req.headers.items())
        )
        return Reply(resp.status, resp.data)

    def json_call(self, service: str, op: OperationModel, body: bytes) -> Reply:
        prefix = op.service_model.metadata["targetPrefix"]
        return self.send(
            service,
            body,
            {
                "X-Amz-Target": f"{prefix}.{op.name}",
                "Content-Type": "application/x-amz-json-1.1",
            },
        )

    def query_call(self, service: str, body: bytes) -> Reply:
        return self.send(
            service, body, {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        )

    def unsigned(self, method: str, path: str, body: bytes = b"") -> Reply:
        resp = self.http.request(method, self.url + path, body=body or None)
        return Reply(resp.status, resp.data)


# --------------------------------------------------------------------------- JSON bodies


def _nasty() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(NASTY_SCALARS),
        st.sampled_from(RAW_TOKENS).map(lambda raw: RAW + raw),
        st.text(max_size=20),
        st.integers(),
        st.floats(),
    )


_STRINGS = (
    "i-02573cafcfEXAMPLE",
    "mi-0123456789abcdef0",
    "SSM-SessionManagerRunShell",
    "AWS-StartPortForwardingSession",
    "FuzzRole",
    "fuzz-user",
    "arn:aws:iam::123456789012:policy/p",
    "arn:aws:iam::aws:policy/AdministratorAccess",
    "arn:aws:iam::123456789012:role/SSMServiceRole",
    "alias/aws/ssm",
    '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}',
    '{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"*a*a*a*a*b","Resource":"*"}}',
    '{"schemaVersion":"2.2","mainSteps":"x"}',
    '{"schemaVersion":"1.0","sessionType":"Standard_Stream","inputs":[]}',
    '{"schemaVersion":"1.0","sessionType":"Port","parameters":{"p":{"type":"String",'
    '"allowedPattern":"(a+)+$"}},"properties":{"portNumber":"{{ p }}"}}',
)


# JSON documents carried in string members: IAM and KMS policies, SSM documents.
_JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _either(*options: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(options) | _JSON_VALUES


def _keys(*options: str) -> st.SearchStrategy[str]:
    return st.sampled_from(options) | st.text(max_size=10)


_ACTIONS = _either("*", "ssm:*", "ssm:StartSession", "sts:AssumeRole", "*a*a*a*a*a*a*a*b", "ssm:")
_RESOURCES = _either(
    "*",
    "arn:aws:ssm:*:*:session/${aws:username}-*",
    "arn:aws:ec2:us-east-1:123456789012:instance/*",
    "arn:aws:iam::123456789012:role/*",
    "arn:${aws:x}:*",
    "arn:aws:ssm:us-east-1:123456789012:document/*?*",
)
_CONDITIONS = st.dictionaries(
    _keys(
        "StringLike",
        "ForAnyValue:StringEquals",
        "NumericLessThan",
        "DateGreaterThan",
        "IpAddress",
        "BoolIfExists",
        "Null",
        "ArnLike",
        "StringEqualsIgnoreCaseIfExists",
    ),
    st.dictionaries(
        _keys(
            "aws:SourceIp",
            "aws:username",
            "ssm:resourceTag/Env",
            "aws:CurrentTime",
            "ssm:SessionDocumentAccessCheck",
            "aws:PrincipalTag/${aws:username}",
        ),
        _either("10.0.0.0/8", "::1/200", "${aws:username}", "1e999", "2026-13-45", "true", "*"),
        max_size=2,
    ),
    max_size=2,
)
_STATEMENT = st.fixed_dictionaries(
    {},
    optional={
        "Sid": _JSON_VALUES,
        "Effect": _either("Allow", "Deny", "allow"),
        "Action": _ACTIONS | st.lists(_ACTIONS, max_size=3),
        "NotAction": _ACTIONS,
        "Resource": _RESOURCES | st.lists(_RESOURCES, max_size=3),
        "NotResource": _RESOURCES,
        "Principal": _either(
            "*",
            {"AWS": "*"},
            {"Service": "ssm.amazonaws.com"},
            {"AWS": "arn:aws:iam::123456789012:root"},
        ),
        "Condition": _CONDITIONS | _JSON_VALUES,
    },
)
_POLICY = st.fixed_dictionaries(
    {},
    optional={
        "Version": _either("2012-10-17", "2008-10-17"),
        "Id": _JSON_VALUES,
        "Statement": _STATEMENT | st.lists(_STATEMENT, max_size=3) | _JSON_VALUES,
    },
)
_PARAMETER = st.fixed_dictionaries(
    {},
    optional={
        "type": _either("String", "StringList", "Integer", "Boolean", "StringMap", "MapList"),
        "default": _JSON_VALUES,
        "allowedValues": _JSON_VALUES,
        "allowedPattern": _either("^[0-9]+$", "(a+)+$", "[", "\\d{1,5}", "(?i)x", ".*"),
        "minItems": _JSON_VALUES,
        "maxItems": _JSON_VALUES,
        "displayType": _JSON_VALUES,
    },
)
_DOCUMENT = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": _either("1.0", "2.2", "0.3"),
        "description": _JSON_VALUES,
        "sessionType": _either(
            "Standard_Stream", "Port", "InteractiveCommands", "NonInteractiveCommands"
        ),
        "inputs": st.dictionaries(
            _keys(
                "s3BucketName",
                "kmsKeyId",
                "runAsEnabled",
                "runAsDefaultUser",
                "idleSessionTimeout",
                "maxSessionDuration",
                "shellProfile",
                "cloudWatchLogGroupName",
                "s3EncryptionEnabled",
            ),
            _JSON_VALUES,
            max_size=4,
        )
        | _JSON_VALUES,
        "parameters": st.dictionaries(st.text(max_size=6), _PARAMETER, max_size=2) | _JSON_VALUES,
        "properties": st.dictionaries(
            _keys("commands", "portNumber", "host", "localPortNumber", "type", "linux"),
            _either("{{ p }}", "{{p}}", "{{ ssm:x }}"),
            max_size=3,
        )
        | _JSON_VALUES,
        "mainSteps": _JSON_VALUES,
    },
)
_DOCUMENT_MEMBERS = {
    "PolicyDocument": _POLICY,
    "AssumeRolePolicyDocument": _POLICY,
    "Policy": _POLICY,
    "Content": _DOCUMENT,
}


def _document_text(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    return strategy.map(lambda d: json.dumps(d, ensure_ascii=False))


def _member(name: str, shape: Shape, depth: int) -> st.SearchStrategy[Any]:
    document = _DOCUMENT_MEMBERS.get(name)
    if document is not None and shape.type_name == "string":
        return st.one_of(_document_text(document), _document_text(document), value(shape, depth))
    return value(shape, depth)


def _typed(shape: Shape, depth: int) -> st.SearchStrategy[Any]:
    kind = shape.type_name
    if kind == "structure":
        if depth > 3:
            return st.just({})
        members = {name: _member(name, m, depth + 1) for name, m in shape.members.items()}
        return st.fixed_dictionaries({}, optional=members)
    if kind == "list":
        return st.lists(value(shape.member, depth + 1), max_size=3)
    if kind == "map":
        return st.dictionaries(
            st.text(max_size=12) | st.sampled_from(("Env", "aws:x", "")),
            value(shape.value, depth + 1),
            max_size=3,
        )
    if kind == "string":
        enum = shape.enum
        options: list[st.SearchStrategy[Any]] = [st.text(max_size=40), st.sampled_from(_STRINGS)]
        if enum:
            options.insert(0, st.sampled_from(list(enum)))
        return st.one_of(*options)
    if kind in ("integer", "long"):
        return st.integers(-5, 5000) | st.sampled_from((2**31, 2**63, 10**23))
    if kind == "boolean":
        return st.booleans()
    if kind == "timestamp":
        return st.integers(-(2**40), 2**40) | st.sampled_from(("2026-01-01T00:00:00Z", "x", ""))
    if kind == "blob":
        return st.binary(max_size=48).map(
            lambda b: __import__("base64").b64encode(b).decode()
        ) | st.sampled_from(("not base64!", "QQ", "===="))
    if kind in ("float", "double"):
        return st.floats() | st.integers()
    return st.none()


def value(shape: Shape, depth: int = 0) -> st.SearchStrategy[Any]:
    """A value for ``shape``: mostly of its type, sometimes anything nasty."""
    return st.one_of(_typed(shape, depth), _typed(shape, depth), _nasty())


def render_json(document: Any) -> bytes:
    """``json.dumps`` with the ``@@raw:`` strings put in as themselves."""
    text = json.dumps(document)
    start = text.find('"' + RAW)
    while start >= 0:
        # The raw text was JSON-escaped by dumps: scan the literal to undo that.
        raw, end = json.decoder.scanstring(text, start + 1)  # type: ignore[attr-defined]
        raw = raw[len(RAW) :]
        text = text[:start] + raw + text[end:]
        start = text.find('"' + RAW, start + len(raw))
    return text.encode("utf-8", "surrogatepass")


WHOLE_BODIES = (
    b"",
    b"null",
    b"[]",
    b'"x"',
    b"1e999",
    b"{",
    b"\xff\xfe{}",
    DEEP.encode(),
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b"{}" * 1000,
)


def json_bodies(op: OperationModel) -> st.SearchStrategy[bytes]:
    shape = op.input_shape
    members = value(shape) if shape is not None else st.just({})
    return st.one_of(
        members.map(render_json),
        members.map(render_json),
        st.sampled_from(WHOLE_BODIES),
        st.binary(max_size=64),
    )


# --------------------------------------------------------------------------- Query forms


def _flatten(shape: Shape, prefix: str, val: Any, out: list[tuple[str, str]]) -> None:
    kind = shape.type_name
    if kind == "structure" and isinstance(val, dict):
        for name, item in val.items():
            member = shape.members.get(name)
            if member is not None:
                wire = member.serialization.get("name", name)
                _flatten(member, f"{prefix}.{wire}" if prefix else wire, item, out)
        return
    if kind == "list" and isinstance(val, list):
        if not val:
            out.append((prefix, ""))
        for i, item in enumerate(val, 1):
            _flatten(shape.member, f"{prefix}.member.{i}", item, out)
        return
    if kind == "map" and isinstance(val, dict):
        for i, (k, v) in enumerate(val.items(), 1):
            out.append((f"{prefix}.entry.{i}.key", str(k)))
            _flatten(shape.value, f"{prefix}.entry.{i}.value", v, out)
        return
    if isinstance(val, bool):
        out.append((prefix, "true" if val else "false"))
    elif isinstance(val, str) and val.startswith(RAW):
        out.append((prefix, val[len(RAW) :][:5000]))
    else:
        out.append((prefix, "" if val is None else str(val) if not isinstance(val, str) else val))


_KEY_MUTATIONS = (
    lambda k: k,
    lambda k: k.replace(".member.1", ".member.0"),
    lambda k: k.replace(".member.1", ".member.99999999999999999999"),
    lambda k: k.replace(".member.1", ".member.-1"),
    lambda k: k.replace(".member.1", ".member.x"),
    lambda k: k + ".member.1",
    lambda k: k + ".entry.0.key",
    lambda k: k + ".",
)
RAW_FORM_PIECES = (
    "Tags.member.0.Key=a&Tags.member.0.Value=b",
    "Tags.member.1.Key=%FF%FE",
    "UserName=%ED%A0%80",
    "PolicyDocument=%7B%22a%22%3A" + "%5B" * 3000,
    "MaxItems=99999999999999999999999",
    "MaxItems=1e999",
    "DurationSeconds=-99999999999999999999999",
    "%=%",
    "&&&",
    "Action",
)


def encode_form(pairs: list[tuple[str, str]]) -> str:
    return "&".join(
        f"{quote(k.encode('utf-8', 'surrogatepass'), safe='')}="
        f"{quote(v.encode('utf-8', 'surrogatepass'), safe='')}"
        for k, v in pairs
    )


def query_bodies(op: OperationModel) -> st.SearchStrategy[bytes]:
    shape = op.input_shape
    head = [("Action", op.name), ("Version", op.service_model.api_version)]

    @st.composite
    def build(draw: Callable[[st.SearchStrategy[Any]], Any]) -> bytes:
        pairs: list[tuple[str, str]] = []
        if shape is not None:
            _flatten(shape, "", draw(value(shape)), pairs)
        mutate = draw(st.sampled_from(_KEY_MUTATIONS))
        pairs = [(mutate(k), v) for k, v in pairs]
        if draw(st.booleans()):
            pairs += draw(
                st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), max_size=4)
            )
        text = encode_form(head + pairs)
        extra = draw(st.lists(st.sampled_from(RAW_FORM_PIECES), max_size=2))
        if draw(st.integers(0, 19)) == 0:  # an oversized form
            extra.append("&".join(f"Junk{i}.member.{i}=x" for i in range(5000)))
        return "&".join([text, *extra]).encode("ascii")

    return build()


def operations(service: str, served: set[tuple[str, str]]) -> list[OperationModel]:
    model = load_service(service)
    return [
        model.operation_model(name)
        for name in sorted(model.operation_names)
        if (service, name) in served
    ]
