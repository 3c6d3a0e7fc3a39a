"""Engine details beyond the traps: NotPrincipal, RCPs, special variables, principals, index."""

from __future__ import annotations

import json

from harness.policies import ROLE_SESSION, USER, allow, decide, deny, policy

from hatchway.iam import PolicyKind, PolicySet, Principal, make_request, parse_policy
from hatchway.ssm import document_arn, session_arn, target_arn


def test_not_principal_deny_spares_only_a_fully_listed_chain() -> None:
    res = "arn:aws:s3:::bucket/k"
    role = "arn:aws:iam::123456789012:role/Ops"
    listed_all = {"AWS": ["arn:aws:iam::123456789012:root", role, ROLE_SESSION]}
    listed_session_only = {"AWS": [ROLE_SESSION]}
    ok = [policy(allow())]
    spared = policy(deny("s3:*", res, NotPrincipal=listed_all))
    assert decide(ok, "s3:GetObject", res, ROLE_SESSION, resource_policy=spared).allowed
    assert decide(ok, "s3:GetObject", res, USER, resource_policy=spared).decision == "explicitDeny"
    not_spared = policy(deny("s3:*", res, NotPrincipal=listed_session_only))
    assert (
        decide(ok, "s3:GetObject", res, ROLE_SESSION, resource_policy=not_spared).decision
        == "explicitDeny"
    )


def test_rcp_levels_must_allow_and_deny_explicitly() -> None:
    ok = [policy(allow())]
    rcp_full = parse_policy(json.dumps(policy(allow(Principal="*"))), PolicyKind.RCP)
    rcp_deny = parse_policy(
        json.dumps(policy(allow(Principal="*"), deny("s3:*", Principal="*"))), PolicyKind.RCP
    )
    user_policies = [parse_policy(json.dumps(p)) for p in ok]
    req = make_request("s3:GetObject", "arn:aws:s3:::b/k", USER)
    assert PolicySet(user_policies, rcps=[[rcp_full]]).evaluate(req).allowed
    d = PolicySet(user_policies, rcps=[[rcp_full], [rcp_deny]]).evaluate(req)
    assert d.decision == "explicitDeny"
    assert (d.message or "").endswith("with an explicit deny in a resource control policy")


def test_special_variables_are_literal_characters() -> None:
    for special, literal in (("${?}", "?"), ("${$}", "$"), ("${*}", "*")):
        p = policy(allow("s3:GetObject", f"arn:aws:s3:::b/x{special}"))
        assert decide([p], "s3:GetObject", f"arn:aws:s3:::b/x{literal}").allowed
        assert not decide([p], "s3:GetObject", "arn:aws:s3:::b/xy").allowed


def test_principal_tag_and_userid_variables() -> None:
    p = policy(
        allow(
            "ssm:StartSession",
            "*",
            Condition={"StringEquals": {"ssm:resourceTag/team": "${aws:PrincipalTag/team}"}},
        )
    )
    ctx = {"aws:PrincipalTag/team": "blue", "ssm:resourceTag/team": "blue"}
    assert decide([p], context=ctx).allowed
    assert not decide([p], context={**ctx, "ssm:resourceTag/team": "red"}).allowed
    q = policy(allow("ssm:TerminateSession", "arn:aws:ssm:*:*:session/${aws:userid}-*"))
    sess = "arn:aws:ssm:us-east-1:123456789012:session/AIDAEXAMPLE-0123456789abcdef0"
    assert decide([q], "ssm:TerminateSession", sess, context={"aws:userid": "AIDAEXAMPLE"}).allowed
    assert not decide([q], "ssm:TerminateSession", sess).allowed  # no aws:userid: no match


def test_principal_context_keys() -> None:
    user = Principal.from_arn("arn:aws:iam::123456789012:user/path/alice").context()
    assert user["aws:username"] == "alice" and user["aws:principaltype"] == "User"
    sess = Principal.from_arn(ROLE_SESSION).context()
    assert "aws:username" not in sess
    assert sess["aws:principalarn"] == "arn:aws:iam::123456789012:role/Ops"
    assert sess["aws:principaltype"] == "AssumedRole"
    root = Principal.from_arn("arn:aws:iam::123456789012:root").context()
    assert root["aws:userid"] == "123456789012" and root["aws:principaltype"] == "Account"
    anon = make_request("s3:GetObject").principal_arn
    assert anon == "anonymous"


