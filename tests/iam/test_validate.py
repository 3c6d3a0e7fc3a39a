"""Write-time validation: the exact MalformedPolicyDocument message for each rejection, in order.

Each case is a document built for this suite; the expected messages are AWS's texts.
"""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from hatchway.iam.errors import LimitExceeded, MalformedPolicyDocument
from hatchway.iam.kinds import PolicyKind
from hatchway.iam.validate import (
    MANAGED_POLICY_SIZE,
    ROLE_INLINE_POLICY_SIZE,
    TRUST_POLICY_SIZE,
    USER_INLINE_POLICY_SIZE,
    validate_document,
    validate_policy_text,
)

SYNTAX = "Syntax errors in policy."
VERSION = "Policy document must be version 2012-10-17 or greater."
LEGACY = "The policy failed legacy parsing"
SID_CHARS = (
    "Statement IDs (SID) must be alpha-numeric. "
    "Check that your input satisfies the regular expression [0-9A-Za-z]*"
)
SID_UNIQUE = "Statement IDs (SID) in a single policy must be unique."
NO_ACTIONS = "Policy statement must contain actions."
NO_RESOURCES = "Policy statement must contain resources."
NO_VENDOR = "Actions/Conditions must be prefaced by a vendor, e.g., iam, sdb, ec2, etc."
ONE_COLON = "Actions/Condition can contain only one colon."
RESOURCE_VENDOR = "Resource vendor must be fully qualified and cannot contain regexes."
IAM_PATH = (
    'IAM resource path must either be "*" or start with user/, federated-user/, role/, group/, '
    "instance-profile/, mfa/, server-certificate/, policy/, sms-mfa/, saml-provider/, "
    "oidc-provider/, report/, access-report/."
)
NO_PRINCIPAL_ALLOWED = "Policy document should not specify a principal."
MISSING_PRINCIPAL = "Missing required field Principal"
TRUST_NO_PRINCIPAL = (
    "Invalid principal in policy: com.amazon.balsa.error.InvalidPolicyException: "
    "The passed in policy has a statement with no principals!"
)

BUCKET = "arn:aws:s3:::reports-bucket"
INSTANCE = "arn:aws:ec2:eu-west-1:111122223333:instance/i-0abc"
ACCOUNT = "arn:aws:iam::111122223333:root"

IDENTITY_LIKE = (PolicyKind.IDENTITY, PolicyKind.BOUNDARY, PolicyKind.SESSION, PolicyKind.SCP)
ALL_KINDS = tuple(PolicyKind)

_UNSET: Any = object()


def stmt(
    *,
    effect: Any = "Allow",
    action: Any = "s3:GetObject",
    resource: Any = BUCKET,
    **extra: Any,
) -> dict[str, Any]:
    """A statement; pass ``_UNSET`` to leave a field out, extra fields by their JSON names."""
    out: dict[str, Any] = {}
    if effect is not _UNSET:
        out["Effect"] = effect
    if action is not _UNSET:
        out["Action"] = action
    if resource is not _UNSET:
        out["Resource"] = resource
    out.update(extra)
    return out


