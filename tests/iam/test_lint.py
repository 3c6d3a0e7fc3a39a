"""Session Manager policy lint: each rule on a minimal bad policy and on its fixed version."""

from __future__ import annotations

from typing import Any

import pytest

from hatchway.iam.lint import Finding, lint_policies

V = "2012-10-17"
INSTANCE = "arn:aws:ec2:us-west-2:123456789012:instance/i-02573cafcfEXAMPLE"
RUN_SHELL = "arn:aws:ssm:us-west-2:123456789012:document/SSM-SessionManagerRunShell"
CHECK = {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}}

Doc = dict[str, Any]


def doc(*statements: Doc) -> Doc:
    return {"Version": V, "Statement": list(statements)}


def allow(action: Any, resource: Any, condition: Doc | None = None, **extra: Any) -> Doc:
    s: Doc = {"Effect": "Allow", "Action": action, "Resource": resource, **extra}
    if condition is not None:
        s["Condition"] = condition
    return s


def deny(action: Any, resource: Any, condition: Doc | None = None) -> Doc:
    s = allow(action, resource, condition)
    s["Effect"] = "Deny"
    return s


def start(resource: Any = None, condition: Doc | None = None) -> Doc:
    return allow("ssm:StartSession", resource or [INSTANCE, RUN_SHELL], condition)


def lint(*docs: Doc) -> list[Finding]:
    return lint_policies([(f"p{i}.json", d) for i, d in enumerate(docs)])


def where(findings: list[Finding]) -> list[tuple[str, str, int]]:
    return [(f.code, f.policy, f.statement_index) for f in findings]


# --- each rule: fires on the bad policy set, silent on the fixed one ------------------------

OWN_SESSIONS_USERNAME = allow(
    ["ssm:TerminateSession", "ssm:ResumeSession"], "arn:aws:ssm:*:*:session/${aws:username}-*"
)
OWN_SESSIONS_TAG = allow(
    ["ssm:TerminateSession", "ssm:ResumeSession"],
    "arn:aws:ssm:*:*:session/*",
    {"StringLike": {"ssm:resourceTag/aws:ssmmessages:session-id": "${aws:userid}"}},
)
TAG_KEYS_ALL = {"ForAllValues:StringEquals": {"aws:TagKeys": ["team", "env"]}}

