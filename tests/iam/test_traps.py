"""The fifteen things implementers get wrong, one test group each
(docs/reference/iam-evaluation.md#common-mistakes)."""

from __future__ import annotations

from typing import Any

from harness.policies import ROLE_SESSION, USER, allow, decide, deny, policy

INSTANCE = "arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0"


# 1. Negated operators on a missing key are true.
def test_01_negated_operator_on_missing_key_matches() -> None:
    p = policy(allow(), deny(Condition={"NotIpAddress": {"aws:SourceIp": "192.0.2.0/24"}}))
    assert decide([p], context={}).decision == "explicitDeny"  # e.g. via a VPC endpoint
    assert decide([p], context={"aws:SourceIp": "192.0.2.7"}).decision == "allowed"
    assert decide([p], context={"aws:SourceIp": "198.51.100.1"}).decision == "explicitDeny"
    for op in (
        "StringNotEquals",
        "StringNotLike",
        "ArnNotLike",
        "NumericNotEquals",
        "DateNotEquals",
        "StringNotEqualsIgnoreCase",
        "ArnNotEquals",
    ):
        q = policy(allow(Condition={op: {"aws:SomeKey": "1"}}))
        assert decide([q]).decision == "allowed", op


# 2. IfExists on a negated operator does not rescue a Deny.
def test_02_negated_ifexists_deny_still_applies_on_missing_key() -> None:
    p = policy(
        allow(), deny(Condition={"StringNotEqualsIfExists": {"aws:ResourceTag/team": "ops"}})
    )
    assert decide([p]).decision == "explicitDeny"
    assert decide([p], context={"aws:ResourceTag/team": "ops"}).decision == "allowed"


# 3. Values OR (NOR when negated); keys AND; operators AND.
def test_03_value_or_key_and_operator_and() -> None:
    values_or = policy(allow(Condition={"StringEquals": {"aws:username": ["bob", "alice"]}}))
    assert decide([values_or]).allowed
    nor = policy(allow(Condition={"StringNotEquals": {"aws:username": ["bob", "alice"]}}))
    assert not decide([nor]).allowed
    assert decide([nor], principal="arn:aws:iam::123456789012:user/carol").allowed
    keys_and = policy(
        allow(
            Condition={
                "StringEquals": {"aws:username": "alice", "aws:RequestedRegion": "eu-west-1"}
            }
        )
    )
    assert not decide([keys_and], context={"aws:RequestedRegion": "us-east-1"}).allowed
    assert decide([keys_and], context={"aws:RequestedRegion": "eu-west-1"}).allowed
    ops_and = policy(
        allow(
            Condition={
                "StringEquals": {"aws:username": "alice"},
                "Bool": {"aws:SecureTransport": "true"},
            }
        )
    )
    assert not decide([ops_and], context={"aws:SecureTransport": "false"}).allowed
    assert decide([ops_and], context={"aws:SecureTransport": "true"}).allowed


# 4. ForAllValues is vacuously true on a missing/empty key; ForAnyValue false.
def test_04_set_operators_on_missing_and_empty_keys() -> None:
    all_p = policy(allow(Condition={"ForAllValues:StringEquals": {"aws:TagKeys": ["a", "b"]}}))
    any_p = policy(allow(Condition={"ForAnyValue:StringEquals": {"aws:TagKeys": ["a", "b"]}}))
    contexts: list[dict[str, Any]] = [{}, {"aws:TagKeys": []}, {"aws:TagKeys": ""}]
    for ctx in contexts:
        assert decide([all_p], context=ctx).allowed, ctx
        assert not decide([any_p], context=ctx).allowed, ctx
    assert decide([all_p], context={"aws:TagKeys": ["a"]}).allowed
    assert not decide([all_p], context={"aws:TagKeys": ["a", "c"]}).allowed
    assert decide([any_p], context={"aws:TagKeys": ["c", "b"]}).allowed
    guarded = policy(
        allow(
            Condition={
                "ForAllValues:StringEquals": {"aws:TagKeys": ["a"]},
                "Null": {"aws:TagKeys": "false"},
            }
        )
    )
    assert not decide([guarded]).allowed


