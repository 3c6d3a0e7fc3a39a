"""Write-time validation of IAM policy documents, with the messages IAM returns.

IAM reports only the first problem it finds, so the order of the checks is part of the contract:

1. syntax (JSON shape and types)                      ``Syntax errors in policy.``
2. version (managed policies only)                    ``Policy document must be version ...``
3. legacy parsing (Effect case, Date values, ARNs)    ``The policy failed legacy parsing``
4. Sid characters (identity / boundary documents)     ``Statement IDs (SID) must be alpha-...``
5. Sid uniqueness                                     ``Statement IDs (SID) in a single policy...``
6. actions present                                    ``Policy statement must contain actions.``
7. the first resource format error (ARN shape, partition, vendor, region, IAM path)
8. action vendor prefixes
9. resources present (all kinds but role trust policies)
10. per-kind rules: Principal forbidden / required, Resource prohibited in trust policies

``docs/iam-validation.md`` lists every message and the choices made where AWS's behaviour is not
known. Every check works on arbitrary JSON values: the only exceptions that leave this module are
:class:`MalformedPolicyDocument` and :class:`LimitExceeded`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, NoReturn

from hatchway.iam.conditions import OPERATORS
from hatchway.iam.document import SYNTAX_ERROR, load_json, policy_size
from hatchway.iam.errors import LimitExceeded, MalformedPolicyDocument
from hatchway.iam.kinds import PolicyKind

__all__ = [
    "GROUP_INLINE_POLICY_SIZE",
    "MANAGED_POLICIES_PER_PRINCIPAL",
    "MANAGED_POLICIES_PER_PRINCIPAL_MAX",
    "MANAGED_POLICY_SIZE",
    "MANAGED_POLICY_VERSIONS",
    "ROLE_INLINE_POLICY_SIZE",
    "SCP_SIZE",
    "SESSION_POLICY_ARNS",
    "TAG_KEY_LENGTH",
    "TAG_VALUE_LENGTH",
    "TRUST_POLICY_SIZE",
    "TRUST_POLICY_SIZE_MAX",
    "USER_INLINE_POLICY_SIZE",
    "validate_document",
    "validate_policy_text",
]

# --- Quotas (IAM quotas page; sizes count characters that are not white space) ------------------

MANAGED_POLICY_SIZE: Final = 6144
USER_INLINE_POLICY_SIZE: Final = 2048  # aggregate of a user's inline policies
GROUP_INLINE_POLICY_SIZE: Final = 5120  # aggregate of a group's inline policies
ROLE_INLINE_POLICY_SIZE: Final = 10240  # aggregate of a role's inline policies
TRUST_POLICY_SIZE: Final = 2048  # role trust policy, default quota
TRUST_POLICY_SIZE_MAX: Final = 4096  # role trust policy, highest adjustable value
SCP_SIZE: Final = 5120  # service control policy (Organizations)
MANAGED_POLICIES_PER_PRINCIPAL: Final = 10  # attached to one user or role, default
MANAGED_POLICIES_PER_PRINCIPAL_MAX: Final = 20  # attached to one user or role, adjustable to
MANAGED_POLICY_VERSIONS: Final = 5  # stored versions of one managed policy
SESSION_POLICY_ARNS: Final = 10  # managed policy ARNs passed as session policies
TAG_KEY_LENGTH: Final = 128
TAG_VALUE_LENGTH: Final = 256

# --- Messages (exact AWS texts) ------------------------------------------------------------------

_VERSION_TOO_OLD = "Policy document must be version 2012-10-17 or greater."
_LEGACY = "The policy failed legacy parsing"
_SID_CHARS = (
    "Statement IDs (SID) must be alpha-numeric. "
    "Check that your input satisfies the regular expression [0-9A-Za-z]*"
)
_SID_UNIQUE = "Statement IDs (SID) in a single policy must be unique."
_NO_ACTIONS = "Policy statement must contain actions."
_NO_RESOURCES = "Policy statement must contain resources."
_NO_VENDOR = "Actions/Conditions must be prefaced by a vendor, e.g., iam, sdb, ec2, etc."
_ONE_COLON = "Actions/Condition can contain only one colon."
_BAD_VENDOR = "Vendor {vendor} is not valid"
_NOT_ARN = 'Resource {resource} must be in ARN format or "*".'
_BAD_PARTITION = 'Partition "{partition}" is not valid for resource "arn:{partition}:{rest}".'
_RESOURCE_VENDOR = "Resource vendor must be fully qualified and cannot contain regexes."
_IAM_REGION = "IAM resource {resource} cannot contain region information."
_S3_REGION = "Resource {resource} can not contain region information."
_PRINCIPAL_FORBIDDEN = "Policy document should not specify a principal."
_PROHIBITED_FIELD = "Has prohibited field {field}"
_MISSING_PRINCIPAL = "Missing required field Principal"
_TRUST_NO_PRINCIPAL = (
    "Invalid principal in policy: com.amazon.balsa.error.InvalidPolicyException: "
    "The passed in policy has a statement with no principals!"
)

# --- Grammar ------------------------------------------------------------------------------------

_VERSIONS: Final = ("2008-10-17", "2012-10-17")
_CURRENT_VERSION: Final = "2012-10-17"
_TOP_FIELDS: Final = frozenset({"Version", "Id", "Statement"})
_STATEMENT_FIELDS: Final = frozenset(
    {
        "Sid",
        "Effect",
        "Principal",
        "NotPrincipal",
        "Action",
        "NotAction",
        "Resource",
        "NotResource",
        "Condition",
    }
)
_PRINCIPAL_TYPES: Final = frozenset({"AWS", "Federated", "Service", "CanonicalUser"})
_SET_PREFIXES: Final = ("ForAnyValue:", "ForAllValues:")
_IF_EXISTS: Final = "IfExists"
# Operator names come from the evaluator's table, so the two can never disagree.
_OPERATORS: Final = frozenset(op.name for op in OPERATORS.values()) | {"Null"}
_DATE_OPERATORS: Final = frozenset(n for n in _OPERATORS if n.startswith("Date"))

# Partitions AWS currently has. Besides these, a partition segment of exactly "*" is accepted.
_PARTITIONS: Final = frozenset(
    {"aws", "aws-cn", "aws-us-gov", "aws-iso", "aws-iso-b", "aws-iso-e", "aws-iso-f", "aws-eusc"}
)
_IAM_PATH_PREFIXES: Final = (
    "user/",
    "federated-user/",
    "role/",
    "group/",
    "instance-profile/",
    "mfa/",
    "server-certificate/",
    "policy/",
    "sms-mfa/",
    "saml-provider/",
    "oidc-provider/",
    "report/",
    "access-report/",
)
_IAM_PATH = (
    'IAM resource path must either be "*" or start with ' + ", ".join(_IAM_PATH_PREFIXES) + "."
)
# S3 resource types whose ARNs carry a region (everything else in s3 is global).
_S3_REGIONAL_PREFIXES: Final = (
    "accesspoint/",
    "job/",
    "storage-lens/",
    "storage-lens-group/",
    "async-request/",
    "access-grants/",
)
_VENDOR_BAD_CHAR = re.compile(r"[^A-Za-z0-9.\-]")
_SID_RE = re.compile(r"[0-9A-Za-z]*")
# Kinds are compared with ``==`` (tuples, not sets) so that plain strings such as "trust" work too.
_SID_CHECKED_KINDS: Final = (PolicyKind.IDENTITY, PolicyKind.BOUNDARY)
_NO_PRINCIPAL_KINDS: Final = (
    PolicyKind.IDENTITY,
    PolicyKind.BOUNDARY,
    PolicyKind.SESSION,
    PolicyKind.SCP,
)
_PRINCIPAL_REQUIRED_KINDS: Final = (PolicyKind.RESOURCE, PolicyKind.RCP)

# Date values: epoch seconds (a signed 64-bit count) or ISO 8601 as Joda-Time reads it.
_LONG_MAX: Final = 2**63 - 1
_MIN_YEAR: Final = -292275054
_MAX_YEAR: Final = 292278993
_EPOCH_RE = re.compile(r"\+?[0-9]+")
_ISO_DATE_RE = re.compile(r"(?P<y>[+-]?[0-9]{1,9})(?:-(?P<m>[0-9]{1,2})(?:-(?P<d>[0-9]{1,2}))?)?")
_ISO_TIME_RE = re.compile(
    r"(?P<h>[0-9]{1,2})(?::(?P<mi>[0-9]{1,2})(?::(?P<s>[0-9]{1,2}))?)?"
    r"(?:[.,][0-9]{1,9})?"
    r"(?:[zZ]|[+-](?P<oh>[0-9]{2})(?::?(?P<om>[0-9]{2}))?)?"
)
_DAYS_IN_MONTH: Final = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@dataclass(frozen=True)
class _Statement:
    """One statement after the syntax check: every field has its grammatical type."""

    sid: str | None
    effect: str
    principal: bool  # Principal given
    not_principal: bool  # NotPrincipal given
    action_field: str | None  # "Action" / "NotAction" / None
    actions: tuple[str, ...]
    actions_given: bool  # field present and, when a list, not empty
    resource_field: str | None  # "Resource" / "NotResource" / None
    resources: tuple[str, ...]  # null list entries dropped
    resources_given: bool  # field present and, when a list, not empty
    conditions: tuple[tuple[str, dict[str, object]], ...]


def validate_document(
    doc: object, kind: PolicyKind = PolicyKind.IDENTITY, *, managed: bool = False
) -> None:
    """Raise MalformedPolicyDocument with AWS's exact message for the first problem, in AWS's order.

    ``doc`` is a parsed JSON value. ``managed`` marks a customer managed policy (CreatePolicy,
    CreatePolicyVersion), which must declare ``"Version": "2012-10-17"``.
    """
    statements, version = _check_syntax(doc)
    if managed and version != _CURRENT_VERSION:
        _fail(_VERSION_TOO_OLD)
    _check_legacy(statements)
    if kind in _SID_CHECKED_KINDS:
        _check_sid_characters(statements)
    _check_sid_uniqueness(statements)
    if not all(s.actions_given for s in statements):
        _fail(_NO_ACTIONS)
    resource_error = _first_resource_error(statements)
    if resource_error is not None:
        _fail(resource_error)
    for statement in statements:
        for action in statement.actions:
            _check_action(action)
    _check_kind(statements, kind)


def validate_policy_text(
    text: str,
    kind: PolicyKind = PolicyKind.IDENTITY,
    *,
    managed: bool = False,
    size_limit: int | None = None,
) -> dict[str, object]:
    """load_json + size check + validate_document; return the parsed dict.

    The size check (``LimitExceeded: Cannot exceed quota for PolicySize: N``) runs when
    ``size_limit`` is given and counts characters that are not white space, as IAM does.
    """
    doc = load_json(text)
    if size_limit is not None and policy_size(text) > size_limit:
        raise LimitExceeded(f"Cannot exceed quota for PolicySize: {size_limit}")
    validate_document(doc, kind, managed=managed)
    if not isinstance(doc, dict):  # pragma: no cover - validate_document rejected it already
        _fail(SYNTAX_ERROR)
    return doc


def _fail(message: str) -> NoReturn:
    raise MalformedPolicyDocument(message)


# --- 1. Syntax -----------------------------------------------------------------------------------


def _check_syntax(doc: object) -> tuple[list[_Statement], str | None]:
    """Check the JSON shape; return the statements and the Version (None when absent)."""
    if not isinstance(doc, dict) or not all(isinstance(k, str) for k in doc):
        _fail(SYNTAX_ERROR)
    if not set(doc) <= _TOP_FIELDS:
        _fail(SYNTAX_ERROR)
    version = doc.get("Version")
    if "Version" in doc and not (isinstance(version, str) and version in _VERSIONS):
        _fail(SYNTAX_ERROR)
    if "Id" in doc and not isinstance(doc["Id"], str):
        _fail(SYNTAX_ERROR)
    raw = doc.get("Statement")
    if isinstance(raw, dict):
        raw_statements: list[object] = [raw]
    elif isinstance(raw, list) and raw:
        raw_statements = list(raw)
    else:
        _fail(SYNTAX_ERROR)
    statements = [_statement_syntax(s) for s in raw_statements]
    return statements, version if isinstance(version, str) else None


def _statement_syntax(raw: object) -> _Statement:
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        _fail(SYNTAX_ERROR)
    if not set(raw) <= _STATEMENT_FIELDS:
        _fail(SYNTAX_ERROR)
    for one, other in (("Action", "NotAction"), ("Resource", "NotResource")):
        if one in raw and other in raw:
            _fail(SYNTAX_ERROR)
    if "Principal" in raw and "NotPrincipal" in raw:
        _fail(SYNTAX_ERROR)

    effect = raw.get("Effect")
    if not (isinstance(effect, str) and effect.isascii() and effect.lower() in ("allow", "deny")):
        _fail(SYNTAX_ERROR)
    sid = raw.get("Sid")
    if "Sid" in raw and not isinstance(sid, str):
        _fail(SYNTAX_ERROR)

    action_field = _present(raw, "Action", "NotAction")
    actions: tuple[str, ...] = ()
    actions_given = False
    if action_field is not None:
        value = raw[action_field]
        if isinstance(value, str):
            actions, actions_given = (value,), True
        elif isinstance(value, list) and all(isinstance(a, str) for a in value):
            actions, actions_given = tuple(value), bool(value)
        else:
            _fail(SYNTAX_ERROR)

    resource_field = _present(raw, "Resource", "NotResource")
    resources: tuple[str, ...] = ()
    resources_given = False
    if resource_field is not None:
        value = raw[resource_field]
        if isinstance(value, str):
            resources, resources_given = (value,), True
        elif isinstance(value, list) and all(r is None or isinstance(r, str) for r in value):
            resources = tuple(r for r in value if isinstance(r, str))
            resources_given = bool(value)
        else:
            _fail(SYNTAX_ERROR)

    for field in ("Principal", "NotPrincipal"):
        if field in raw and not _principal_shape_ok(raw[field]):
            _fail(SYNTAX_ERROR)

    conditions: tuple[tuple[str, dict[str, object]], ...] = ()
    if "Condition" in raw:
        conditions = _condition_syntax(raw["Condition"])

    return _Statement(
        sid=sid if isinstance(sid, str) else None,
        effect=effect,
        principal="Principal" in raw,
        not_principal="NotPrincipal" in raw,
        action_field=action_field,
        actions=actions,
        actions_given=actions_given,
        resource_field=resource_field,
        resources=resources,
        resources_given=resources_given,
        conditions=conditions,
    )


def _present(raw: dict[str, object], one: str, other: str) -> str | None:
    if one in raw:
        return one
    if other in raw:
        return other
    return None


def _principal_shape_ok(value: object) -> bool:
    if isinstance(value, str):
        return value == "*"
    if not isinstance(value, dict) or not value:
        return False
    for key, ids in value.items():
        if not (isinstance(key, str) and key in _PRINCIPAL_TYPES):
            return False
        if isinstance(ids, str):
            continue
        if not (isinstance(ids, list) and ids and all(isinstance(i, str) for i in ids)):
            return False
    return True


def _is_scalar(value: object) -> bool:
    # Condition values: strings, and (unquoted) numbers and booleans.
    return isinstance(value, (str, bool, int, float))


def _condition_syntax(block: object) -> tuple[tuple[str, dict[str, object]], ...]:
    if not isinstance(block, dict):
        _fail(SYNTAX_ERROR)
    out: list[tuple[str, dict[str, object]]] = []
    for operator, entries in block.items():
        if not isinstance(operator, str) or not isinstance(entries, dict):
            _fail(SYNTAX_ERROR)
        for key, value in entries.items():
            if not isinstance(key, str):
                _fail(SYNTAX_ERROR)
            if isinstance(value, list):
                if not all(_is_scalar(v) for v in value):
                    _fail(SYNTAX_ERROR)
            elif not _is_scalar(value):
                _fail(SYNTAX_ERROR)
        # An unknown operator is tolerated only while it carries nothing.
        if entries and _base_operator(operator) not in _OPERATORS:
            _fail(SYNTAX_ERROR)
        out.append((operator, entries))
    return tuple(out)


def _base_operator(operator: str) -> str:
    """Strip one set prefix (ForAnyValue:/ForAllValues:) and one IfExists suffix."""
    for prefix in _SET_PREFIXES:
        if operator.startswith(prefix):
            operator = operator[len(prefix) :]
            break
    if operator.endswith(_IF_EXISTS):
        operator = operator[: -len(_IF_EXISTS)]
    return operator


# --- 3. Legacy parsing ---------------------------------------------------------------------------


def _check_legacy(statements: list[_Statement]) -> None:
    for statement in statements:
        if statement.effect not in ("Allow", "Deny"):
            _fail(_LEGACY)
        for operator, entries in statement.conditions:
            if _base_operator(operator) in _DATE_OPERATORS:
                for value in entries.values():
                    values = value if isinstance(value, list) else [value]
                    if not all(_date_value_ok(v) for v in values):
                        _fail(_LEGACY)
    for statement in statements:
        for resource in statement.resources:
            if _resource_format_error(resource) is None and not _legacy_arn_ok(resource):
                _fail(_LEGACY)


def _legacy_arn_ok(resource: str) -> bool:
    """The old parser's view of a well-formed ARN (only run on ARNs that pass the format check)."""
    if resource == "*":
        return True
    if resource.count(":") < 5 and "::" in resource:
        return False
    parts = resource.split(":", 3)
    return len(parts) > 2 and parts[2] != ""


