"""``hatchway policy evaluate``: JSON-lines requests decided in batches.

A batch usually repeats a handful of policy sets over thousands of lines, each line carrying its
documents inline. Parsing and compiling them again on every line costs far more than the
decision itself, so compiled :class:`PolicySet`\\ s are cached across lines, keyed by the *text*
of the line's policy fields (``policies``, ``resourcePolicy``, ``permissionBoundaries``,
``sessionPolicy``, ``scps``): the same text is the same content, so a cached set is never served
for a different policy, and two spellings of one policy are simply two entries, each evaluated
on its own.

Finding that text costs no more than a string search: once a field's value text is known, a
later line that holds the same text at the field's position is recognised with ``startswith``,
the text is cut out of the line (a sentinel string takes its place) and only the short rest is
parsed. The result is exact, not heuristic: a JSON array, object or string ends where its text
ends, and whatever else could confuse the search (a duplicated key, an escaped key name, a
nested ``"policies"`` key, a ``\\u0000`` outside the policy fields) makes the parsed rest
disagree with the sentinels, and the line is then parsed whole and evaluated without the fast
path.

Requests without ``resourceAccount`` take the resource account from the account field of the
resource ARN, as AWS does; a cross-account request then needs both the identity side and the
resource policy to allow (docs/iam.md, "Cross-account requests").
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import IO, Any

from hatchway.iam import (
    Decision,
    PolicyError,
    PolicyKind,
    PolicySet,
    Request,
    make_request,
    parse_policy,
)

#: The fields of a line that hold policies (everything else describes the request).
POLICY_FIELDS = ("policies", "resourcePolicy", "permissionBoundaries", "sessionPolicy", "scps")

_SETS_LIMIT = 1024  # compiled policy sets kept (least recently used dropped first)
_REQUESTS_LIMIT = 4096  # built requests kept (all dropped when full)
_RENDERED_LIMIT = 4096  # rendered decisions kept (all dropped when full)
_TEXTS_LIMIT = 4096  # known field texts kept per field before the index starts again
_PROBE = 256  # characters of a value used to look up known texts (policies share their start)
_DECODER = json.JSONDecoder()
_ACCOUNT = re.compile(r"\d{12}")
_FIELD_SET = frozenset(POLICY_FIELDS)
_MAX_SPANS = 8
#: What replaces the k-th policy field of a line before the rest is parsed, and its value.
_SENTINEL_TEXT = tuple(f'"\\u0000{k}"' for k in range(_MAX_SPANS))
_SENTINEL = tuple(f"\x00{k}" for k in range(_MAX_SPANS))
#: A policy field's quoted name (group 1), then (group 2) the colon and blanks before its value.
_KEYS = re.compile(rf'"({"|".join(POLICY_FIELDS)})"([ \t\r\n]*:[ \t\r\n]*)?')


class InputError(Exception):
    """A line that is not a request (reported as ``InvalidInput``)."""


def resource_account_of(obj: Mapping[str, Any]) -> str | None:
    """``resourceAccount``, or else the account field of the resource ARN.

    Only a 12-digit account counts: ARNs without one (S3 buckets, AWS-owned documents and
    managed policies, ``*``) leave the request in the caller's account, as before.
    """
    given = obj.get("resourceAccount")
    if given is not None:
        return str(given)
    resource = obj.get("resource", "*")
    return _arn_account(resource) if isinstance(resource, str) else None


@lru_cache(maxsize=4096)
def _arn_account(resource: str) -> str | None:
    if not resource.startswith("arn:"):
        return None
    parts = resource.split(":", 5)
    if len(parts) == 6 and _ACCOUNT.fullmatch(parts[4]):
        return parts[4]
    return None


def _text(doc: Any) -> str:
    return doc if isinstance(doc, str) else json.dumps(doc)


def build_policy_set(values: Mapping[str, Any]) -> PolicySet:
    """Parse, validate and compile a line's policy fields into one set."""
    policies = values.get("policies")
    if not isinstance(policies, list):
        raise InputError("policies must be a list of policy documents")
    identity = [
        parse_policy(_text(d), PolicyKind.IDENTITY, name=f"policies[{i}]")
        for i, d in enumerate(policies)
    ]
    resource = (
        parse_policy(_text(values["resourcePolicy"]), PolicyKind.RESOURCE, name="resourcePolicy")
        if values.get("resourcePolicy") is not None
        else None
    )
    boundary = (
        [
            parse_policy(_text(d), PolicyKind.BOUNDARY, name=f"permissionBoundaries[{i}]")
            for i, d in enumerate(values["permissionBoundaries"])
        ]
        if values.get("permissionBoundaries") is not None
        else None
    )
    session = (
        [parse_policy(_text(values["sessionPolicy"]), PolicyKind.SESSION, name="sessionPolicy")]
        if values.get("sessionPolicy") is not None
        else None
    )
    scps = [
        [parse_policy(_text(d), PolicyKind.SCP, name=f"scps[{lvl}][{i}]") for i, d in enumerate(lv)]
        for lvl, lv in enumerate(values.get("scps") or [])
    ]
    return PolicySet(identity, resource=resource, boundary=boundary, session=session, scps=scps)