# 5. A missing key in a positive operator is false: the statement silently stops applying.
def test_05_username_variable_never_matches_role_sessions() -> None:
    p = policy(allow("ssm:TerminateSession", "arn:aws:ssm:*:*:session/${aws:username}-*"))
    own = "arn:aws:ssm:us-east-1:123456789012:session/alice-0123456789abcdef0"
    assert decide([p], "ssm:TerminateSession", own).allowed
    role = decide(
        [p],
        "ssm:TerminateSession",
        "arn:aws:ssm:us-east-1:123456789012:session/alice-session-0123456789abcdef0",
        ROLE_SESSION,
    )
    assert role.decision == "implicitDeny"
    cond = policy(allow(Condition={"StringEquals": {"aws:PrincipalTag/team": "ops"}}))
    assert not decide([cond]).allowed


# 6. Substituted values are literal; ${*} is a literal star.
def test_06_variable_values_are_literals() -> None:
    p = policy(allow("s3:GetObject", "arn:aws:s3:::bucket/${aws:username}/*"))
    star_user = "arn:aws:iam::123456789012:user/a*"
    assert decide([p], "s3:GetObject", "arn:aws:s3:::bucket/a*/x", star_user).allowed
    assert not decide([p], "s3:GetObject", "arn:aws:s3:::bucket/abc/x", star_user).allowed
    lit = policy(allow("s3:GetObject", "arn:aws:s3:::bucket/${*}"))
    assert decide([lit], "s3:GetObject", "arn:aws:s3:::bucket/*").allowed
    assert not decide([lit], "s3:GetObject", "arn:aws:s3:::bucket/x").allowed
    like = policy(allow(Condition={"StringLike": {"aws:PrincipalTag/p": "${aws:username}"}}))
    assert not decide([like], principal=star_user, context={"aws:PrincipalTag/p": "abc"}).allowed
    assert decide([like], principal=star_user, context={"aws:PrincipalTag/p": "a*"}).allowed
    dflt = policy(
        allow(
            Condition={
                "StringEquals": {
                    "aws:PrincipalTag/team": "${aws:PrincipalTag/dept, 'company-wide'}"
                }
            }
        )
    )
    assert decide([dflt], context={"aws:PrincipalTag/team": "company-wide"}).allowed
    assert decide(
        [dflt], context={"aws:PrincipalTag/team": "x", "aws:PrincipalTag/dept": "x"}
    ).allowed


# 7. Variables only under Version 2012-10-17.
def test_07_no_substitution_without_2012_version() -> None:
    resource = "arn:aws:s3:::bucket/${aws:username}"
    for version in ("2008-10-17", None):
        p = policy(allow("s3:GetObject", resource), version=version)
        assert not decide([p], "s3:GetObject", "arn:aws:s3:::bucket/alice").allowed
        assert decide([p], "s3:GetObject", resource).allowed
    p = policy(allow("s3:GetObject", resource))
    assert decide([p], "s3:GetObject", "arn:aws:s3:::bucket/alice").allowed


# 8. Case rules.
def test_08_case_sensitivity_rules() -> None:
    assert decide([policy(allow("SSM:startsession"))], "ssm:StartSession").allowed
    keys = policy(allow(Condition={"StringEquals": {"AWS:USERNAME": "alice"}}))
    assert decide([keys]).allowed
    values = policy(allow(Condition={"StringEquals": {"aws:username": "Alice"}}))
    assert not decide([values]).allowed
    ic = policy(allow(Condition={"StringEqualsIgnoreCase": {"aws:username": "ALICE"}}))
    assert decide([ic]).allowed
    tags = policy(allow(Condition={"StringEquals": {"aws:PrincipalTag/TeamName": "ops"}}))
    assert decide([tags], context={"aws:principaltag/teamname": "ops"}).allowed
    res = policy(allow("s3:GetObject", "arn:aws:s3:::Bucket/*"))
    assert not decide([res], "s3:GetObject", "arn:aws:s3:::bucket/x").allowed