def test_denial_message_names_resource_only_when_specific() -> None:
    d = decide([], "ssm:DescribeSessions", "*")
    assert d.message == (
        f"User: {USER} is not authorized to perform: ssm:DescribeSessions "
        "because no identity-based policy allows the ssm:DescribeSessions action"
    )
    arn_policy = parse_policy(json.dumps(policy(deny())), arn="arn:aws:iam::123456789012:policy/D")
    req = make_request("ssm:StartSession", "arn:aws:ec2:us-east-1:123456789012:instance/i-1", USER)
    msg = PolicySet([arn_policy]).evaluate(req).message
    assert msg == (
        f"User: {USER} is not authorized to perform: ssm:StartSession on resource: "
        "arn:aws:ec2:us-east-1:123456789012:instance/i-1 with an explicit deny in an "
        "identity-based policy: arn:aws:iam::123456789012:policy/D"
    )


def test_large_statement_sets_index_by_action() -> None:
    statements = [allow(f"svc{i}:Action{i}", f"arn:aws:svc{i}:::r/{i}") for i in range(2000)]
    statements.append(allow("ssm:StartSession", "arn:aws:ec2:*:*:instance/*"))
    ps = PolicySet(
        [
            parse_policy(
                json.dumps({"Version": "2012-10-17", "Statement": statements}), size_limit=None
            )
        ]
    )
    candidates = ps.identity.index.candidates("ssm:startsession")
    assert len(candidates[1]) == 1
    assert ps.evaluate(
        make_request("ssm:StartSession", "arn:aws:ec2:r:1:instance/i-1", USER)
    ).allowed
    assert ps.evaluate(make_request("svc7:Action7", "arn:aws:svc7:::r/7", USER)).allowed


def test_ssm_arns() -> None:
    assert target_arn("i-02573cafcfEXAMPLE", "us-west-2", "1") == (
        "arn:aws:ec2:us-west-2:1:instance/i-02573cafcfEXAMPLE"
    )
    assert target_arn("mi-0123456789abcdef0", "eu-west-1", "1") == (
        "arn:aws:ssm:eu-west-1:1:managed-instance/mi-0123456789abcdef0"
    )
    assert target_arn("ecs:web_abc123_def456", "us-east-1", "1") == (
        "arn:aws:ecs:us-east-1:1:task/web/abc123"
    )
    assert document_arn("AWS-StartSSHSession", "us-east-1", "1") == (
        "arn:aws:ssm:us-east-1::document/AWS-StartSSHSession"
    )
    assert document_arn("SSM-SessionManagerRunShell", "us-east-1", "1") == (
        "arn:aws:ssm:us-east-1:1:document/SSM-SessionManagerRunShell"
    )
    assert session_arn("alice-0123456789abcdef0", "us-east-1", "1") == (
        "arn:aws:ssm:us-east-1:1:session/alice-0123456789abcdef0"
    )


def test_resource_policy_naming_the_caller_lifts_limits_even_with_identity_allow() -> None:
    # Found by differential testing: an identity Allow must not take the bypass away.
    res = "arn:aws:ssm:us-east-1:123456789012:document/alice"
    ok = [policy(allow())]
    s3_only = policy(allow("s3:GetObject"))
    by_user = policy(allow("ssm:StartSession", "*", Principal={"AWS": USER}))
    assert decide(ok, resource=res, resource_policy=by_user, boundary=[s3_only]).allowed
    by_session = policy(allow("ssm:StartSession", "*", Principal={"AWS": ROLE_SESSION}))
    assert decide(
        ok, resource=res, principal=ROLE_SESSION, resource_policy=by_session, session=s3_only
    ).allowed
    assert not decide(ok, resource=res, boundary=[s3_only]).allowed