CASES = [
    pytest.param(
        [doc(start(condition=CHECK), allow("ssm:StartSession", "arn:aws:ec2:*:*:instance/*"))],
        [
            doc(
                start(condition=CHECK),
                allow("ssm:StartSession", "arn:aws:ec2:*:*:instance/*", CHECK),
            )
        ],
        ("document-check-not-enforced", "p0.json", 1),
        id="document-check-not-enforced",
    ),
    pytest.param(
        [doc(start(condition=CHECK)), doc(allow("ssm:*", "*"))],
        [doc(start(condition=CHECK)), doc(allow("ssm:*", "arn:aws:ec2:*:*:instance/*", CHECK))],
        ("document-check-not-enforced", "p1.json", 0),
        id="document-check-not-enforced-across-policies",
    ),
    pytest.param(
        [doc(start(condition={"Bool": {"ssm:SessionDocumentAccessCheck": "true"}}))],
        [doc(start(condition=CHECK))],
        ("bool-needs-ifexists", "p0.json", 0),
        id="bool-needs-ifexists",
    ),
    pytest.param(
        [doc(start(condition={"Bool": {"ssm:SessionDocumentAccessCheck": True}}))],
        [doc(start(condition={"BoolIfExists": {"ssm:SessionDocumentAccessCheck": True}}))],
        ("bool-needs-ifexists", "p0.json", 0),
        id="bool-needs-ifexists-json-boolean",
    ),
    pytest.param(
        [doc(OWN_SESSIONS_USERNAME)],
        [doc(OWN_SESSIONS_TAG)],
        ("username-session-arn", "p0.json", 0),
        id="username-session-arn-resource",
    ),
    pytest.param(
        [doc(allow("ssmmessages:OpenDataChannel", "arn:aws:ssm:*:*:session/${aws:username}-*"))],
        [doc(allow("ssmmessages:OpenDataChannel", "arn:aws:ssm:*:*:session/*"))],
        ("username-session-arn", "p0.json", 0),
        id="username-session-arn-open-data-channel",
    ),
    pytest.param(
        [
            doc(
                {
                    "Effect": "Deny",
                    "Action": "ssm:TerminateSession",
                    "NotResource": "arn:aws:ssm:*:*:session/${aws:username}-*",
                }
            )
        ],
        [
            doc(
                deny(
                    "ssm:TerminateSession",
                    "*",
                    {
                        "StringNotLike": {
                            "ssm:resourceTag/aws:ssmmessages:session-id": "${aws:userid}"
                        }
                    },
                )
            )
        ],
        ("username-session-arn", "p0.json", 0),
        id="username-session-arn-not-resource",
    ),
    pytest.param(
        [
            doc(
                allow(
                    "ssm:TerminateSession",
                    "*",
                    {
                        "StringLike": {
                            "ssm:resourceTag/aws:ssmmessages:session-id": "${aws:username}-*"
                        }
                    },
                )
            )
        ],
        [
            doc(
                allow(
                    "ssm:TerminateSession",
                    "*",
                    {"StringLike": {"ssm:resourceTag/aws:ssmmessages:session-id": "${aws:userid}"}},
                )
            )
        ],
        ("username-session-arn", "p0.json", 0),
        id="username-session-arn-condition",
    ),
    pytest.param(
        [doc(allow("ssm:AddTagsToResource", "*", TAG_KEYS_ALL))],
        [
            doc(
                allow(
                    "ssm:AddTagsToResource", "*", {**TAG_KEYS_ALL, "Null": {"aws:TagKeys": "false"}}
                )
            )
        ],
        ("forallvalues-allow-missing-key", "p0.json", 0),
        id="forallvalues-allow-missing-key",
    ),
    pytest.param(
        [
            doc(
                deny(
                    "ssm:StartSession",
                    "*",
                    {"StringNotEqualsIfExists": {"aws:ResourceTag/env": "dev"}},
                )
            )
        ],
        [
            doc(
                deny(
                    "ssm:StartSession",
                    "*",
                    {
                        "StringNotEquals": {"aws:ResourceTag/env": "dev"},
                        "Null": {"aws:ResourceTag/env": "false"},
                    },
                )
            )
        ],
        ("negated-ifexists-in-deny", "p0.json", 0),
        id="negated-ifexists-in-deny",
    ),
    pytest.param(
        [doc(allow("ssm:StartSession", "*", CHECK))],
        [doc(start(condition=CHECK))],
        ("document-check-any-document", "p0.json", 0),
        id="document-check-any-document",
    ),
    pytest.param(
        [doc(allow("ssm:StartSession", ["arn:aws:ssm:*:*:document/*", INSTANCE], CHECK))],
        [
            doc(
                allow(
                    "ssm:StartSession",
                    ["arn:aws:ssm:*:*:document/AWS-StartSSHSession", INSTANCE],
                    CHECK,
                )
            )
        ],
        ("document-check-any-document", "p0.json", 0),
        id="document-check-any-document-wildcard-arn",
    ),
    pytest.param(
        [doc(start(INSTANCE, CHECK))],
        [doc(start(INSTANCE, CHECK), allow("ssm:StartSession", RUN_SHELL))],
        ("document-check-no-document-allowed", "p0.json", 0),
        id="document-check-no-document-allowed",
    ),
    pytest.param(
        [
            doc(
                start(),
                deny(
                    "ssm:StartSession",
                    "*",
                    {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "false"}},
                ),
            )
        ],
        [
            doc(
                start(),
                deny(
                    "ssm:StartSession", "*", {"Bool": {"ssm:SessionDocumentAccessCheck": "false"}}
                ),
            )
        ],
        ("document-check-deny-blocks-named", "p0.json", 1),
        id="document-check-deny-blocks-named",
    ),
    pytest.param(
        [
            doc(
                {
                    "Effect": "Allow",
                    "Action": "ssm:StartSession",
                    "Resource": INSTANCE,
                    "Condition": {"StringEqual": {"aws:ResourceTag/env": "dev"}},
                }
            )
        ],
        [
            doc(
                {
                    "Effect": "Allow",
                    "Action": "ssm:StartSession",
                    "Resource": INSTANCE,
                    "Condition": {"StringEquals": {"aws:ResourceTag/env": "dev"}},
                }
            )
        ],
        ("unknown-condition-operator", "p0.json", 0),
        id="unknown-condition-operator",
    ),
]