# 9. * in StringLike crosses ':'; in ArnLike it does not. In Resource, * crosses '/'.
def test_09_wildcards_per_operator() -> None:
    pattern = "arn:aws:someservice:*:111122223333:finance/*"
    value = "arn:aws:someservice:us-east-2:999999999999:store/abc:111122223333:finance/doc.txt"
    s = policy(allow(Condition={"StringLike": {"aws:SourceArn": pattern}}))
    a = policy(allow(Condition={"ArnLike": {"aws:SourceArn": pattern}}))
    assert decide([s], context={"aws:SourceArn": value}).allowed
    assert not decide([a], context={"aws:SourceArn": value}).allowed
    r = policy(allow("ssm:StartSession", "arn:aws:ec2:*:*:instance/*"))
    assert decide([r], resource=INSTANCE).allowed
    assert decide(
        [policy(allow("s3:GetObject", "arn:aws:s3:::b/*"))], "s3:GetObject", "arn:aws:s3:::b/a/b/c"
    ).allowed
    region_star = policy(allow("ssm:StartSession", "arn:aws:ec2:*:123456789012:instance/*"))
    assert not decide(
        [region_star], resource="arn:aws:ec2:us-east-1:x:123456789012:instance/i"
    ).allowed


# 10. Explicit deny beats everything, across all policy types.
def test_10_explicit_deny_in_any_policy_type_wins() -> None:
    ok = [policy(allow())]
    d = decide(ok, boundary=[policy(allow(), deny("ssm:*"))])
    assert d.decision == "explicitDeny"
    assert d.message is not None and d.message.endswith(
        "with an explicit deny in a permissions boundary"
    )
    d = decide(ok, scps=[[policy(allow(), deny("ssm:StartSession"))]])
    assert d.decision == "explicitDeny" and "service control policy" in (d.message or "")
    d = decide(ok, resource_policy=policy(deny(Principal="*")))
    assert d.decision == "explicitDeny" and "resource-based policy" in (d.message or "")
    d = decide(ok, principal=ROLE_SESSION, session=policy(deny()))
    assert d.decision == "explicitDeny"


# 11. Boundary / session / SCP "no allow" is an implicit deny; SCPs word it as explicit.
def test_11_limits_without_allow() -> None:
    ok = [policy(allow())]
    d = decide(ok, boundary=[policy(allow("ec2:*"))])
    assert d.decision == "implicitDeny"
    assert d.message == (
        f"User: {USER} is not authorized to perform: ssm:StartSession because "
        "no permissions boundary allows the ssm:StartSession action"
    )
    d = decide(ok, scps=[[policy(allow())], [policy(allow("ec2:*"))]])
    assert d.decision == "implicitDeny"
    assert d.message == (
        f"User: {USER} is not authorized to perform: ssm:StartSession with "
        "an explicit deny in a service control policy"
    )
    d = decide(ok, principal=ROLE_SESSION, session=policy(allow("ec2:*")))
    assert d.decision == "implicitDeny" and "no session policy allows" in (d.message or "")
    fed = "arn:aws:sts::123456789012:federated-user/bob"
    assert decide(ok, principal=fed).decision == "implicitDeny"
    assert decide(ok, principal=fed, session=policy(allow())).allowed