def _date_value_ok(value: object) -> bool:
    if isinstance(value, (bool, float)):
        return False
    if isinstance(value, int):
        if value.bit_length() > 64:
            return False
        value = str(value)
    if not isinstance(value, str):
        return False
    if "-" in value or "t" in value or "T" in value:
        return _iso_datetime_ok(value)
    if not _EPOCH_RE.fullmatch(value):
        return False
    digits = value.lstrip("+").lstrip("0")
    return len(digits) <= 19 and int(digits or "0") <= _LONG_MAX


def _iso_datetime_ok(value: str) -> bool:
    date_part, _, time_part = value.replace("t", "T").partition("T")
    match = _ISO_DATE_RE.fullmatch(date_part)
    if match is None:
        return False
    year = int(match["y"])
    if not _MIN_YEAR <= year <= _MAX_YEAR:
        return False
    if match["m"] is not None:
        month = int(match["m"])
        if not 1 <= month <= 12:
            return False
        if match["d"] is not None and not 1 <= int(match["d"]) <= _month_days(year, month):
            return False
    if not time_part:
        return True
    match = _ISO_TIME_RE.fullmatch(time_part)
    if match is None:
        return False
    limits = (("h", 23), ("mi", 59), ("s", 59), ("oh", 23), ("om", 59))
    return all(match[name] is None or int(match[name]) <= top for name, top in limits)