def policy(*statements: Any, version: Any = "2012-10-17", **top: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if version is not _UNSET:
        out["Version"] = version
    out["Statement"] = list(statements) if len(statements) != 1 else statements[0]
    out.update(top)
    return out


def trust_stmt(
    *, effect: Any = "Allow", action: Any = "sts:AssumeRole", **extra: Any
) -> dict[str, Any]:
    """A role trust statement: a Principal and no Resource."""
    fields: dict[str, Any] = {"Principal": {"AWS": ACCOUNT}}
    fields.update(extra)
    return stmt(effect=effect, action=action, resource=_UNSET, **fields)


def resource_stmt(**extra: Any) -> dict[str, Any]:
    """A resource-policy statement: like ``stmt`` plus a Principal."""
    fields: dict[str, Any] = {"Principal": {"AWS": ACCOUNT}}
    fields.update(extra)
    return stmt(**fields)


def message_of(doc: object, kind: PolicyKind = PolicyKind.IDENTITY, managed: bool = False) -> str:
    with pytest.raises(MalformedPolicyDocument) as info:
        validate_document(doc, kind, managed=managed)
    assert info.value.code == "MalformedPolicyDocument"
    assert info.value.http_status == 400
    return info.value.message


# --- Rejections for identity-style documents ----------------------------------------------------
# (case id, document, message). Each runs against every kind without a Principal requirement.

IDENTITY_REJECTIONS: list[tuple[str, object, str]] = [
    # syntax: the document and its top level
    ("not-an-object-list", [policy(stmt())], SYNTAX),
    ("not-an-object-string", "Version", SYNTAX),
    ("not-an-object-null", None, SYNTAX),
    ("not-an-object-number", 42, SYNTAX),
    ("empty-object", {}, SYNTAX),
    ("no-statement", {"Version": "2012-10-17"}, SYNTAX),
    ("statement-empty-list", policy(), SYNTAX),
    ("statement-string", {"Version": "2012-10-17", "Statement": "Allow"}, SYNTAX),
    ("statement-null", {"Version": "2012-10-17", "Statement": None}, SYNTAX),
    ("statement-list-of-strings", policy("s3:GetObject", "x"), SYNTAX),
    ("statement-list-with-list", policy([stmt()], stmt()), SYNTAX),
    ("unknown-top-field", policy(stmt(), Comment="reports"), SYNTAX),
    ("top-field-wrong-case", {"version": "2012-10-17", "Statement": stmt()}, SYNTAX),
    ("top-level-conditions", policy(stmt(), Conditions={}), SYNTAX),
    ("version-unknown-date", policy(stmt(), version="2014-01-01"), SYNTAX),
    ("version-number", policy(stmt(), version=2012), SYNTAX),
    ("version-null", policy(stmt(), version=None), SYNTAX),
    ("version-list", policy(stmt(), version=["2012-10-17"]), SYNTAX),
    ("id-list", policy(stmt(), Id=["ReportsPolicy"]), SYNTAX),
    ("id-object", policy(stmt(), Id={"name": "ReportsPolicy"}), SYNTAX),
    ("id-number", policy(stmt(), Id=7), SYNTAX),
    ("non-string-top-key", {"Version": "2012-10-17", "Statement": stmt(), 1: "x"}, SYNTAX),
    # syntax: statement fields
    ("unknown-statement-field", policy(stmt(Comment="x")), SYNTAX),
    (
        "statement-field-lowercase-effect",
        policy({**stmt(effect=_UNSET), "effect": "Allow"}),
        SYNTAX,
    ),
    (
        "statement-field-lowercase-resource",
        policy({**stmt(resource=_UNSET), "resource": BUCKET}),
        SYNTAX,
    ),
    ("non-string-statement-key", policy({**stmt(), 3: "x"}), SYNTAX),
    ("effect-missing", policy(stmt(effect=_UNSET)), SYNTAX),
    ("effect-other-word", policy(stmt(effect="Permit")), SYNTAX),
    ("effect-empty", policy(stmt(effect="")), SYNTAX),
    ("effect-padded", policy(stmt(effect=" Allow")), SYNTAX),
    ("effect-bool", policy(stmt(effect=True)), SYNTAX),
    ("effect-list", policy(stmt(effect=["Allow"])), SYNTAX),
    ("action-and-notaction", policy(stmt(NotAction="s3:PutObject")), SYNTAX),
    ("action-and-empty-notaction", policy(stmt(NotAction=[])), SYNTAX),
    ("resource-and-notresource", policy(stmt(NotResource="*")), SYNTAX),
    ("resource-and-empty-notresource", policy(stmt(NotResource=[])), SYNTAX),
    ("action-object", policy(stmt(action={"s3": "GetObject"})), SYNTAX),
    ("action-number", policy(stmt(action=5)), SYNTAX),
    ("action-null", policy(stmt(action=None)), SYNTAX),
    ("action-nested-list", policy(stmt(action=[["s3:GetObject"]])), SYNTAX),
    ("action-list-with-null", policy(stmt(action=["s3:GetObject", None])), SYNTAX),
    ("notaction-object", policy(stmt(action=_UNSET, NotAction={})), SYNTAX),
    ("resource-object", policy(stmt(resource={"bucket": BUCKET})), SYNTAX),
    ("resource-list-with-object", policy(stmt(resource=[BUCKET, {}])), SYNTAX),
    ("resource-list-with-number", policy(stmt(resource=[BUCKET, 3])), SYNTAX),
    ("resource-null", policy(stmt(resource=None)), SYNTAX),
    ("notresource-bool", policy(stmt(resource=_UNSET, NotResource=False)), SYNTAX),
    ("sid-object", policy(stmt(Sid={"id": "One"})), SYNTAX),
    ("sid-list", policy(stmt(Sid=["One"])), SYNTAX),
    ("sid-number", policy(stmt(Sid=1)), SYNTAX),
    ("sid-null", policy(stmt(Sid=None)), SYNTAX),
    # syntax: Condition blocks
    ("condition-list", policy(stmt(Condition=[{"StringEquals": {"aws:username": "ana"}}])), SYNTAX),
    ("condition-string", policy(stmt(Condition="StringEquals")), SYNTAX),
    ("condition-null", policy(stmt(Condition=None)), SYNTAX),
    ("operator-value-string", policy(stmt(Condition={"StringEquals": "ana"})), SYNTAX),
    ("operator-value-list", policy(stmt(Condition={"DateLessThan": []})), SYNTAX),
    ("operator-value-null", policy(stmt(Condition={"Bool": None})), SYNTAX),
    ("condition-value-object", policy(stmt(Condition={"DateLessThan": {"k": {}}})), SYNTAX),
    ("condition-value-null", policy(stmt(Condition={"StringLike": {"k": None}})), SYNTAX),
    ("condition-value-nested-list", policy(stmt(Condition={"StringLike": {"k": [["a"]]}})), SYNTAX),
    (
        "condition-value-list-null",
        policy(stmt(Condition={"StringLike": {"k": ["a", None]}})),
        SYNTAX,
    ),
    (
        "condition-value-list-object",
        policy(stmt(Condition={"StringLike": {"k": [{"a": "b"}]}})),
        SYNTAX,
    ),
    ("unknown-operator-with-content", policy(stmt(Condition={"Matches": {"k": "v"}})), SYNTAX),
    ("operator-wrong-case", policy(stmt(Condition={"stringequals": {"k": "v"}})), SYNTAX),
    (
        "operator-double-colon",
        policy(stmt(Condition={"ForAllValues::StringLike": {"k": "v"}})),
        SYNTAX,
    ),
    ("operator-prefix-only", policy(stmt(Condition={"ForAnyValue:": {"k": "v"}})), SYNTAX),
    (
        "operator-prefix-wrong-case",
        policy(stmt(Condition={"foranyvalue:StringLike": {"k": "v"}})),
        SYNTAX,
    ),
    (
        "operator-two-prefixes",
        policy(stmt(Condition={"ForAnyValue:ForAllValues:Bool": {"k": "1"}})),
        SYNTAX,
    ),
    (
        "operator-ifexists-twice",
        policy(stmt(Condition={"StringLikeIfExistsIfExists": {"k": "v"}})),
        SYNTAX,
    ),
    ("operator-ifexists-alone", policy(stmt(Condition={"IfExists": {"k": "v"}})), SYNTAX),
    (
        "operator-suffix-wrong-case",
        policy(stmt(Condition={"StringLikeifexists": {"k": "v"}})),
        SYNTAX,
    ),
    # syntax: Principal shapes (checked before any per-kind rule)
    ("principal-arn-string", policy(stmt(Principal=ACCOUNT)), SYNTAX),
    ("principal-empty-object", policy(stmt(Principal={})), SYNTAX),
    ("principal-unknown-type", policy(stmt(Principal={"User": ACCOUNT})), SYNTAX),
    ("principal-type-wrong-case", policy(stmt(Principal={"aws": ACCOUNT})), SYNTAX),
    ("principal-empty-list", policy(stmt(Principal={"AWS": []})), SYNTAX),
    ("principal-number", policy(stmt(Principal={"AWS": 111122223333})), SYNTAX),
    ("principal-list", policy(stmt(Principal=[ACCOUNT])), SYNTAX),
    ("principal-and-notprincipal", policy(stmt(Principal="*", NotPrincipal="*")), SYNTAX),
    ("notprincipal-bad-shape", policy(stmt(NotPrincipal={"AWS": [None]})), SYNTAX),
    # legacy parsing: Effect spelled in another case
    ("effect-lowercase", policy(stmt(effect="allow")), LEGACY),
    ("effect-uppercase", policy(stmt(effect="DENY")), LEGACY),
    ("effect-mixed-case", policy(stmt(effect="aLlOw")), LEGACY),
    ("effect-case-second-statement", policy(stmt(), stmt(effect="deny")), LEGACY),
    # legacy parsing: Date operator values
    ("date-word", policy(stmt(Condition={"DateGreaterThan": {"aws:CurrentTime": "soon"}})), LEGACY),
    ("date-empty-string", policy(stmt(Condition={"DateEquals": {"aws:CurrentTime": ""}})), LEGACY),
    (
        "date-month-13",
        policy(stmt(Condition={"DateLessThan": {"aws:CurrentTime": "2024-13"}})),
        LEGACY,
    ),
    (
        "date-month-0",
        policy(stmt(Condition={"DateLessThan": {"aws:CurrentTime": "2024-00-10"}})),
        LEGACY,
    ),
    (
        "date-day-32",
        policy(stmt(Condition={"DateLessThan": {"aws:CurrentTime": "2024-01-32"}})),
        LEGACY,
    ),
    (
        "date-feb-30",
        policy(stmt(Condition={"DateLessThan": {"aws:CurrentTime": "2024-02-30"}})),
        LEGACY,
    ),
    (
        "date-feb-29-common-year",
        policy(stmt(Condition={"DateLessThan": {"k": "2023-02-29"}})),
        LEGACY,
    ),
    ("date-feb-29-century", policy(stmt(Condition={"DateLessThan": {"k": "1900-02-29"}})), LEGACY),
    ("date-four-parts", policy(stmt(Condition={"DateLessThan": {"k": "2024-01-02-03"}})), LEGACY),
    (
        "date-hour-24",
        policy(stmt(Condition={"DateLessThan": {"k": "2024-05-01T24:00:00Z"}})),
        LEGACY,
    ),
    (
        "date-minute-60",
        policy(stmt(Condition={"DateLessThan": {"k": "2024-05-01T10:60:00Z"}})),
        LEGACY,
    ),
    (
        "date-second-60",
        policy(stmt(Condition={"DateLessThan": {"k": "2024-05-01T10:00:60Z"}})),
        LEGACY,
    ),
    (
        "date-one-digit-offset",
        policy(stmt(Condition={"DateLessThan": {"k": "2024-05-01T10:00:00+2"}})),
        LEGACY,
    ),
    (
        "date-offset-hour-24",
        policy(stmt(Condition={"DateLessThan": {"k": "2024-05-01T10:00:00+24"}})),
        LEGACY,
    ),
    (
        "date-offset-minute-60",
        policy(stmt(Condition={"DateLessThan": {"k": "2024-05-01T10:00:00+01:60"}})),
        LEGACY,
    ),
    (
        "date-ten-digit-fraction",
        policy(stmt(Condition={"DateLessThan": {"k": "2024-05-01T10:00:00.0123456789Z"}})),
        LEGACY,
    ),
    (
        "date-trailing-space",
        policy(stmt(Condition={"DateLessThan": {"k": "2024-05-01T10:00:00Z "}})),
        LEGACY,
    ),
    ("date-time-only", policy(stmt(Condition={"DateLessThan": {"k": "T10:00"}})), LEGACY),
    ("date-year-too-small", policy(stmt(Condition={"DateLessThan": {"k": "-292275055"}})), LEGACY),
    (
        "date-year-too-large",
        policy(stmt(Condition={"DateLessThan": {"k": "292278994-01"}})),
        LEGACY,
    ),
    (
        "epoch-over-long",
        policy(stmt(Condition={"DateLessThan": {"k": "9223372036854775808"}})),
        LEGACY,
    ),
    ("epoch-with-space", policy(stmt(Condition={"DateLessThan": {"k": "1700000000 "}})), LEGACY),
    ("epoch-float-string", policy(stmt(Condition={"DateLessThan": {"k": "1700000000.5"}})), LEGACY),
    ("epoch-json-float", policy(stmt(Condition={"DateLessThan": {"k": 1700000000.5}})), LEGACY),
    ("epoch-json-int-too-big", policy(stmt(Condition={"DateLessThan": {"k": 2**63}})), LEGACY),
    ("date-json-bool", policy(stmt(Condition={"DateLessThan": {"k": True}})), LEGACY),
    (
        "date-bad-in-list",
        policy(stmt(Condition={"DateEquals": {"k": ["2024-01-01", "later"]}})),
        LEGACY,
    ),
    (
        "date-with-prefix",
        policy(stmt(Condition={"ForAnyValue:DateEquals": {"k": "later"}})),
        LEGACY,
    ),
    (
        "date-with-ifexists",
        policy(stmt(Condition={"DateNotEqualsIfExists": {"k": "later"}})),
        LEGACY,
    ),
    # legacy parsing: ARNs that pass the format check but not the old parser
    ("arn-four-segments-double-colon", policy(stmt(resource="arn:aws:s3::reports-bucket")), LEGACY),
    ("arn-empty-service", policy(stmt(resource="arn:aws::reports")), LEGACY),
    ("arn-empty-service-six-segments", policy(stmt(resource="arn:aws::::reports")), LEGACY),
    ("arn-trailing-colon", policy(stmt(resource="arn:aws:")), LEGACY),
    ("arn-legacy-in-list", policy(stmt(resource=["*", "arn:aws:s3::reports-bucket"])), LEGACY),
    ("arn-legacy-notresource", policy(stmt(resource=_UNSET, NotResource="arn:aws::x")), LEGACY),
    ("arn-legacy-without-action", policy(stmt(action=_UNSET, resource="arn:aws:s3::b")), LEGACY),
    # Sid uniqueness (empty Sids never clash)
    ("sid-repeated", policy(stmt(Sid="Reports"), stmt(Sid="Reports")), SID_UNIQUE),
    ("sid-repeated-later", policy(stmt(Sid="A"), stmt(Sid="B"), stmt(Sid="A")), SID_UNIQUE),
    # actions present
    ("no-action", policy(stmt(action=_UNSET)), NO_ACTIONS),
    ("action-empty-list", policy(stmt(action=[])), NO_ACTIONS),
    ("notaction-empty-list", policy(stmt(action=_UNSET, NotAction=[])), NO_ACTIONS),
    ("only-effect", policy(stmt(action=_UNSET, resource=_UNSET)), NO_ACTIONS),
    ("second-statement-no-action", policy(stmt(), stmt(action=_UNSET)), NO_ACTIONS),
    # resource formats
    (
        "resource-no-colon",
        policy(stmt(resource="reports-bucket")),
        'Resource reports-bucket must be in ARN format or "*".',
    ),
    ("resource-empty-string", policy(stmt(resource="")), 'Resource  must be in ARN format or "*".'),
    (
        "resource-empty-string-in-list",
        policy(stmt(resource=["*", ""])),
        'Resource  must be in ARN format or "*".',
    ),
    (
        "resource-space",
        policy(stmt(resource="reports bucket")),
        'Resource reports bucket must be in ARN format or "*".',
    ),
    (
        "resource-wildcard-prefix",
        policy(stmt(resource="*bucket")),
        'Resource *bucket must be in ARN format or "*".',
    ),
    (
        "resource-no-colon-in-list",
        policy(stmt(resource=[BUCKET, "bucket"])),
        'Resource bucket must be in ARN format or "*".',
    ),
    (
        "partition-unknown",
        policy(stmt(resource="arn:amazon:s3:::reports-bucket")),
        'Partition "amazon" is not valid for resource "arn:amazon:s3:::reports-bucket".',
    ),
    (
        "partition-empty",
        policy(stmt(resource="arn::s3:::reports-bucket")),
        'Partition "" is not valid for resource "arn::s3:::reports-bucket".',
    ),
    (
        "partition-uppercase",
        policy(stmt(resource="arn:AWS:s3:::reports-bucket")),
        'Partition "AWS" is not valid for resource "arn:AWS:s3:::reports-bucket".',
    ),
    (
        "partition-glob",
        policy(stmt(resource="arn:aws*:s3:::reports-bucket")),
        'Partition "aws*" is not valid for resource "arn:aws*:s3:::reports-bucket".',
    ),
    (
        "partition-only",
        policy(stmt(resource="x:region")),
        'Partition "region" is not valid for resource "arn:region:*:*:*:*".',
    ),
    (
        "partition-trailing-colon",
        policy(stmt(resource="x:region:")),
        'Partition "region" is not valid for resource "arn:region:*:*:*:*".',
    ),
    (
        "partition-one-more",
        policy(stmt(resource="x:region:ssm")),
        'Partition "region" is not valid for resource "arn:region:ssm:*:*:*".',
    ),
    (
        "partition-two-empty",
        policy(stmt(resource="x:region::")),
        'Partition "region" is not valid for resource "arn:region:::*:*".',
    ),
    (
        "partition-long",
        policy(stmt(resource="x:p:a:b:c:d:e:f")),
        'Partition "p" is not valid for resource "arn:p:a:b:c:d:e:f".',
    ),
    (
        "partition-shifted",
        policy(stmt(resource="aws:s3:::reports-bucket")),
        'Partition "s3" is not valid for resource "arn:s3:::reports-bucket:*".',
    ),
    ("vendor-missing", policy(stmt(resource="arn:aws")), RESOURCE_VENDOR),
    ("vendor-missing-star-partition", policy(stmt(resource="arn:*")), RESOURCE_VENDOR),
    ("iam-bad-path", policy(stmt(resource="arn:aws:iam::111122223333:reports")), IAM_PATH),
    ("iam-empty-path", policy(stmt(resource="arn:aws:iam:::")), IAM_PATH),
    ("iam-no-path", policy(stmt(resource="arn:aws:iam")), IAM_PATH),
    ("iam-path-no-slash", policy(stmt(resource="arn:aws:iam::111122223333:user")), IAM_PATH),
    ("iam-path-wrong-case", policy(stmt(resource="arn:aws:iam::111122223333:Role/ops")), IAM_PATH),
    (
        "iam-region",
        policy(stmt(resource="arn:aws:iam:eu-west-1:1:role/ops")),
        "IAM resource arn:aws:iam:eu-west-1:1:role/ops cannot contain region information.",
    ),
    (
        "iam-region-star",
        policy(stmt(resource="arn:aws:iam:*:111122223333:role/ops")),
        "IAM resource arn:aws:iam:*:111122223333:role/ops cannot contain region information.",
    ),
    (
        "iam-region-bad-path",
        policy(stmt(resource="arn:aws:iam:eu-west-1::ops")),
        "IAM resource arn:aws:iam:eu-west-1::ops cannot contain region information.",
    ),
    (
        "s3-region",
        policy(stmt(resource="arn:aws:s3:eu-west-1::reports-bucket")),
        "Resource arn:aws:s3:eu-west-1::reports-bucket can not contain region information.",
    ),
    (
        "s3-region-short",
        policy(stmt(resource="arn:aws:s3:eu-west-1")),
        "Resource arn:aws:s3:eu-west-1 can not contain region information.",
    ),
    (
        "s3-region-notresource",
        policy(stmt(resource=_UNSET, NotResource="arn:aws:s3:eu-west-1:1:b")),
        "Resource arn:aws:s3:eu-west-1:1:b can not contain region information.",
    ),
    (
        "resource-error-first-in-order",
        policy(stmt(resource=["arn:nope:s3:::a", "b"]), stmt(resource="c")),
        'Partition "nope" is not valid for resource "arn:nope:s3:::a".',
    ),
    ("resource-error-second-statement", policy(stmt(), stmt(resource="arn:aws:iam:::x")), IAM_PATH),
    # action prefixes
    ("action-no-colon", policy(stmt(action="GetObject")), NO_VENDOR),
    ("action-empty", policy(stmt(action="")), NO_VENDOR),
    ("notaction-empty", policy(stmt(action=_UNSET, NotAction="")), NO_VENDOR),
    ("action-no-colon-in-list", policy(stmt(action=["s3:GetObject", "ListBucket"])), NO_VENDOR),
    ("action-two-colons", policy(stmt(action="ssm:Start:Session")), ONE_COLON),
    (
        "action-two-colons-second-statement",
        policy(stmt(action="ssm:x"), stmt(action="s:s:m")),
        ONE_COLON,
    ),
    ("action-vendor-space", policy(stmt(action="s 3:GetObject")), "Vendor s 3 is not valid"),
    (
        "action-vendor-leading-space",
        policy(stmt(action=" s3:GetObject")),
        "Vendor  s3 is not valid",
    ),
    ("action-vendor-underscore", policy(stmt(action="my_svc:Do")), "Vendor my_svc is not valid"),
    ("action-vendor-glob", policy(stmt(action="s3*:GetObject")), "Vendor s3* is not valid"),
    ("action-vendor-question", policy(stmt(action="s?:GetObject")), "Vendor s? is not valid"),
    (
        "action-vendor-non-ascii",
        policy(stmt(action="s\u00e9:GetObject")),
        "Vendor s\u00e9 is not valid",
    ),
    (
        "notaction-vendor",
        policy(stmt(action=_UNSET, NotAction=["ec2:*", "e/c2:*"])),
        "Vendor e/c2 is not valid",
    ),
    # resources present
    ("no-resource", policy(stmt(resource=_UNSET)), NO_RESOURCES),
    ("resource-empty-list", policy(stmt(resource=[])), NO_RESOURCES),
    ("notresource-empty-list", policy(stmt(resource=_UNSET, NotResource=[])), NO_RESOURCES),
    ("second-statement-no-resource", policy(stmt(), stmt(resource=_UNSET)), NO_RESOURCES),
    # principal in an identity-style document
    ("principal-star", policy(stmt(Principal="*")), NO_PRINCIPAL_ALLOWED),
    ("principal-account", policy(stmt(Principal={"AWS": ACCOUNT})), NO_PRINCIPAL_ALLOWED),
    (
        "principal-service",
        policy(stmt(Principal={"Service": ["ssm.amazonaws.com"]})),
        NO_PRINCIPAL_ALLOWED,
    ),
    ("notprincipal", policy(stmt(NotPrincipal={"AWS": ACCOUNT})), NO_PRINCIPAL_ALLOWED),
    ("principal-second-statement", policy(stmt(), stmt(Principal="*")), NO_PRINCIPAL_ALLOWED),
]


@pytest.mark.parametrize("kind", IDENTITY_LIKE)
@pytest.mark.parametrize(
    ("doc", "expected"),
    [pytest.param(d, m, id=i) for i, d, m in IDENTITY_REJECTIONS],
)
def test_identity_style_rejections(doc: object, expected: str, kind: PolicyKind) -> None:
    assert message_of(doc, kind) == expected
    assert message_of(doc, kind, managed=True) == expected


# --- Rejections in AWS's order: the first problem wins -------------------------------------------

ORDER_CASES: list[tuple[str, object, str]] = [
    # syntax beats everything, even in a later statement
    ("syntax-before-version", policy(stmt(), stmt(Comment="x"), version=_UNSET), SYNTAX),
    ("syntax-before-legacy", policy(stmt(effect="allow"), stmt(action={})), SYNTAX),
    ("syntax-before-sid", policy(stmt(Sid="A"), stmt(Sid="A", effect="Maybe")), SYNTAX),
    # legacy parsing beats Sid uniqueness, missing actions and every resource message
    ("legacy-before-sid", policy(stmt(Sid="A", effect="allow"), stmt(Sid="A")), LEGACY),
    ("legacy-before-actions", policy(stmt(action=_UNSET, effect="deny")), LEGACY),
    (
        "date-before-partition",
        policy(stmt(resource="arn:nope:s3:::b", Condition={"DateEquals": {"k": "x"}})),
        LEGACY,
    ),
    (
        "legacy-arn-before-partition",
        policy(stmt(resource="arn:nope:s3:::b"), stmt(resource="arn:aws:s3::b")),
        LEGACY,
    ),
    (
        "legacy-arn-before-no-resources",
        policy(stmt(resource="arn:aws::b"), stmt(resource=[])),
        LEGACY,
    ),
    # an ARN that fails the format check is not also given to the legacy parser
    (
        "bad-partition-not-legacy",
        policy(stmt(resource=["arn:nope:s3:::b", "arn:nope:s3::b"])),
        'Partition "nope" is not valid for resource "arn:nope:s3:::b".',
    ),
    ("vendor-missing-not-legacy", policy(stmt(resource="arn:aws")), RESOURCE_VENDOR),
    # Sid uniqueness beats missing actions
    ("sid-before-actions", policy(stmt(Sid="A"), stmt(Sid="A", action=_UNSET)), SID_UNIQUE),
    # missing actions beat resource formats
    ("actions-before-resource-format", policy(stmt(action=_UNSET, resource="bucket")), NO_ACTIONS),
    (
        "actions-before-resource-format-2",
        policy(stmt(resource="bucket"), stmt(action=[])),
        NO_ACTIONS,
    ),
    # resource formats beat action prefixes
    (
        "resource-format-before-vendor",
        policy(stmt(action="GetObject", resource="bucket")),
        'Resource bucket must be in ARN format or "*".',
    ),
    (
        "resource-format-before-colons",
        policy(stmt(action="a:b:c"), stmt(resource="arn:aws:iam:::x")),
        IAM_PATH,
    ),
    # action prefixes beat missing resources
    ("vendor-before-resources", policy(stmt(action="GetObject", resource=_UNSET)), NO_VENDOR),
    ("colons-before-resources", policy(stmt(resource=_UNSET), stmt(action="a:b:c")), ONE_COLON),
    # within actions: document order, message of the first bad one
    ("first-bad-action-wins", policy(stmt(action=["a:b:c", "nocolon"])), ONE_COLON),
    ("first-bad-action-wins-2", policy(stmt(action=["nocolon", "a:b:c"])), NO_VENDOR),
    # missing resources beat the principal rule
    ("resources-before-principal", policy(stmt(resource=_UNSET, Principal="*")), NO_RESOURCES),
    ("vendor-before-principal", policy(stmt(action="x", Principal="*")), NO_VENDOR),
]


@pytest.mark.parametrize(("doc", "expected"), [pytest.param(d, m, id=i) for i, d, m in ORDER_CASES])
def test_first_problem_in_aws_order(doc: object, expected: str) -> None:
    assert message_of(doc) == expected


# --- Managed policies must be 2012-10-17 ----------------------------------------------------------

MANAGED_CASES: list[tuple[str, object, str]] = [
    ("no-version", policy(stmt(), version=_UNSET), VERSION),
    ("old-version", policy(stmt(), version="2008-10-17"), VERSION),
    ("version-before-legacy", policy(stmt(effect="allow"), version=_UNSET), VERSION),
    (
        "version-before-sid",
        policy(stmt(Sid="A"), stmt(Sid="A", action=_UNSET), version=_UNSET),
        VERSION,
    ),
    (
        "version-before-date",
        policy(stmt(Condition={"DateEquals": {"k": "x"}}), version="2008-10-17"),
        VERSION,
    ),
    ("syntax-before-version", policy(stmt(effect="x"), version=_UNSET), SYNTAX),
    ("unknown-version-is-syntax", policy(stmt(), version="2012-10-18"), SYNTAX),
]


@pytest.mark.parametrize(
    ("doc", "expected"), [pytest.param(d, m, id=i) for i, d, m in MANAGED_CASES]
)
def test_managed_policy_version(doc: object, expected: str) -> None:
    assert message_of(doc, managed=True) == expected


@pytest.mark.parametrize("version", [_UNSET, "2008-10-17", "2012-10-17"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_inline_documents_may_use_any_version(version: Any, kind: PolicyKind) -> None:
    statement = {
        PolicyKind.TRUST: trust_stmt(),
        PolicyKind.RESOURCE: resource_stmt(),
        PolicyKind.RCP: resource_stmt(Principal="*"),
    }.get(kind, stmt())
    validate_document(policy(statement, version=version), kind)


def test_managed_policy_with_current_version_is_accepted() -> None:
    validate_document(policy(stmt()), managed=True)


# --- Sid characters: enforced for IAM identity documents only -------------------------------------


@pytest.mark.parametrize("sid", ["Read-Reports", "read_reports", "Read Reports", "Stmt.1", "Ünï"])
@pytest.mark.parametrize("kind", [PolicyKind.IDENTITY, PolicyKind.BOUNDARY])
def test_sid_must_be_alphanumeric_in_identity_documents(sid: str, kind: PolicyKind) -> None:
    assert message_of(policy(stmt(Sid=sid)), kind) == SID_CHARS


@pytest.mark.parametrize("sid", ["Read-Reports", "read_reports", "Read Reports"])
def test_sid_characters_free_in_other_kinds(sid: str) -> None:
    validate_document(policy(resource_stmt(Sid=sid)), PolicyKind.RESOURCE)
    validate_document(policy(trust_stmt(Sid=sid)), PolicyKind.TRUST)
    validate_document(policy(stmt(Sid=sid)), PolicyKind.SESSION)
    validate_document(policy(stmt(Sid=sid)), PolicyKind.SCP)


def test_sid_characters_checked_after_legacy_and_before_uniqueness() -> None:
    assert message_of(policy(stmt(Sid="a-b", effect="allow"))) == LEGACY
    assert message_of(policy(stmt(Sid="A"), stmt(Sid="A"), stmt(Sid="a b"))) == SID_CHARS
    assert message_of(policy(stmt(Sid="a-b", action=_UNSET))) == SID_CHARS


# --- Per-kind rules ------------------------------------------------------------------------------

KIND_REJECTIONS: list[tuple[str, PolicyKind, object, str]] = [
    # role trust policies
    (
        "trust-resource",
        PolicyKind.TRUST,
        policy(trust_stmt(Resource="*")),
        "Has prohibited field Resource",
    ),
    (
        "trust-resource-arn",
        PolicyKind.TRUST,
        policy(trust_stmt(Resource=[ACCOUNT.replace(":root", ":role/ops")])),
        "Has prohibited field Resource",
    ),
    (
        "trust-notresource",
        PolicyKind.TRUST,
        policy(trust_stmt(NotResource="*")),
        "Has prohibited field NotResource",
    ),
    (
        "trust-resource-second-statement",
        PolicyKind.TRUST,
        policy(trust_stmt(), trust_stmt(Resource="*")),
        "Has prohibited field Resource",
    ),
    (
        "trust-empty-resource-list",
        PolicyKind.TRUST,
        policy(trust_stmt(Resource=[])),
        "Has prohibited field Resource",
    ),
    (
        "trust-no-principal",
        PolicyKind.TRUST,
        policy(stmt(action="sts:AssumeRole", resource=_UNSET)),
        TRUST_NO_PRINCIPAL,
    ),
    (
        "trust-notprincipal-only",
        PolicyKind.TRUST,
        policy(stmt(action="sts:AssumeRole", resource=_UNSET, NotPrincipal="*")),
        TRUST_NO_PRINCIPAL,
    ),
    (
        "trust-resource-format-first",
        PolicyKind.TRUST,
        policy(trust_stmt(Resource="role")),
        'Resource role must be in ARN format or "*".',
    ),
    (
        "trust-prohibited-before-principal",
        PolicyKind.TRUST,
        policy(stmt(action="sts:AssumeRole")),
        "Has prohibited field Resource",
    ),
    (
        "trust-syntax",
        PolicyKind.TRUST,
        policy(trust_stmt(Principal="arn:aws:iam::111122223333:root")),
        SYNTAX,
    ),
    ("trust-no-action", PolicyKind.TRUST, policy(trust_stmt(action=_UNSET)), NO_ACTIONS),
    ("trust-action-vendor", PolicyKind.TRUST, policy(trust_stmt(action="AssumeRole")), NO_VENDOR),
    ("trust-legacy", PolicyKind.TRUST, policy(trust_stmt(effect="allow")), LEGACY),
    # resource-based policies
    ("resource-no-principal", PolicyKind.RESOURCE, policy(stmt()), MISSING_PRINCIPAL),
    (
        "resource-no-principal-second",
        PolicyKind.RESOURCE,
        policy(resource_stmt(), stmt()),
        MISSING_PRINCIPAL,
    ),
    (
        "resource-no-resource",
        PolicyKind.RESOURCE,
        policy(resource_stmt(resource=_UNSET)),
        NO_RESOURCES,
    ),
    (
        "resource-bad-arn",
        PolicyKind.RESOURCE,
        policy(resource_stmt(resource="bucket")),
        'Resource bucket must be in ARN format or "*".',
    ),
    (
        "resource-principal-syntax",
        PolicyKind.RESOURCE,
        policy(resource_stmt(Principal={"Group": "ops"})),
        SYNTAX,
    ),
    # resource control policies
    ("rcp-no-principal", PolicyKind.RCP, policy(stmt(effect="Deny")), MISSING_PRINCIPAL),
    (
        "rcp-no-resource",
        PolicyKind.RCP,
        policy(stmt(effect="Deny", resource=_UNSET, Principal="*")),
        NO_RESOURCES,
    ),
]


@pytest.mark.parametrize(
    ("kind", "doc", "expected"),
    [pytest.param(k, d, m, id=i) for i, k, d, m in KIND_REJECTIONS],
)
def test_kind_specific_rejections(kind: PolicyKind, doc: object, expected: str) -> None:
    assert message_of(doc, kind) == expected


def test_kind_may_be_given_as_its_string_value() -> None:
    trust_doc = policy(trust_stmt(Resource="*"))
    assert message_of(trust_doc, cast(PolicyKind, "trust")) == "Has prohibited field Resource"
    assert message_of(policy(stmt()), cast(PolicyKind, "resource")) == MISSING_PRINCIPAL


# --- Accepted documents --------------------------------------------------------------------------
# Statement bodies without Principal; accepted by every identity-style kind (and, given a
# Principal, by resource policies; given a Principal and no Resource, by trust policies).

ACCEPTED_STATEMENTS: list[tuple[str, object]] = [
    ("single-object-statement", stmt()),
    ("list-of-one", [stmt()]),
    ("several-statements", [stmt(), stmt(effect="Deny", action="s3:DeleteObject")]),
    ("action-star", stmt(action="*")),
    ("action-service-star", stmt(action="ssm:*")),
    ("action-glob", stmt(action=["ssm:Describe*", "ssm:Get?arameter"])),
    ("action-list", stmt(action=["ssm:StartSession", "ssm:TerminateSession"])),
    ("action-spaces-after-colon", stmt(action="ssm: start  session ")),
    ("action-unknown-service", stmt(action="nosuchservice:DoThing")),
    ("action-service-hyphen-dot", stmt(action=["my-svc:Do", "my.svc:Do", "S3:getobject"])),
    ("action-vendor-star", stmt(action="*:GetObject")),
    ("action-empty-vendor", stmt(action=":GetObject")),
    ("notaction", stmt(action=_UNSET, NotAction="iam:*")),
    (
        "notaction-notresource-star",
        stmt(action=_UNSET, resource=_UNSET, NotAction="iam:*", NotResource="*"),
    ),
    ("notresource-list", stmt(resource=_UNSET, NotResource=[BUCKET, BUCKET + "/*"])),
    ("resource-star", stmt(resource="*")),
    ("resource-star-in-list", stmt(resource=[BUCKET, "*"])),
    ("resource-list", stmt(resource=[BUCKET, INSTANCE])),
    ("resource-list-with-null", stmt(resource=[BUCKET, None])),
    ("resource-list-only-null", stmt(resource=[None])),
    ("resource-unknown-service", stmt(resource="arn:aws:nosuchservice:::thing")),
    ("resource-unknown-service-region", stmt(resource="arn:aws:nosuchservice:eu-west-1::thing")),
    ("resource-three-segments", stmt(resource="arn:aws:reports")),
    ("resource-four-segments-no-double-colon", stmt(resource="arn:aws:sqs:reports")),
    ("resource-globbed", stmt(resource="arn:aws:ec2:*:*:instance/*")),
    ("resource-star-partition", stmt(resource="arn:*:s3:::reports-bucket")),
    ("resource-star-service", stmt(resource="arn:aws:*:*:*:*")),
    (
        "resource-other-partitions",
        stmt(
            resource=[
                "arn:aws-cn:s3:::b",
                "arn:aws-us-gov:s3:::b",
                "arn:aws-iso:s3:::b",
                "arn:aws-iso-b:s3:::b",
                "arn:aws-iso-e:s3:::b",
                "arn:aws-iso-f:s3:::b",
                "arn:aws-eusc:s3:::b",
            ]
        ),
    ),
    ("resource-first-segment-not-checked", stmt(resource="urn:aws:s3:::reports-bucket")),
    ("resource-colons-in-relative-id", stmt(resource="arn:aws:s3:::reports-bucket/a:b:c")),
    (
        "resource-policy-variable",
        stmt(resource="arn:aws:s3:::reports-bucket/home/${aws:username}/*"),
    ),
    (
        "resource-region-in-other-service",
        stmt(resource="arn:aws:ssm:eu-west-1:111122223333:document/Run"),
    ),
    (
        "iam-resources",
        stmt(
            resource=[
                "arn:aws:iam::111122223333:user/ops/ana",
                "arn:aws:iam::111122223333:role/ops",
                "arn:aws:iam::*:group/*",
                "arn:aws:iam::aws:policy/ReadOnlyAccess",
                "arn:aws:iam::111122223333:instance-profile/web",
                "arn:aws:iam::111122223333:mfa/ana",
                "arn:aws:iam::111122223333:sms-mfa/ana",
                "arn:aws:iam::111122223333:federated-user/f",
                "arn:aws:iam::111122223333:server-certificate/c",
                "arn:aws:iam::111122223333:saml-provider/p",
                "arn:aws:iam::111122223333:oidc-provider/o",
                "arn:aws:iam::111122223333:report/r",
                "arn:aws:iam::111122223333:access-report/r",
                "arn:aws:iam::111122223333:*",
            ]
        ),
    ),
    ("iam-uppercase-service-not-checked", stmt(resource="arn:aws:IAM:eu-west-1::anything")),
    (
        "s3-regional-resource-types",
        stmt(
            resource=[
                "arn:aws:s3:eu-west-1:111122223333:accesspoint/reports",
                "arn:aws:s3:eu-west-1:111122223333:accesspoint/reports/object/*",
                "arn:aws:s3:eu-west-1:111122223333:job/*",
                "arn:aws:s3:eu-west-1:111122223333:storage-lens/cfg",
                "arn:aws:s3:eu-west-1:111122223333:storage-lens-group/g",
                "arn:aws:s3:eu-west-1:111122223333:async-request/mrap/x",
                "arn:aws:s3:eu-west-1:111122223333:access-grants/default",
            ]
        ),
    ),
    ("s3-multi-region-access-point", stmt(resource="arn:aws:s3::111122223333:accesspoint/m.mrap")),
    ("sid-alphanumeric", [stmt(Sid="ReadReports1"), stmt(Sid="WriteReports2")]),
    ("sid-empty-repeated", [stmt(Sid=""), stmt(Sid="")]),
    ("sid-differs-by-case", [stmt(Sid="Reports"), stmt(Sid="reports")]),
    ("condition-empty", stmt(Condition={})),
    ("condition-unknown-operator-empty", stmt(Condition={"Matches": {}, "Other": {}})),
    ("condition-known-operator-empty", stmt(Condition={"StringEquals": {}})),
    (
        "condition-operators",
        stmt(
            Condition={
                "StringEquals": {"aws:username": "ana"},
                "StringNotEqualsIgnoreCase": {"aws:PrincipalTag/team": ["Ops", "Sec"]},
                "StringLike": {"ssm:resourceTag/env": "prod-*"},
                "NumericLessThanEquals": {"aws:MultiFactorAuthAge": "3600"},
                "Bool": {"aws:SecureTransport": "true"},
                "BinaryEquals": {"k": "QUJD"},
                "IpAddress": {"aws:SourceIp": ["203.0.113.0/24", "2001:db8::/32"]},
                "NotIpAddress": {"aws:SourceIp": "198.51.100.7"},
                "ArnLike": {"aws:SourceArn": "arn:aws:ssm:*:*:document/*"},
                "ArnNotEquals": {"aws:SourceArn": INSTANCE},
                "Null": {"aws:TokenIssueTime": "true"},
            }
        ),
    ),
    (
        "condition-unquoted-values",
        stmt(
            Condition={
                "Bool": {"aws:SecureTransport": True, "aws:ViaAWSService": [False]},
                "NumericGreaterThan": {"s3:max-keys": 10, "k": [1.5, 2]},
                "Null": {"aws:TokenIssueTime": False},
            }
        ),
    ),
    ("condition-empty-value-list", stmt(Condition={"StringEquals": {"k": []}})),
    (
        "condition-ifexists-and-sets",
        stmt(
            Condition={
                "StringEqualsIfExists": {"k": "v"},
                "ForAnyValue:StringLike": {"aws:TagKeys": ["env", "team"]},
                "ForAllValues:StringEqualsIgnoreCaseIfExists": {"aws:TagKeys": "env"},
                "BoolIfExists": {"aws:MultiFactorAuthPresent": "false"},
                "ForAnyValue:DateLessThanIfExists": {"k": "2030-01-01"},
            }
        ),
    ),
    ("condition-key-names-free", stmt(Condition={"StringEquals": {"": "v", "weird key:/x": "v"}})),
    (
        "dates",
        stmt(
            Condition={
                "DateGreaterThan": {"aws:CurrentTime": "2024-05-01T00:00:00Z"},
                "DateLessThan": {
                    "aws:CurrentTime": [
                        "2024-12-31T23:59:59Z",
                        "2024-12-31T23:59:59.123Z",
                        "2024-12-31t23:59:59z",
                        "2024-05-01",
                        "2024-05",
                        "2024",
                        "2024-5-1",
                        "2024-05-01T",
                        "0001T",
                        "2024-05-01T10",
                        "2024-05-01T10:30",
                        "2024-05-01T10:30Z",
                        "2024-05-01T7:5:3",
                        "2024-05-01T10:30:00+02:00",
                        "2024-05-01T10:30:00-08:00",
                        "2024-05-01T10:30:00+0530",
                        "2024-05-01T10:30:00+23",
                        "2024-05-01T10:30:00.123456789+01:00",
                        "2024-05-01T10:30:00,5Z",
                        "2024-02-29",
                        "2000-02-29",
                        "-44-03-15",
                        "-292275054",
                        "292278993-12-31",
                    ]
                },
                "DateEquals": {
                    "aws:EpochTime": ["0", "1700000000", "+1700000000", "9223372036854775807"]
                },
                "DateNotEquals": {"aws:EpochTime": [1700000000, 0, -5]},
                "DateLessThanEquals": {"k": []},
            }
        ),
    ),
]


def _statements(body: Any) -> list[dict[str, Any]]:
    return list(body) if isinstance(body, list) else [body]


@pytest.mark.parametrize("kind", IDENTITY_LIKE)
@pytest.mark.parametrize("body", [pytest.param(b, id=i) for i, b in ACCEPTED_STATEMENTS])
def test_accepted_identity_style(body: object, kind: PolicyKind) -> None:
    validate_document(policy(body), kind)
    validate_document(policy(body), kind, managed=True)
    validate_document(policy(body, version=_UNSET), kind)
    validate_document(policy(body, Id="ReportsAccess"), kind)


@pytest.mark.parametrize(
    "principal",
    [
        "*",
        {"AWS": "*"},
        {"AWS": ACCOUNT},
        {"AWS": [ACCOUNT, "111122223333"]},
        {"Service": "ssm.amazonaws.com"},
        {"Federated": "cognito-identity.amazonaws.com"},
        {"CanonicalUser": "79a59df900b949e55d96a1e698fbaced"},
        {"AWS": ACCOUNT, "Service": ["ec2.amazonaws.com"]},
    ],
)
@pytest.mark.parametrize("body", [pytest.param(b, id=i) for i, b in ACCEPTED_STATEMENTS])
def test_accepted_resource_policies(body: object, principal: object) -> None:
    statements = [{**s, "Principal": principal} for s in _statements(body)]
    validate_document(policy(statements), PolicyKind.RESOURCE)
    validate_document(policy(statements), PolicyKind.RCP)
    not_principal = [{**s, "NotPrincipal": principal} for s in _statements(body)]
    validate_document(policy(not_principal), PolicyKind.RESOURCE)


@pytest.mark.parametrize("body", [pytest.param(b, id=i) for i, b in ACCEPTED_STATEMENTS])
def test_accepted_trust_policies(body: object) -> None:
    statements = []
    for s in _statements(body):
        s = {k: v for k, v in s.items() if k not in ("Resource", "NotResource")}
        statements.append({**s, "Principal": {"Service": "ec2.amazonaws.com"}})
    validate_document(policy(statements), PolicyKind.TRUST)
    validate_document(policy(statements), PolicyKind.TRUST, managed=True)


TRUST_ACCEPTED: list[tuple[str, object]] = [
    ("assume-role", trust_stmt()),
    (
        "web-identity",
        stmt(
            action="sts:AssumeRoleWithWebIdentity",
            resource=_UNSET,
            Principal={"Federated": "arn:aws:iam::111122223333:oidc-provider/oidc.example.com"},
            Condition={
                "StringEquals": {"token.actions.githubusercontent.com:aud": "sts.amazonaws.com"}
            },
        ),
    ),
    (
        "service-list",
        stmt(
            action=["sts:AssumeRole", "sts:TagSession"],
            resource=_UNSET,
            Principal={"Service": ["ssm.amazonaws.com", "ec2.amazonaws.com"]},
        ),
    ),
    ("anyone", stmt(action="sts:AssumeRole", resource=_UNSET, Principal="*")),
    ("with-sid", [trust_stmt(Sid="Ops-Admins"), trust_stmt(Sid="")]),
]


@pytest.mark.parametrize("body", [pytest.param(b, id=i) for i, b in TRUST_ACCEPTED])
def test_accepted_trust_examples(body: object) -> None:
    validate_document(policy(body), PolicyKind.TRUST)
    validate_document(policy(body, version=_UNSET), PolicyKind.TRUST)


def test_validation_does_not_modify_the_document() -> None:
    doc = policy(stmt(resource=[BUCKET, None], Condition={"Bool": {"k": True}}))
    before = json.dumps(doc, sort_keys=True)
    validate_document(doc)
    assert json.dumps(doc, sort_keys=True) == before


# --- validate_policy_text: parsing and size quotas ----------------------------------------------


def test_text_returns_the_parsed_document() -> None:
    doc = policy(stmt(Sid="Reports"), stmt(effect="Deny", action="s3:DeleteObject"))
    assert validate_policy_text(json.dumps(doc)) == doc


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "not json",
        "{",
        '{"Version": "2012-10-17", "Statement": []',
        "[]",
        '"policy"',
        "null",
        "12",
        '{"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Effect": "Deny", '
        '"Action": "s3:GetObject", "Resource": "*"}}',
        '{"Version": "2012-10-17", "Version": "2012-10-17", "Statement": {"Effect": "Allow", '
        '"Action": "s3:GetObject", "Resource": "*"}}',
        '{"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "s3:GetObject", '
        '"Resource": "*", "Condition": {"DateLessThan": {"k": NaN}}}}',
        '{"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "s3:Get\u0100", '
        '"Resource": "*"}}',
        "[" * 100_000,
    ],
    ids=lambda t: repr(t[:30]),
)
def test_text_syntax_errors(text: str) -> None:
    with pytest.raises(MalformedPolicyDocument) as info:
        validate_policy_text(text)
    assert info.value.message == SYNTAX


def test_text_runs_document_checks_with_kind_and_managed() -> None:
    text = json.dumps(policy(trust_stmt(), version=_UNSET))
    assert validate_policy_text(text, PolicyKind.TRUST)["Statement"] == trust_stmt()
    with pytest.raises(MalformedPolicyDocument) as info:
        validate_policy_text(text, PolicyKind.TRUST, managed=True)
    assert info.value.message == VERSION
    with_resource = text.replace('"sts:AssumeRole"', '"sts:AssumeRole", "Resource": "*"')
    assert validate_policy_text(with_resource, PolicyKind.RESOURCE)["Statement"] != trust_stmt()
    with pytest.raises(MalformedPolicyDocument) as info:
        validate_policy_text(with_resource)
    assert info.value.message == NO_PRINCIPAL_ALLOWED


def _padded_policy(size: int) -> str:
    """A valid policy whose size (non-white-space characters) is exactly ``size``."""
    base = policy(stmt(Sid="", resource="arn:aws:s3:::b/"))
    text = json.dumps(base, indent=4)
    padding = size - sum(1 for c in text if not c.isspace())
    assert padding >= 0
    return text.replace("b/", "b/" + "x" * padding)


@pytest.mark.parametrize(
    "limit",
    [MANAGED_POLICY_SIZE, USER_INLINE_POLICY_SIZE, ROLE_INLINE_POLICY_SIZE, TRUST_POLICY_SIZE, 200],
)
def test_size_limit_counts_non_white_space(limit: int) -> None:
    at_limit = _padded_policy(limit)
    assert len(at_limit) > limit  # indentation and spaces are not counted
    validate_policy_text(at_limit, size_limit=limit)
    over = _padded_policy(limit + 1)
    with pytest.raises(LimitExceeded) as info:
        validate_policy_text(over, size_limit=limit)
    assert info.value.message == f"Cannot exceed quota for PolicySize: {limit}"
    assert info.value.code == "LimitExceeded"
    assert info.value.http_status == 409


def test_size_not_checked_without_limit() -> None:
    validate_policy_text(_padded_policy(MANAGED_POLICY_SIZE * 3))


def test_size_checked_after_parsing_and_before_document_checks() -> None:
    with pytest.raises(MalformedPolicyDocument) as info:
        validate_policy_text("{" + " x" * 500, size_limit=10)
    assert info.value.message == SYNTAX
    too_big_and_invalid = json.dumps(policy(stmt(effect="allow", resource="x" * 500)))
    with pytest.raises(LimitExceeded):
        validate_policy_text(too_big_and_invalid, size_limit=100)


def test_quota_constants() -> None:
    from hatchway.iam import validate

    assert validate.MANAGED_POLICY_SIZE == 6144
    assert validate.USER_INLINE_POLICY_SIZE == 2048
    assert validate.GROUP_INLINE_POLICY_SIZE == 5120
    assert validate.ROLE_INLINE_POLICY_SIZE == 10240
    assert validate.TRUST_POLICY_SIZE == 2048
    assert validate.TRUST_POLICY_SIZE_MAX == 4096
    assert validate.SCP_SIZE == 5120
    assert validate.MANAGED_POLICIES_PER_PRINCIPAL == 10
    assert validate.MANAGED_POLICIES_PER_PRINCIPAL_MAX == 20
    assert validate.MANAGED_POLICY_VERSIONS == 5
    assert validate.SESSION_POLICY_ARNS == 10
    assert validate.TAG_KEY_LENGTH == 128
    assert validate.TAG_VALUE_LENGTH == 256