# 12. Same-account resource policies: user/session ARNs bypass identity and boundary limits,
#     a role ARN does not bypass the boundary or the session policy.
def test_12_same_account_resource_policy_principals() -> None:
    res = "arn:aws:s3:::bucket/key"
    tight = [policy(allow("ec2:*"))]
    by_user = policy(allow("s3:GetObject", res, Principal={"AWS": USER}))
    assert decide([], "s3:GetObject", res, resource_policy=by_user).allowed
    assert decide(tight, "s3:GetObject", res, resource_policy=by_user, boundary=tight).allowed
    by_account = policy(allow("s3:GetObject", res, Principal={"AWS": "123456789012"}))
    assert not decide([], "s3:GetObject", res, resource_policy=by_account).allowed
    role = "arn:aws:iam::123456789012:role/Ops"
    by_role = policy(allow("s3:GetObject", res, Principal={"AWS": role}))
    assert decide([], "s3:GetObject", res, ROLE_SESSION, resource_policy=by_role).allowed
    assert not decide(
        [], "s3:GetObject", res, ROLE_SESSION, resource_policy=by_role, boundary=tight
    ).allowed
    assert not decide(
        [], "s3:GetObject", res, ROLE_SESSION, resource_policy=by_role, session=tight[0]
    ).allowed
    by_session = policy(allow("s3:GetObject", res, Principal={"AWS": ROLE_SESSION}))
    assert decide(
        [],
        "s3:GetObject",
        res,
        ROLE_SESSION,
        resource_policy=by_session,
        boundary=tight,
        session=tight[0],
    ).allowed
    # Cross-account: both sides must allow.
    other = "999999999999"
    assert not decide([policy(allow())], "s3:GetObject", res, resource_account=other).allowed
    d = decide([], "s3:GetObject", res, resource_policy=by_user, resource_account=other)
    assert d.decision == "implicitDeny" and "identity-based" in (d.message or "")
    assert decide(
        [policy(allow())], "s3:GetObject", res, resource_policy=by_user, resource_account=other
    ).allowed


# 13. NotAction / NotResource are complements.
def test_13_not_action_and_not_resource() -> None:
    p = policy({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"})
    assert decide([p], "ec2:RunInstances").allowed
    assert not decide([p], "iam:CreateUser").allowed
    q = policy(allow(), {"Effect": "Deny", "NotAction": "ssm:*", "Resource": "*"})
    assert decide([q], "ssm:StartSession").allowed
    assert decide([q], "ec2:RunInstances").decision == "explicitDeny"
    r = policy({"Effect": "Allow", "Action": "s3:*", "NotResource": "arn:aws:s3:::secret/*"})
    assert decide([r], "s3:GetObject", "arn:aws:s3:::public/x").allowed
    assert not decide([r], "s3:GetObject", "arn:aws:s3:::secret/x").allowed


# 14. One call, several authorizations: covered end to end in tests/ssm (target + document).
def test_14_conditions_evaluate_per_resource() -> None:
    p = policy(
        allow("ssm:StartSession", "*", Condition={"StringEquals": {"ssm:resourceTag/env": "dev"}})
    )
    assert decide([p], resource=INSTANCE, context={"ssm:resourceTag/env": "dev"}).allowed
    assert not decide([p], resource="arn:aws:ssm:us-east-1::document/AWS-StartSSHSession").allowed
    p2 = policy(
        allow(
            "ssm:StartSession",
            "*",
            Condition={"StringEqualsIfExists": {"ssm:resourceTag/env": "dev"}},
        )
    )
    assert decide([p2], resource="arn:aws:ssm:us-east-1::document/AWS-StartSSHSession").allowed


# 15. sts:GetCallerIdentity is always allowed; root is allowed by default but bound by SCPs.
def test_15_get_caller_identity_and_root() -> None:
    assert decide([policy(deny())], "sts:GetCallerIdentity").allowed
    root = "arn:aws:iam::123456789012:root"
    assert decide([], "ssm:StartSession", principal=root).allowed
    assert decide([], principal=root, scps=[[policy(allow("ec2:*"))]]).decision == "implicitDeny"
    assert (
        decide([], principal=root, resource_policy=policy(deny(Principal="*"))).decision
        == "explicitDeny"
    )
