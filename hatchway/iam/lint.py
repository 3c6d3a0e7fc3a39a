"""Lint identity policies for Session Manager pitfalls. Pure: no I/O.

``lint_policies`` takes every identity policy that applies to one principal together, because the
central rule is about the whole set: AWS's ``ssm:SessionDocumentAccessCheck`` page says the
condition "must be included in all policy statements which allow the ssm:StartSession action",
and those statements may live in different policies.

The rules follow the evaluation model of StartSession
(docs/reference/session-manager.md#startsession-authorization, the one ``hatchway.ssm`` implements):
without ``--document-name`` the target is authorized with ``ssm:SessionDocumentAccessCheck`` =
``"false"``; with a document named, the key is absent from both the target and the document
authorization. A condition is judged by running its compiled clauses against those two contexts, so
spellings other than AWS's (``StringEquals``, ``Null``, …) are judged by what they do.

Precision over recall: a rule fires only where the effect is certain from the documents alone.
AWS's own sample policies (2025 and legacy quickstarts) give no finding except
``username-session-arn`` where they use ``${aws:username}``. ``${aws:userid}`` in a session ARN is
deliberately *not* reported: AWS's 2025 samples use it, and Hatchway can name sessions after the
user id; the ``username-session-arn`` message says why it is no fix on AWS.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hatchway.iam.arn import split_arn
from hatchway.iam.conditions import Clause, SetMode, parse_operator
from hatchway.iam.context import Context
from hatchway.iam.policy import Statement, compile_policy
from hatchway.iam.variables import Var, parse_template
from hatchway.iam.wildcard import compile_glob, has_wildcard

CHECK_KEY = "ssm:sessiondocumentaccesscheck"
_CHECK_NAME = "ssm:SessionDocumentAccessCheck"
_START = "ssm:startsession"
_SESSION_ACTIONS = ("ssm:terminatesession", "ssm:resumesession", "ssmmessages:opendatachannel")
_OWNER_ACTIONS = ("ssm:terminatesession", "ssm:resumesession")
_SESSION_ID_TAG = "aws:ssmmessages:session-id"

# (service, resource-part prefix) of the ARNs each kind of StartSession authorization uses.
_TARGETS = (("ec2", "instance/"), ("ssm", "managed-instance/"), ("ecs", "task/"))
_DOCUMENTS = (("ssm", "document/"),)
_SESSIONS = (("ssm", "session/"),)
# A document name nobody would list: a pattern matching it (and the empty account of AWS-owned
# documents as well as a real account) matches every session document.
_PROBE_DOCUMENT = "document/Zq-hatchway-lint-probe-9c1e"
_PROBE_ACCOUNTS = ("", "111122223333")

# The two request contexts StartSession produces for the key
# (docs/reference/session-manager.md#startsession-authorization).
_NO_DOCUMENT: Context = {CHECK_KEY: "false"}
_KEY_ABSENT: Context = {}

_FIX_IFEXISTS = '"Condition": {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}}'
_FIX_DENY = '"Bool": {"ssm:SessionDocumentAccessCheck": "false"} (no IfExists)'
_OWNER_TAG_FIX = (
    '"Condition": {"StringLike": {"ssm:resourceTag/aws:ssmmessages:session-id": "${aws:userid}"}}'
)


@dataclass(frozen=True)
class Finding:
    """One problem in one statement."""

    code: str  # stable kebab-case id
    message: str  # one sentence for a human, naming the problem and the fix
    policy: str  # the label the caller gave the policy (e.g. its file name)
    statement_index: int  # 0-based index in the policy's Statement list
    sid: str | None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (camelCase, like ``Statement.ref``)."""
        return {
            "code": self.code,
            "message": self.message,
            "policy": self.policy,
            "statementIndex": self.statement_index,
            "sid": self.sid,
        }


@dataclass(frozen=True)
class _Entry:
    """A compiled statement with where it came from."""

    order: int  # position of its policy in the input
    label: str
    index: int
    stmt: Statement

    def ref(self) -> str:
        sid = f" (Sid {self.stmt.sid})" if self.stmt.sid else ""
        return f"statement {self.index}{sid} of {self.label}"


# --- resource shapes ---------------------------------------------------------------------