def build_request(obj: Mapping[str, Any]) -> Request:
    ctx = obj.get("context") or {}
    if not isinstance(ctx, Mapping):
        raise InputError("context must be an object")
    return make_request(
        str(obj["action"]),
        str(obj.get("resource", "*")),
        obj.get("principal"),
        ctx,
        resource_account_of(obj),
    )


class Evaluator:
    """Decides lines; with ``cache`` keeps compiled policy sets across lines (by text)."""

    def __init__(self, cache: bool = True) -> None:
        self.cache = cache
        self._sets: OrderedDict[tuple[str, ...], PolicySet | PolicyError] = OrderedDict()
        # Per field: the first characters of a known value text -> [(text, parsed value)].
        self._known: dict[str, dict[str, list[tuple[str, Any]]]] = {f: {} for f in POLICY_FIELDS}
        self._known_count = dict.fromkeys(POLICY_FIELDS, 0)
        # Per field: the lengths of known texts shorter than _PROBE (each is its own probe).
        self._short: dict[str, set[int]] = {f: set() for f in POLICY_FIELDS}
        self._requests: dict[tuple[Any, ...], Request] = {}
        self._rendered: dict[tuple[Any, ...], str] = {}

    # -- the compiled-set cache --

    def _policy_set(self, key: tuple[str, ...], values: Mapping[str, Any]) -> PolicySet:
        hit = self._sets.get(key)
        if hit is None:
            try:
                hit = build_policy_set(values)
            except PolicyError as exc:
                hit = exc
            self._sets[key] = hit
            if len(self._sets) > _SETS_LIMIT:
                self._sets.popitem(last=False)
        else:
            self._sets.move_to_end(key)
        if isinstance(hit, PolicyError):
            raise hit
        return hit

    # -- finding a field's value text in a line --

    def _known_text(self, field: str, line: str, start: int) -> tuple[str, Any] | None:
        """A known text of ``field`` that ``line`` holds at ``start`` (each candidate the
        probe finds is checked whole with ``startswith``)."""
        known = self._known[field]
        for text, value in known.get(line[start : start + _PROBE], ()):
            if line.startswith(text, start):
                return text, value
        for length in self._short[field]:
            for text, value in known.get(line[start : start + length], ()):
                if line.startswith(text, start):
                    return text, value
        return None

    def _remember(self, field: str, text: str, value: Any) -> None:
        if self._known_count[field] >= _TEXTS_LIMIT:
            self._known[field] = {}
            self._short[field] = set()
            self._known_count[field] = 0
        if len(text) < _PROBE:
            self._short[field].add(len(text))
        self._known[field].setdefault(text[:_PROBE], []).append((text, value))
        self._known_count[field] += 1

    def _split(self, line: str) -> tuple[dict[str, Any], dict[str, Any], tuple[str, ...]] | None:
        """(the line without its policy fields, their values, the cache key), or None when
        the line must be parsed whole."""
        spans: list[tuple[int, int, str, tuple[str, Any]]] = []
        pos = 0
        search = _KEYS.search
        while True:
            m = search(line, pos)
            if m is None:
                break
            if m.group(2) is None:  # the quoted name is not followed by ':' (a string value)
                pos = m.end()
                continue
            field, j = m.group(1), m.end()
            found = self._known_text(field, line, j)
            if found is None:
                try:
                    value, end = _DECODER.raw_decode(line, j)
                except ValueError:
                    return None
                found = (line[j:end], value)
                self._remember(field, *found)
            pos = j + len(found[0])
            spans.append((j, pos, field, found))
        pieces: list[str] = []
        pos = 0
        for k, (begin, end, _, _) in enumerate(spans):
            if begin < pos:
                return None
            pieces += [line[pos:begin], _SENTINEL_TEXT[k] if k < _MAX_SPANS else "0"]
            pos = end
        pieces.append(line[pos:])
        reduced = "".join(pieces)
        if reduced.count("\\u0000") != len(spans):
            # a NUL of the line's own outside the policy fields could pass for a sentinel
            return None
        try:
            rest = json.loads(reduced)
        except ValueError:
            return None
        if not isinstance(rest, dict):
            return None
        values: dict[str, Any] = {}
        key: list[str] = []
        for k, (_, _, field, (text, value)) in enumerate(spans):
            if k >= _MAX_SPANS or rest.pop(field, None) != _SENTINEL[k]:
                return None
            values[field] = value
            # The remembered text object itself: its hash is computed once, and a lookup
            # compares it by identity before comparing characters.
            key += (field, text)
        if not _FIELD_SET.isdisjoint(rest):
            return None
        return rest, values, tuple(key)

    # -- requests and rendered results, by value --

    def _request(self, obj: Mapping[str, Any]) -> Request:
        """:func:`build_request`, kept for lines that ask the same: a request is a value (the
        engine never changes one), so a line whose request fields are equal gets the same
        object. Only plain strings are keys (``True == 1`` in Python, ``"true" != "1"`` in
        a request); anything else is built every time."""
        if not self.cache:
            return build_request(obj)
        action = obj.get("action")
        resource = obj.get("resource", "*")
        principal = obj.get("principal")
        account = obj.get("resourceAccount")
        ctx = obj.get("context")
        if (
            type(action) is not str
            or type(resource) is not str
            or (principal is not None and type(principal) is not str)
            or (account is not None and type(account) is not str)
            or (ctx is not None and type(ctx) is not dict)
        ):
            return build_request(obj)
        items: tuple[tuple[str, Any], ...] = ()
        if ctx:
            items = tuple(ctx.items())
            if not all(type(v) is str for _, v in items):
                return build_request(obj)
        key = (action, resource, principal, account, items)
        req = self._requests.get(key)
        if req is None:
            req = build_request(obj)
            if len(self._requests) >= _REQUESTS_LIMIT:
                self._requests.clear()
            self._requests[key] = req
        return req

    def render(self, rid: Any, d: Decision) -> str:
        """``json.dumps({"id": rid, **d.to_dict()})``, the part after the id kept by what it
        is made of: the outcome, the deciding policy type and statements (compiled objects,
        compared by identity) and the request's principal, action and resource (the message)."""
        r = d.request
        key = (d.decision, d.kind, d.statements, r.principal_arn, r.action, r.resource)
        tail = self._rendered.get(key)
        if tail is None:
            tail = json.dumps(d.to_dict())[1:]
            if len(self._rendered) >= _RENDERED_LIMIT:
                self._rendered.clear()
            self._rendered[key] = tail
        head = str(rid) if type(rid) is int else json.dumps(rid)
        return '{"id": ' + head + ", " + tail

    # -- one line --

    def evaluate(
        self,
        obj: Mapping[str, Any],
        explain: bool = False,
        values: Mapping[str, Any] | None = None,
        key: tuple[str, ...] | None = None,
    ) -> dict[str, Any]:
        """One request → one result (``values``: its policy fields when cut out of ``obj``)."""
        out = self.decide(obj, explain, values, key)
        if isinstance(out, dict):
            return out
        return {"id": out[0], **out[1].to_dict(explain)}

    def decide(
        self,
        obj: Mapping[str, Any],
        explain: bool = False,
        values: Mapping[str, Any] | None = None,
        key: tuple[str, ...] | None = None,
    ) -> tuple[Any, Decision] | dict[str, Any]:
        """One request → (its id, the decision), or the error result."""
        rid = obj.get("id")
        fields = obj if values is None else values
        try:
            if "policies" not in fields:
                raise InputError("missing field: policies")
            if "action" not in obj:
                raise InputError("missing field: action")
            if key is not None:
                ps = self._policy_set(key, fields)
            elif self.cache:
                text_key = tuple(
                    f"{f}\x00{json.dumps(fields[f])}" for f in POLICY_FIELDS if f in fields
                )
                ps = self._policy_set(text_key, fields)
            else:
                ps = build_policy_set(fields)
            return rid, ps.evaluate(self._request(obj), explain)
        except PolicyError as exc:
            return {"id": rid, "error": exc.to_dict()}
        except (InputError, TypeError, ValueError) as exc:
            return {"id": rid, "error": {"code": "InvalidInput", "message": str(exc)}}

    def line(self, line: str, explain: bool = False) -> dict[str, Any]:
        """One raw JSON line → one result."""
        out = self.decide_line(line, explain)
        if isinstance(out, dict):
            return out
        return {"id": out[0], **out[1].to_dict(explain)}

    def line_text(self, line: str, explain: bool = False) -> str:
        """One raw JSON line → its result as JSON text (``json.dumps(self.line(line))``)."""
        out = self.decide_line(line, explain)
        if isinstance(out, dict):
            return json.dumps(out)
        if explain or not self.cache:
            return json.dumps({"id": out[0], **out[1].to_dict(explain)})
        return self.render(*out)

    def decide_line(
        self, line: str, explain: bool = False
    ) -> tuple[Any, Decision] | dict[str, Any]:
        if self.cache:
            split = self._split(line)
            if split is not None:
                rest, values, key = split
                return self.decide(rest, explain, values, key)
        try:
            obj = json.loads(line)
        except ValueError as exc:
            return {"id": None, "error": {"code": "InvalidInput", "message": str(exc)}}
        if not isinstance(obj, dict):
            return {
                "id": None,
                "error": {"code": "InvalidInput", "message": "each line must be a JSON object"},
            }
        return self.decide(obj, explain)


def evaluate_stream(
    streams: Iterable[Iterable[str]], out: IO[str], explain: bool = False, cache: bool = True
) -> None:
    """Every non-blank line of ``streams`` decided, one result line each, in order."""
    ev = Evaluator(cache)
    write = out.write
    for stream in streams:
        for raw in stream:
            if raw.isspace() or not raw:
                continue
            write(ev.line_text(raw, explain) + "\n")