@pytest.mark.parametrize(("bad", "good", "expected"), CASES)
def test_rule_fires_on_bad_and_not_on_fixed(
    bad: list[Doc], good: list[Doc], expected: tuple[str, str, int]
) -> None:
    assert where(lint(*bad)) == [expected]
    assert lint(*good) == []


# --- document-check-not-enforced: which statements "allow StartSession" ---------------------


@pytest.mark.parametrize(
    ("other", "fires"),
    [
        (allow("ssm:StartSession", "*"), True),
        (allow("ssm:*", "*"), True),
        (allow("ssm:Start*", "arn:aws:ec2:*:*:instance/*"), True),
        (allow("*", "*"), True),
        (allow("SSM:STARTSESSION", INSTANCE), True),
        ({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}, True),
        (allow("ssm:StartSession", "arn:aws:ssm:*:*:managed-instance/*"), True),
        (allow("ssm:StartSession", "arn:aws:ecs:*:*:task/*"), True),
        (allow("ssm:StartSession", "arn:aws:*:*:*:*"), True),
        # does not cover the action
        ({"Effect": "Allow", "NotAction": "ssm:StartSession", "Resource": "*"}, False),
        ({"Effect": "Allow", "NotAction": "ssm:*", "Resource": "*"}, False),
        (allow("ssm:StartAutomationExecution", "*"), False),
        (allow("ssm:SendCommand", INSTANCE), False),
        # cannot match a target: never grants the no-document case
        (allow("ssm:StartSession", "arn:aws:ssm:*:*:document/AWS-StartSSHSession"), False),
        (allow("ssm:StartSession", "arn:aws:ssm:*:*:document/*"), False),
        # Deny statements grant nothing
        (deny("ssm:StartSession", "*"), False),
        # carries the check in another spelling
        (allow("ssm:*", "*", {"Bool": {"ssm:sessiondocumentaccesscheck": "true"}}), False),
        (allow("ssm:*", "*", {"StringEquals": {"ssm:SessionDocumentAccessCheck": "true"}}), False),
        (allow("ssm:*", "*", {"Null": {"ssm:SessionDocumentAccessCheck": "true"}}), False),
    ],
)
def test_not_enforced_statement_shapes(other: Doc, fires: bool) -> None:
    findings = [
        f
        for f in lint(doc(start(condition=CHECK), other))
        if f.code == "document-check-not-enforced"
    ]
    assert where(findings) == ([("document-check-not-enforced", "p0.json", 1)] if fires else [])


def test_wildcard_fix_still_allows_every_document() -> None:
    # Adding the condition to "ssm:* on *" enforces the check but lets any document pass.
    found = lint(doc(start(condition=CHECK)), doc(allow("ssm:*", "*", CHECK)))
    assert where(found) == [("document-check-any-document", "p1.json", 0)]


def test_not_enforced_needs_an_intent() -> None:
    # Nobody uses the check: nothing to enforce, no finding.
    assert lint(doc(start(), allow("ssm:*", "*"))) == []