def _literal_prefix(text: str) -> tuple[str, bool]:
    """Text before the first wildcard or variable, and whether anything follows it."""
    cut = min((i for i in (text.find("*"), text.find("?"), text.find("${")) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


def _glob_matches(pattern: str, text: str) -> bool:
    if "${" in pattern:
        return True  # unknown until request time: assume it may
    if not has_wildcard(pattern):
        return pattern.lower() == text
    return compile_glob(pattern, ignore_case=True).match(text)


def _may_match(pattern: str, kinds: tuple[tuple[str, str], ...]) -> bool:
    """Could a Resource pattern match some ARN of one of ``kinds``? (True when unsure.)"""
    if pattern == "*" or not pattern.lower().startswith("arn:"):
        return True
    parts = split_arn(pattern)
    prefix, open_ended = _literal_prefix(parts[5])
    for service, kind in kinds:
        if not _glob_matches(parts[2], service):
            continue
        if prefix.startswith(kind) or (open_ended and kind.startswith(prefix)):
            return True
    return False


def _statement_may_match(stmt: Statement, kinds: tuple[tuple[str, str], ...]) -> bool:
    if stmt.resources is None or stmt.not_resource:
        return True  # NotResource: conservatively assume it leaves some such ARN
    return any(_may_match(p, kinds) for p in stmt.resources.patterns)


def _covers_all_documents(pattern: str) -> bool:
    if pattern == "*":
        return True
    if not pattern.lower().startswith("arn:") or "${" in pattern:
        return False
    parts = split_arn(pattern)
    return (
        _glob_matches(parts[2], "ssm")
        and all(_glob_matches(parts[4], account) for account in _PROBE_ACCOUNTS)
        and compile_glob(parts[5]).match(_PROBE_DOCUMENT)
    )


def _allows_every_document(stmt: Statement) -> bool:
    if stmt.resources is None:
        return False
    if stmt.not_resource:
        return not any(_may_match(p, _DOCUMENTS) for p in stmt.resources.patterns)
    return any(_covers_all_documents(p) for p in stmt.resources.patterns)


def _has_username(text: str) -> bool:
    template = parse_template(text)
    return template is not None and any(
        isinstance(part, Var) and part.key == "aws:username" for part in template
    )


# --- conditions --------------------------------------------------------------------------


def _clauses(stmt: Statement) -> tuple[Clause, ...]:
    return stmt.conditions.clauses if stmt.conditions is not None else ()


def _show(c: Clause) -> str:
    """A clause as it reads in the policy: ``Bool {"ssm:SessionDocumentAccessCheck": "true"}``."""
    values: object = c.values[0] if len(c.values) == 1 else list(c.values)
    return f"{c.operator} {json.dumps({c.raw_key: values})}"


def _check_clauses(stmt: Statement) -> list[Clause]:
    return [c for c in _clauses(stmt) if c.key == CHECK_KEY]


def _enforces_check(stmt: Statement) -> bool:
    """Does the statement stop applying when no document is named (key = "false")?"""
    return any(not c.test(_NO_DOCUMENT) for c in _check_clauses(stmt))


def _guarded(stmt: Statement, clause: Clause) -> bool:
    """Another clause on the same key that fails when the key is missing (a Null guard)."""
    return any(
        c is not clause and c.key == clause.key and not c.test(_KEY_ABSENT) for c in _clauses(stmt)
    )


def _starts(e: _Entry) -> bool:
    return e.stmt.matches_action(_START)


def _is_deny_enforcer(stmt: Statement) -> bool:
    """A Deny that applies whenever no document is named (e.g. ``Bool … "false"``).

    It makes the Allow side's check moot; one that also blocks named documents is reported by
    ``document-check-deny-blocks-named``, and its fix keeps it an enforcer.
    """
    clauses = _clauses(stmt)
    return (
        not stmt.allow
        and stmt.matches_action(_START)
        and all(c.key == CHECK_KEY and c.test(_NO_DOCUMENT) for c in clauses)
    )


def _deny_covers(deny: Statement, allow: Statement) -> bool:
    """Does the Deny cover every target the Allow can grant? (Literal patterns only.)"""
    if deny.resources is None:
        return True
    if deny.not_resource:
        return not any(_may_match(p, _TARGETS) for p in deny.resources.patterns)
    if deny.resources.match_all:
        return True
    if allow.resources is None or allow.not_resource:
        return False
    return set(allow.resources.patterns) <= set(deny.resources.patterns)


# --- rules -------------------------------------------------------------------------------

# A rule yields (statement, code, message) for each problem it finds.
_Hit = tuple[_Entry, str, str]
_Rule = Callable[[Sequence[_Entry]], Iterator[_Hit]]


def _document_check_not_enforced(entries: Sequence[_Entry]) -> Iterator[_Hit]:
    allows = [e for e in entries if e.stmt.allow and _starts(e)]
    enforcers = [e for e in allows if _enforces_check(e.stmt)]
    if not enforcers:
        return
    deny_enforcers = [e.stmt for e in entries if _is_deny_enforcer(e.stmt)]
    for e in allows:
        if _enforces_check(e.stmt) or not _statement_may_match(e.stmt, _TARGETS):
            continue  # statements that cannot match a target never grant the no-document case
        if any(_deny_covers(d, e.stmt) for d in deny_enforcers):
            continue
        yield (
            e,
            "document-check-not-enforced",
            f"This statement allows ssm:StartSession without the {_CHECK_NAME} condition that "
            f"{enforcers[0].ref()} sets, so users can still start sessions without "
            "--document-name and the document check is not enforced; add "
            f"{_FIX_IFEXISTS} to this statement as well.",
        )


def _bool_needs_ifexists(entries: Sequence[_Entry]) -> Iterator[_Hit]:
    for e in entries:
        if not (e.stmt.allow and _starts(e)):
            continue
        for c in _check_clauses(e.stmt):
            if (
                c.op is not None
                and c.op.name == "Bool"
                and not c.if_exists
                and c.mode is SetMode.PLAIN
                and any(v.lower() == "true" for v in c.values)
            ):
                yield (
                    e,
                    "bool-needs-ifexists",
                    f"{_show(c)} (without IfExists) is false when the key is absent, which it "
                    "is whenever a session names a document, so this statement never allows "
                    "sessions started with --document-name; use BoolIfExists instead.",
                )


def _username_session_arn(entries: Sequence[_Entry]) -> Iterator[_Hit]:
    for e in entries:
        s = e.stmt
        if not any(s.matches_action(a) for a in _SESSION_ACTIONS):
            continue
        owner = any(s.matches_action(a) for a in _OWNER_ACTIONS)
        fix = (
            f"scope it with {_OWNER_TAG_FIX} on arn:aws:ssm:*:*:session/* instead"
            if owner
            else "grant ssmmessages:OpenDataChannel on arn:aws:ssm:*:*:session/* instead"
        )
        caveat = (
            " (session/${aws:userid}-* is no fix on AWS either: session ids start with the user "
            "or role-session name, not the unique id)"
        )
        patterns = s.resources.patterns if s.resources is not None else ()
        in_arn = any(_has_username(p) and _may_match(p, _SESSIONS) for p in patterns)
        if in_arn and s.not_resource:
            yield (
                e,
                "username-session-arn",
                "${aws:username} in this statement's NotResource is absent for role sessions "
                "(SSO users, assumed roles), so for them the pattern excludes nothing and the "
                f"statement applies to every session; {fix}{caveat}.",
            )
        elif in_arn:
            yield (
                e,
                "username-session-arn",
                "${aws:username} in this statement's session ARN is absent for role sessions "
                "(SSO users, assumed roles), so the statement never matches their sessions; "
                f"{fix}{caveat}.",
            )
        elif any(
            c.key.endswith(_SESSION_ID_TAG) and any(_has_username(v) for v in c.values)
            for c in _clauses(s)
        ):
            yield (
                e,
                "username-session-arn",
                "The aws:ssmmessages:session-id tag holds the starter's aws:userid, and "
                "${aws:username} is absent for role sessions (SSO users, assumed roles), so this "
                "condition never matches their sessions as intended; compare the tag with "
                "${aws:userid} instead.",
            )


def _forallvalues_allow_missing_key(entries: Sequence[_Entry]) -> Iterator[_Hit]:
    for e in entries:
        if not e.stmt.allow:
            continue
        for c in _clauses(e.stmt):
            if c.mode is SetMode.ALL and c.op is not None and not _guarded(e.stmt, c):
                yield (
                    e,
                    "forallvalues-allow-missing-key",
                    f"{c.operator} on {c.raw_key} is true when the request has no "
                    f"{c.raw_key} (missing or empty), so this Allow also grants such requests; "
                    f'add "Null": {{"{c.raw_key}": "false"}} to its Condition.',
                )


def _deny_check_clauses(e: _Entry) -> list[Clause]:
    """Clauses on the check key in a Deny that also match when a document is named."""
    s = e.stmt
    if s.allow or not _starts(e) or not _statement_may_match(s, _TARGETS):
        return []
    return [c for c in _check_clauses(s) if c.op is not None and c.test(_KEY_ABSENT)]


def _document_check_deny_blocks_named(entries: Sequence[_Entry]) -> Iterator[_Hit]:
    for e in entries:
        for c in _deny_check_clauses(e):
            if c.test(_NO_DOCUMENT):
                effect = (
                    "true both when no document is named (key false) and when one is (key "
                    "absent), so this Deny blocks every session to the targets it covers"
                )
            else:
                effect = (
                    "true when the key is absent, which it is whenever a document is named, "
                    "so this Deny blocks sessions started with --document-name"
                )
            yield (
                e,
                "document-check-deny-blocks-named",
                f"In a Deny, {_show(c)} is {effect}; to deny only sessions that omit "
                f"the document use {_FIX_DENY}.",
            )


def _negated_ifexists_in_deny(entries: Sequence[_Entry]) -> Iterator[_Hit]:
    for e in entries:
        if e.stmt.allow:
            continue
        specific = {id(c) for c in _deny_check_clauses(e)}
        for c in _clauses(e.stmt):
            if c.negated and c.if_exists and id(c) not in specific and not _guarded(e.stmt, c):
                yield (
                    e,
                    "negated-ifexists-in-deny",
                    f"{c.operator} on {c.raw_key} is true when {c.raw_key} is missing, so this "
                    "Deny still applies to requests without the key (IfExists exempts nothing "
                    f'here); add "Null": {{"{c.raw_key}": "false"}} if such requests should be '
                    "exempt, or drop IfExists if they should be denied.",
                )


def _document_check_any_document(entries: Sequence[_Entry]) -> Iterator[_Hit]:
    for e in entries:
        s = e.stmt
        if s.allow and _starts(e) and _enforces_check(s) and _allows_every_document(s):
            yield (
                e,
                "document-check-any-document",
                f"This statement sets the {_CHECK_NAME} condition but allows ssm:StartSession "
                "on every session document, so users must name a document yet any document "
                "passes (port forwarding to remote hosts, interactive commands, …); list only "
                "the document ARNs they may use in Resource.",
            )


def _document_check_no_document_allowed(entries: Sequence[_Entry]) -> Iterator[_Hit]:
    allows = [e for e in entries if e.stmt.allow and _starts(e)]
    enforcers = [e for e in allows if _enforces_check(e.stmt)]
    if not enforcers:
        return
    if any(_statement_may_match(e.stmt, _DOCUMENTS) for e in allows):
        return
    if any(not _enforces_check(e.stmt) and _statement_may_match(e.stmt, _TARGETS) for e in allows):
        return  # sessions without a document still work: document-check-not-enforced says so
    for e in enforcers:
        yield (
            e,
            "document-check-no-document-allowed",
            f"This statement's {_CHECK_NAME} condition makes users name a session document, "
            "but no statement in the policy set allows ssm:StartSession on any document ARN, "
            "so every session is denied; add the allowed documents (e.g. "
            "arn:aws:ssm:REGION:ACCOUNT:document/SSM-SessionManagerRunShell) to Resource.",
        )


_RULES: tuple[_Rule, ...] = (
    _document_check_not_enforced,
    _bool_needs_ifexists,
    _document_check_any_document,
    _document_check_no_document_allowed,
    _document_check_deny_blocks_named,
    _username_session_arn,
    _forallvalues_allow_missing_key,
    _negated_ifexists_in_deny,
)


# --- entry point -------------------------------------------------------------------------


def _unknown_operators(raw: Mapping[str, Any]) -> list[str]:
    cond = raw.get("Condition")
    if not isinstance(cond, Mapping):
        return []
    return [str(name) for name in cond if parse_operator(str(name)) is None]


def _statements(document: Mapping[str, Any]) -> list[Any]:
    stmts = document.get("Statement", [])
    if isinstance(stmts, Mapping):
        return [stmts]
    return list(stmts) if isinstance(stmts, list) else []


def lint_policies(policies: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Finding]:
    """Lint a *set* of identity policies (label, parsed document) that apply together.

    Findings come in input order: by policy, then statement index, then rule. A statement whose
    Condition uses an unknown operator (which AWS would reject) is reported as
    ``unknown-condition-operator`` and otherwise skipped.
    """
    entries: list[_Entry] = []
    found: list[tuple[int, int, int, Finding]] = []
    for order, (label, document) in enumerate(policies):
        header = {"Version": document["Version"]} if "Version" in document else {}
        for index, raw in enumerate(_statements(document)):
            if not isinstance(raw, Mapping):
                continue
            bad = _unknown_operators(raw)
            if bad:
                sid = raw.get("Sid")
                message = (
                    f"Condition operator {bad[0]!r} is not an IAM condition operator, so AWS "
                    "rejects the policy and this statement was not linted; correct it (e.g. "
                    "StringEquals, BoolIfExists, ForAllValues:StringLike)."
                )
                sid_text = sid if isinstance(sid, str) else None
                finding = Finding("unknown-condition-operator", message, label, index, sid_text)
                found.append((order, index, -1, finding))
                continue
            # One statement at a time, so that the index is the document's own.
            policy = compile_policy({**header, "Statement": [raw]}, name=label)
            entries.extend(_Entry(order, label, index, s) for s in policy.statements)
    for rank, rule in enumerate(_RULES):
        for e, code, message in rule(entries):
            finding = Finding(code, message, e.label, e.index, e.stmt.sid)
            found.append((e.order, e.index, rank, finding))
    found.sort(key=lambda t: t[:3])
    return [t[3] for t in found]