def _month_days(year: int, month: int) -> int:
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        return 29
    return _DAYS_IN_MONTH[month - 1]


# --- 4/5. Sids -----------------------------------------------------------------------------------


def _check_sid_characters(statements: list[_Statement]) -> None:
    for statement in statements:
        if statement.sid is not None and not _SID_RE.fullmatch(statement.sid):
            _fail(_SID_CHARS)


def _check_sid_uniqueness(statements: list[_Statement]) -> None:
    seen: set[str] = set()
    for statement in statements:
        if statement.sid:
            if statement.sid in seen:
                _fail(_SID_UNIQUE)
            seen.add(statement.sid)


# --- 7. Resource formats -------------------------------------------------------------------------


def _first_resource_error(statements: list[_Statement]) -> str | None:
    for statement in statements:
        for resource in statement.resources:
            error = _resource_format_error(resource)
            if error is not None:
                return error
    return None


def _resource_format_error(resource: str) -> str | None:
    """The message for a Resource/NotResource value IAM rejects, or None.

    Segments are counted from the first colon; the first segment itself (normally ``arn``) is
    not checked, as IAM does not check it either.
    """
    if resource == "*":
        return None
    parts = resource.split(":")
    if len(parts) == 1:
        return _NOT_ARN.format(resource=resource)
    partition = parts[1]
    if partition != "*" and partition not in _PARTITIONS:
        tail = parts[2:]
        shown = [
            tail[0] if tail and (tail[0] or len(tail) > 1) else "*",
            tail[1] if len(tail) > 1 else "*",
            tail[2] if len(tail) > 2 else "*",
            ":".join(tail[3:]) if len(tail) > 3 else "*",
        ]
        return _BAD_PARTITION.format(partition=partition, rest=":".join(shown))
    if len(parts) == 2:
        return _RESOURCE_VENDOR
    service = parts[2]
    region = parts[3] if len(parts) > 3 else ""
    relative = ":".join(parts[5:])
    if service == "iam":
        if region:
            return _IAM_REGION.format(resource=resource)
        if relative != "*" and not relative.startswith(_IAM_PATH_PREFIXES):
            return _IAM_PATH
    elif service == "s3" and region and not relative.startswith(_S3_REGIONAL_PREFIXES):
        return _S3_REGION.format(resource=resource)
    return None