def test_not_enforced_false_changes_nothing() -> None:
    # BoolIfExists "false" is satisfied by both "false" and absent: it is not the check.
    weak = {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "false"}}
    assert where(lint(doc(start(condition=CHECK), start(INSTANCE, weak)))) == [
        ("document-check-not-enforced", "p0.json", 1)
    ]


def test_not_enforced_reports_every_lacking_statement_and_names_the_enforcer() -> None:
    found = lint(
        doc(allow("ssm:*", "*")),
        doc({"Sid": "Shell", **start(condition=CHECK)}),
        doc(allow("ssm:StartSession", "arn:aws:ec2:*:*:instance/*")),
    )
    assert where(found) == [
        ("document-check-not-enforced", "p0.json", 0),
        ("document-check-not-enforced", "p2.json", 0),
    ]
    assert "statement 0 (Sid Shell) of p1.json" in found[0].message
    assert "BoolIfExists" in found[0].message
    assert "--document-name" in found[0].message


def test_not_enforced_silenced_by_a_deny_that_enforces_it() -> None:
    enforce = {"Bool": {"ssm:SessionDocumentAccessCheck": "false"}}
    lacking = allow("ssm:StartSession", "arn:aws:ec2:*:*:instance/*")
    assert lint(doc(start(condition=CHECK), lacking, deny("ssm:StartSession", "*", enforce))) == []
    # ... also when the Deny lists exactly the Allow's resources
    scoped = deny("ssm:StartSession", "arn:aws:ec2:*:*:instance/*", enforce)
    assert lint(doc(start(condition=CHECK), lacking, scoped)) == []
    # ... but not when it covers other targets only
    other = deny("ssm:StartSession", INSTANCE, enforce)
    assert where(lint(doc(start(condition=CHECK), lacking, other))) == [
        ("document-check-not-enforced", "p0.json", 1)
    ]


def test_not_enforced_silenced_by_a_deny_that_blocks_everything() -> None:
    # Nothing gets through such a Deny; its own finding leads to the enforcing Bool "false".
    lacking = allow("ssm:StartSession", "arn:aws:ec2:*:*:instance/*")
    blocks = {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "false"}}
    found = lint(doc(start(condition=CHECK), lacking, deny("ssm:StartSession", "*", blocks)))
    assert where(found) == [("document-check-deny-blocks-named", "p0.json", 2)]
    found = lint(doc(start(condition=CHECK), lacking, deny("ssm:StartSession", "*")))
    assert found == []
    # a Deny conditioned on anything else does not enforce the check
    other = {"StringEquals": {"aws:ResourceTag/env": "prod"}}
    found = lint(doc(start(condition=CHECK), lacking, deny("ssm:StartSession", "*", other)))
    assert where(found) == [("document-check-not-enforced", "p0.json", 1)]


def test_single_statement_object_and_sid() -> None:
    single = {"Version": V, "Statement": {"Sid": "All", **allow("ssm:*", "*")}}
    (f,) = lint(doc(start(condition=CHECK)), single)
    assert (f.code, f.policy, f.statement_index, f.sid) == (
        "document-check-not-enforced",
        "p1.json",
        0,
        "All",
    )


# --- the other rules: edge cases ---------------------------------------------------------


def test_bool_needs_ifexists_only_for_true_in_allow() -> None:
    false = {"Bool": {"ssm:SessionDocumentAccessCheck": "false"}}
    assert [f.code for f in lint(doc(start(condition=false)))] == []
    true = {"Bool": {"ssm:SessionDocumentAccessCheck": "true"}}
    assert [f.code for f in lint(doc(deny("ssm:StartSession", "*", true), start()))] == []


def test_username_ignored_outside_session_arns() -> None:
    mine = allow("s3:GetObject", "arn:aws:s3:::home/${aws:username}/*")
    params = allow("ssm:*", "arn:aws:ssm:*:*:parameter/${aws:username}/*")
    assert lint(doc(mine, params)) == []