# --- 8. Action prefixes --------------------------------------------------------------------------


def _check_action(action: str) -> None:
    parts = action.split(":")
    if len(parts) == 1:
        if action != "*":
            _fail(_NO_VENDOR)
        return
    if len(parts) > 2:
        _fail(_ONE_COLON)
    vendor = parts[0]
    if vendor != "*" and _VENDOR_BAD_CHAR.search(vendor):
        _fail(_BAD_VENDOR.format(vendor=vendor))


# --- 9/10. Per-kind rules ------------------------------------------------------------------------


def _check_kind(statements: list[_Statement], kind: PolicyKind) -> None:
    if kind != PolicyKind.TRUST and not all(s.resources_given for s in statements):
        _fail(_NO_RESOURCES)
    for statement in statements:
        has_principal = statement.principal or statement.not_principal
        if kind in _NO_PRINCIPAL_KINDS and has_principal:
            _fail(_PRINCIPAL_FORBIDDEN)
        if kind in _PRINCIPAL_REQUIRED_KINDS and not has_principal:
            _fail(_MISSING_PRINCIPAL)
        if kind == PolicyKind.TRUST:
            if statement.resource_field is not None:
                _fail(_PROHIBITED_FIELD.format(field=statement.resource_field))
            if not statement.principal:
                _fail(_TRUST_NO_PRINCIPAL)