def test_userid_session_arn_is_not_reported() -> None:
    # AWS's 2025 samples use it; the username-session-arn message explains the caveat.
    assert lint(doc(allow("ssm:TerminateSession", "arn:aws:ssm:*:*:session/${aws:userid}-*"))) == []
    (f,) = lint(doc(OWN_SESSIONS_USERNAME))
    assert "${aws:userid}" in f.message and "role-session name" in f.message


@pytest.mark.parametrize(
    "operator",
    [
        "ForAllValues:StringLike",
        "ForAllValues:StringNotEquals",
        "ForAllValues:StringEqualsIfExists",
    ],
)
def test_forallvalues_in_allow(operator: str) -> None:
    cond = {operator: {"aws:TagKeys": ["team"]}}
    assert [f.code for f in lint(doc(allow("ec2:CreateTags", "*", cond)))] == [
        "forallvalues-allow-missing-key"
    ]
    # guarded: a Null check or a ForAnyValue on the same key fails for a missing key
    for guard in (
        {"Null": {"aws:tagkeys": "false"}},
        {"ForAnyValue:StringLike": {"aws:TagKeys": "*"}},
    ):
        assert lint(doc(allow("ec2:CreateTags", "*", {**cond, **guard}))) == []
    # a guard on another key does not count, and a Deny is not an Allow
    other = {"Null": {"aws:RequestTag/team": "false"}}
    assert [f.code for f in lint(doc(allow("ec2:CreateTags", "*", {**cond, **other})))] == [
        "forallvalues-allow-missing-key"
    ]
    assert lint(doc(deny("ec2:CreateTags", "*", cond))) == []


def test_forallvalues_null_is_not_a_set_operator_problem() -> None:
    assert (
        lint(doc(allow("ec2:CreateTags", "*", {"ForAllValues:Null": {"aws:TagKeys": "false"}})))
        == []
    )


@pytest.mark.parametrize(
    ("condition", "fires"),
    [
        ({"StringNotEqualsIfExists": {"aws:PrincipalTag/team": "ops"}}, True),
        ({"ArnNotLikeIfExists": {"aws:PrincipalArn": "arn:aws:iam::*:role/admin"}}, True),
        ({"ForAnyValue:StringNotLikeIfExists": {"aws:TagKeys": "ok-*"}}, True),
        ({"StringNotEquals": {"aws:PrincipalTag/team": "ops"}}, False),
        ({"StringEqualsIfExists": {"aws:PrincipalTag/team": "ops"}}, False),
    ],
)
def test_negated_ifexists_in_deny(condition: Doc, fires: bool) -> None:
    codes = [f.code for f in lint(doc(deny("ssm:TerminateSession", "*", condition)))]
    assert codes == (["negated-ifexists-in-deny"] if fires else [])
    # the same condition in an Allow is not this rule's business
    assert "negated-ifexists-in-deny" not in [
        f.code for f in lint(doc(allow("ssm:TerminateSession", "*", condition)))
    ]


@pytest.mark.parametrize(
    ("condition", "every"),
    [
        ({"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "false"}}, True),
        ({"StringNotEqualsIfExists": {"ssm:SessionDocumentAccessCheck": "true"}}, True),
        ({"StringNotEquals": {"ssm:SessionDocumentAccessCheck": "true"}}, True),
        ({"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}}, False),
    ],
)
def test_deny_blocks_named_documents(condition: Doc, every: bool) -> None:
    (f,) = lint(doc(start(), deny("ssm:StartSession", "*", condition)))
    assert (f.code, f.statement_index) == ("document-check-deny-blocks-named", 1)
    assert ("every session" in f.message) == every
    assert '"Bool": {"ssm:SessionDocumentAccessCheck": "false"}' in f.message


def test_deny_on_documents_only_is_fine() -> None:
    cond = {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "false"}}
    ssh = deny("ssm:StartSession", "arn:aws:ssm:*:*:document/AWS-StartSSHSession", cond)
    assert lint(doc(start(), ssh)) == []


def test_any_document_through_not_resource() -> None:
    s = {
        "Effect": "Allow",
        "Action": "ssm:StartSession",
        "NotResource": INSTANCE,
        "Condition": CHECK,
    }
    assert [f.code for f in lint(doc(s))] == ["document-check-any-document"]
    # account-scoped document wildcard: all of your own documents, not AWS's
    own = allow("ssm:StartSession", [INSTANCE, "arn:aws:ssm:*:123456789012:document/*"], CHECK)
    assert lint(doc(own)) == []


def test_no_document_allowed_defers_to_not_enforced() -> None:
    found = lint(doc(start(INSTANCE, CHECK), allow("ssm:StartSession", "arn:aws:ec2:*:*:*")))
    assert [f.code for f in found] == ["document-check-not-enforced"]


def test_to_dict_and_order() -> None:
    found = lint(
        doc(OWN_SESSIONS_USERNAME, allow("ec2:CreateTags", "*", TAG_KEYS_ALL)),
        doc(start(condition={"Bool": {"ssm:SessionDocumentAccessCheck": "true"}})),
    )
    assert where(found) == [
        ("username-session-arn", "p0.json", 0),
        ("forallvalues-allow-missing-key", "p0.json", 1),
        ("bool-needs-ifexists", "p1.json", 0),
    ]
    assert found[2].to_dict() == {
        "code": "bool-needs-ifexists",
        "message": found[2].message,
        "policy": "p1.json",
        "statementIndex": 0,
        "sid": None,
    }
    for f in found:
        assert f.message.endswith(".") and f.message.count(". ") == 0


def test_unknown_operator_does_not_hide_other_statements() -> None:
    bad = allow("ssm:*", "*", {"BoolIfExist": {"ssm:SessionDocumentAccessCheck": "true"}})
    found = lint(doc(bad, start(condition={"Bool": {"ssm:SessionDocumentAccessCheck": "true"}})))
    assert where(found) == [
        ("unknown-condition-operator", "p0.json", 0),
        ("bool-needs-ifexists", "p0.json", 1),
    ]
    assert "'BoolIfExist'" in found[0].message


def test_policy_without_statements() -> None:
    assert lint({"Version": V}, {"Version": V, "Statement": []}) == []
    assert lint_policies([]) == []


# --- AWS's own policies ------------------------------------------------------------------

SEED_EXAMPLE = doc(
    {
        "Effect": "Allow",
        "Action": ["ssm:StartSession"],
        "Resource": [
            "arn:aws:ec2:us-west-2:123456789012:instance/i-02573cafcfEXAMPLE",
            "arn:aws:ssm:us-west-2:123456789012:document/SSM-SessionManagerRunShell",
        ],
        "Condition": {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}},
    }
)

Q_INSTANCE = "arn:aws:ec2:us-east-1:111122223333:instance/i-02573cafcfEXAMPLE"
Q_RUN_SHELL = "arn:aws:ssm:us-east-1:111122223333:document/SSM-SessionManagerRunShell"
Q_KEY = "arn:aws:kms:us-east-1:111122223333:key/key-name"
BY_USERID = ["arn:aws:ssm:*:*:session/${aws:userid}-*"]
BY_USERNAME = ["arn:aws:ssm:*:*:session/${aws:username}-*"]
FINANCE = {"StringLike": {"ssm:resourceTag/Finance": ["WebServers"]}}
END_ACTIONS = ["ssm:TerminateSession", "ssm:ResumeSession"]
DESCRIBE = [
    "ssm:DescribeSessions",
    "ssm:GetConnectionStatus",
    "ssm:DescribeInstanceProperties",
    "ec2:DescribeInstances",
]

END_USER_2025 = doc(
    allow(["ssm:StartSession"], [Q_INSTANCE, Q_RUN_SHELL]),
    allow(["ssmmessages:OpenDataChannel"], BY_USERID),
    allow(DESCRIBE, "*"),
    allow(END_ACTIONS, BY_USERID),
    allow(["kms:GenerateDataKey"], Q_KEY),
)
END_USER_2025_EC2 = doc(
    allow(["ssm:StartSession", "ssm:SendCommand"], [Q_INSTANCE, Q_RUN_SHELL]),
    allow(["ssmmessages:OpenDataChannel"], BY_USERID),
    allow(["ssm:GetConnectionStatus", "ssm:DescribeInstanceInformation"], "*"),
    allow(END_ACTIONS, BY_USERNAME),  # sic: the 2025 page's EC2 tab
)
END_USER_2025_CLI = doc(
    allow(["ssm:StartSession", "ssm:SendCommand"], [Q_INSTANCE, Q_RUN_SHELL]),
    allow(["ssmmessages:OpenDataChannel"], BY_USERID),
    allow(END_ACTIONS, BY_USERID),
    allow(["kms:GenerateDataKey"], Q_KEY),
)
ADMIN_2025 = doc(
    allow(["ssm:StartSession"], ["arn:aws:ec2:*:111122223333:instance/*"], FINANCE),
    allow(["ssmmessages:OpenDataChannel"], BY_USERID),
    allow(DESCRIBE, "*"),
    allow(
        ["ssm:CreateDocument", "ssm:UpdateDocument", "ssm:GetDocument", "ssm:StartSession"],
        Q_RUN_SHELL,
    ),
    allow(["ssmmessages:OpenDataChannel"], BY_USERID),
    allow(END_ACTIONS, BY_USERID),
)
ADMIN_2025_EC2 = doc(
    allow(
        ["ssm:StartSession", "ssm:SendCommand"],
        ["arn:aws:ec2:us-east-1:111122223333:instance/*"],
        {"StringLike": {"ssm:resourceTag/tag-key": ["tag-value"]}},
    ),
    allow(["ssm:StartSession"], [Q_RUN_SHELL]),
    allow(["ssmmessages:OpenDataChannel"], BY_USERID),
    allow(["ssm:GetConnectionStatus", "ssm:DescribeInstanceInformation"], "*"),
    allow(END_ACTIONS, BY_USERID),
)
DEFAULT_DOCUMENT_2025 = doc(
    {"Sid": "EnableSSMSession", **allow(["ssm:StartSession"], [Q_INSTANCE, Q_RUN_SHELL])},
    allow(["ssmmessages:OpenDataChannel"], ["*"]),
)
LEGACY_INSTANCE = "arn:aws:ec2:region:account-id:instance/instance-id"
LEGACY_RUN_SHELL = "arn:aws:ssm:region:account-id:document/SSM-SessionManagerRunShell"
END_USER_LEGACY = doc(
    allow(["ssm:StartSession"], [LEGACY_INSTANCE, LEGACY_RUN_SHELL], CHECK),
    allow(DESCRIBE, "*"),
    allow(END_ACTIONS, BY_USERNAME),
    allow(["kms:GenerateDataKey"], "key-name"),
)
END_USER_LEGACY_EC2 = doc(
    allow(["ssm:StartSession", "ssm:SendCommand"], [LEGACY_INSTANCE]),
    allow(["ssm:GetConnectionStatus", "ssm:DescribeInstanceInformation"], "*"),
    allow(END_ACTIONS, BY_USERNAME),
)
END_USER_LEGACY_ALL = doc(
    allow(["ssm:StartSession", "ssm:SendCommand"], [LEGACY_INSTANCE, LEGACY_RUN_SHELL], CHECK),
    allow([*DESCRIBE, "ssm:DescribeInstanceInformation"], "*"),
    allow(END_ACTIONS, BY_USERNAME),
    allow(["kms:GenerateDataKey"], "key-name"),
)
ADMIN_LEGACY = doc(
    allow(["ssm:StartSession"], ["arn:aws:ec2:region:account-id:instance/*"], FINANCE),
    allow(DESCRIBE, "*"),
    allow(["ssm:CreateDocument", "ssm:UpdateDocument", "ssm:GetDocument"], LEGACY_RUN_SHELL),
    allow(END_ACTIONS, BY_USERNAME),
)
INTERACTIVE_COMMANDS = doc(
    allow(
        ["ssm:StartSession"],
        [
            "arn:aws:ec2:region:987654321098:instance/*",
            "arn:aws:ssm:region:987654321098:document/exampleAllowedSessionDocument",
            "arn:aws:ssm:region:987654321098:document/exampleAllowedSessionDocument2",
        ],
        {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}},
    )
)
OWN_SESSIONS_BY_TAG = doc(
    allow(
        ["ssm:TerminateSession"],
        "*",
        {"StringLike": {"ssm:resourceTag/aws:ssmmessages:target-id": ["i-02573cafcfEXAMPLE"]}},
    ),
    allow(
        ["ssm:TerminateSession"],
        "*",
        {"StringLike": {"ssm:resourceTag/aws:ssmmessages:session-id": ["${aws:userid}"]}},
    ),
)
FULL_ADMIN = doc(
    allow(
        [
            "ssm:StartSession",
            "ssm:TerminateSession",
            "ssm:ResumeSession",
            "ssm:DescribeSessions",
            "ssm:GetConnectionStatus",
        ],
        "*",
    )
)
SSH = doc(
    allow("ssm:StartSession", [LEGACY_INSTANCE, "arn:aws:ssm:*:*:document/AWS-StartSSHSession"]),
    deny("ssm:StartSession", "arn:aws:ssm:*:*:document/AWS-StartSSHSession"),
)
JIT = doc(
    {
        "Sid": "SsmStartSession",
        **allow(["ssm:StartSession"], ["arn:aws:ssm:*:*:document/SSM-SessionManagerRunShell"]),
    }
)

USERNAME = "username-session-arn"


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        pytest.param(SEED_EXAMPLE, [], id="seed-example-with-condition"),
        pytest.param(END_USER_2025, [], id="2025-end-user"),
        pytest.param(END_USER_2025_EC2, [(USERNAME, 3)], id="2025-end-user-ec2"),
        pytest.param(END_USER_2025_CLI, [], id="2025-end-user-cli"),
        pytest.param(ADMIN_2025, [], id="2025-admin"),
        pytest.param(ADMIN_2025_EC2, [], id="2025-admin-ec2"),
        pytest.param(DEFAULT_DOCUMENT_2025, [], id="2025-default-document"),
        pytest.param(END_USER_LEGACY, [(USERNAME, 2)], id="legacy-end-user"),
        pytest.param(END_USER_LEGACY_EC2, [(USERNAME, 2)], id="legacy-end-user-ec2"),
        pytest.param(END_USER_LEGACY_ALL, [(USERNAME, 2)], id="legacy-end-user-all"),
        pytest.param(ADMIN_LEGACY, [(USERNAME, 3)], id="legacy-admin"),
        pytest.param(INTERACTIVE_COMMANDS, [], id="interactive-commands"),
        pytest.param(OWN_SESSIONS_BY_TAG, [], id="own-sessions-by-tag"),
        pytest.param(FULL_ADMIN, [], id="full-admin"),
        pytest.param(SSH, [], id="ssh-allow-and-deny"),
        pytest.param(JIT, [], id="jit-token-session-policy"),
    ],
)
def test_aws_policies(policy: Doc, expected: list[tuple[str, int]]) -> None:
    assert [(f.code, f.statement_index) for f in lint(policy)] == expected


def test_seed_example_without_condition_next_to_one_with_it() -> None:
    # The seed's own example statement (it omits the condition) beside a statement that uses it.
    seed_as_printed = doc(start())
    assert lint(seed_as_printed) == []
    assert where(lint(SEED_EXAMPLE, seed_as_printed)) == [
        ("document-check-not-enforced", "p1.json", 0)
    ]
