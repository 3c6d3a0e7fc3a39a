"""Roles as identities (issue 16, items 1, 4, 5, 13, 14), through boto3 and a running broker.

* CreateActivation resolves ``IamRole`` (a name or ``path/name``) to one existing role that
  trusts ssm.amazonaws.com, and authorizes ``iam:PassRole`` on that role's exact ARN.
* Credentials issued for a role (STS sessions, nodes) follow its unique id: once the role is
  deleted they are refused for good, even after a role of the same name is created, and the
  Session Manager sessions open under it end with a reason.
* Role chaining is limited to one hour; a deleted session policy allows nothing; session
  tags and source identities need the trust policy's ``sts:TagSession`` /
  ``sts:SetSourceIdentity``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from harness import (
    ACCOUNT,
    Agent,
    Broker,
    start_agent,
    start_broker,
    stop_broker,
    user_with_policy,
    wait_ping,
)
from sqlalchemy import text

from hatchway.server.store import Store
from hatchway.server.store import schema as t

SSM_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ssm.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
ADMIN = "arn:aws:iam::aws:policy/AdministratorAccess"
NONEXISTENT = "Nonexistent role or missing ssm service principal in trust policy"


def _trust(*actions: str, deny: str | None = None) -> str:
    statements: list[dict[str, Any]] = [
        {
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
            "Action": list(actions or ["sts:AssumeRole"]),
        }
    ]
    if deny:
        statements.append(
            {
                "Effect": "Deny",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                "Action": deny,
            }
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def _allow(*actions: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": "*"}],
    }


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("roles") / "data")
    yield b
    stop_broker(b)


@pytest.fixture(scope="module")
def node(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = start_agent(broker, tmp_path_factory.mktemp("node") / "state", "i-0123456789abcdef0")
    yield a
    a.stop()


@pytest.fixture(scope="module")
def assumer(broker: Broker) -> tuple[str, str]:
    return user_with_policy(
        broker,
        "assumer",
        _allow("sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"),
    )


def _session(broker: Broker, key: tuple[str, ...], role: str, **kw: Any) -> tuple[str, str, str]:
    c = broker.client("sts", *key).assume_role(
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{role}", RoleSessionName=kw.pop("name", "sess"), **kw
    )["Credentials"]
    return c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"]


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    err = exc.value.response["Error"]
    return err["Code"], err["Message"]


def _register(broker: Broker, activation: dict[str, str]) -> dict[str, str]:
    """The anonymous registration call the agent makes; the node's credentials."""
    req = urllib.request.Request(
        broker.url + "/hatchway/v1/register",
        data=json.dumps(
            {
                "ActivationId": activation["ActivationId"],
                "ActivationCode": activation["ActivationCode"],
            }
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        out: dict[str, str] = json.loads(resp.read())
    return out


# -- item 1: CreateActivation ------------------------------------------------------------------


def test_create_activation_passes_the_exact_role(broker: Broker) -> None:
    iam = broker.client("iam")
    iam.create_role(
        RoleName="BreakGlassAdmin", AssumeRolePolicyDocument=json.dumps(SSM_TRUST)
    )  # root path, admin rights
    iam.attach_role_policy(RoleName="BreakGlassAdmin", PolicyArn=ADMIN)
    iam.create_role(
        RoleName="Worker", Path="/nodes/", AssumeRolePolicyDocument=json.dumps(SSM_TRUST)
    )
    iam.create_role(RoleName="Untrusting", Path="/nodes/", AssumeRolePolicyDocument=_trust())
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "ssm:CreateActivation", "Resource": "*"},
            {
                "Effect": "Allow",
                "Action": "iam:PassRole",
                "Resource": f"arn:aws:iam::{ACCOUNT}:role/nodes/*",
                "Condition": {"StringEquals": {"iam:PassedToService": "ssm.amazonaws.com"}},
            },
        ],
    }
    ssm = broker.client("ssm", *user_with_policy(broker, "fleet-admin", policy))
    # A full ARN is no role name: the escalation of issue 16 (the ARN's last segment
    # became the root-path admin role) names no role at all.
    for value in (
        f"arn:aws:iam::{ACCOUNT}:role/nodes/BreakGlassAdmin",
        "nodes/BreakGlassAdmin",
        f"arn:aws:iam::{ACCOUNT}:role/nodes/Worker",
        "Worker",  # the role lives under /nodes/: its path is part of what names it
        "nodes/Missing",
        "nodes/Untrusting",  # exists, but does not trust ssm.amazonaws.com
    ):
        with pytest.raises(ClientError) as exc:
            ssm.create_activation(IamRole=value)
        assert _error(exc) == ("ValidationException", NONEXISTENT), value
    # The role itself, by name: iam:PassRole is decided on its real ARN.
    with pytest.raises(ClientError) as exc:
        ssm.create_activation(IamRole="BreakGlassAdmin")
    code, message = _error(exc)
    assert code == "AccessDeniedException"
    assert f"iam:PassRole on resource: arn:aws:iam::{ACCOUNT}:role/BreakGlassAdmin" in message
    made = ssm.create_activation(IamRole="nodes/Worker")
    listed = broker.client("ssm").describe_activations(
        Filters=[{"FilterKey": "ActivationIds", "FilterValues": [made["ActivationId"]]}]
    )["ActivationList"]
    assert [a["IamRole"] for a in listed] == ["nodes/Worker"]
    assert not [
        a
        for a in broker.client("ssm").describe_activations()["ActivationList"]
        if a["IamRole"] != "nodes/Worker" and a["IamRole"] != "SSMServiceRole"
    ]
    # Its node acts as that role, by its unique id.
    creds = _register(broker, made)
    worker_id = iam.get_role(RoleName="Worker")["Role"]["RoleId"]
    me = broker.client("sts", creds["AccessKeyId"], creds["SecretAccessKey"]).get_caller_identity()
    assert me["UserId"] == f"{worker_id}:{creds['InstanceId']}"
    assert me["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/Worker/{creds['InstanceId']}"


def test_pass_role_needs_the_ssm_service(broker: Broker) -> None:
    broker.client("iam").create_role(
        RoleName="EcTwoOnly", AssumeRolePolicyDocument=json.dumps(SSM_TRUST)
    )
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "ssm:CreateActivation", "Resource": "*"},
            {
                "Effect": "Allow",
                "Action": "iam:PassRole",
                "Resource": "*",
                "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
            },
        ],
    }
    ssm = broker.client("ssm", *user_with_policy(broker, "ec2-passer", policy))
    with pytest.raises(ClientError) as exc:
        ssm.create_activation(IamRole="EcTwoOnly")
    assert _error(exc)[0] == "AccessDeniedException"


# -- item 4: credentials follow the role's unique id -------------------------------------------


def test_deleted_role_credentials_are_refused_for_good(
    broker: Broker, node: Agent, assumer: tuple[str, str], tmp_path: Path
) -> None:
    iam = broker.client("iam")
    admin = broker.client("ssm")
    iam.create_role(RoleName="Ops", AssumeRolePolicyDocument=_trust())
    iam.put_role_policy(
        RoleName="Ops",
        PolicyName="p",
        PolicyDocument=json.dumps(_allow("ssm:StartSession", "ssm:DescribeSessions")),
    )
    session = _session(broker, assumer, "Ops", name="ops-one")
    old_id = iam.get_role(RoleName="Ops")["Role"]["RoleId"]
    assert broker.client("sts", *session).get_caller_identity()["UserId"] == f"{old_id}:ops-one"
    by_session = broker.client("ssm", *session).start_session(Target=node.instance_id)
    # Nodes registered with an activation that passed a role: a running agent, and a
    # registration whose keys the test holds.
    iam.create_role(RoleName="OpsNode", AssumeRolePolicyDocument=json.dumps(SSM_TRUST))
    iam.attach_role_policy(
        RoleName="OpsNode", PolicyArn="arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
    )
    activation = admin.create_activation(IamRole="OpsNode", RegistrationLimit=3)
    ops_node = start_agent(broker, tmp_path / "ops-node", activation=activation)
    try:
        on_node = admin.start_session(Target=ops_node.instance_id)
        node_creds = _register(broker, activation)
        node_key = (node_creds["AccessKeyId"], node_creds["SecretAccessKey"])
        broker.client("sts", *node_key).get_caller_identity()

        iam.delete_role_policy(RoleName="Ops", PolicyName="p")
        iam.delete_role(RoleName="Ops")
        iam.detach_role_policy(
            RoleName="OpsNode", PolicyArn="arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
        )
        iam.delete_role(RoleName="OpsNode")
        # The sessions opened under the roles have ended, saying why; the node is offline.
        for sid, role in ((by_session["SessionId"], "Ops"), (on_node["SessionId"], "OpsNode")):
            history = admin.describe_sessions(
                State="History", Filters=[{"key": "SessionId", "value": sid}]
            )["Sessions"]
            assert [(s["Status"], s["Details"]) for s in history] == [
                (
                    "Terminated",
                    f"The session was terminated because its IAM role {role} was deleted.",
                )
            ]
        assert wait_ping(broker, ops_node.instance_id, "ConnectionLost")
        # Same names again, now with every right: the old credentials stay refused.
        for name, trust in (("Ops", _trust()), ("OpsNode", json.dumps(SSM_TRUST))):
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)
            iam.attach_role_policy(RoleName=name, PolicyArn=ADMIN)
        for key in (session, node_key):
            with pytest.raises(ClientError) as exc:
                broker.client("sts", *key).get_caller_identity()
            assert _error(exc) == (
                "InvalidClientTokenId",
                "The security token included in the request is invalid.",
            )
            with pytest.raises(ClientError) as exc:
                broker.client("ssm", *key).describe_sessions(State="Active")
            assert _error(exc)[0] == "UnrecognizedClientException"
        assert not wait_ping(broker, ops_node.instance_id, "Online", 1)
        # The activation passed the deleted role: it registers no more nodes.
        with pytest.raises(urllib.error.HTTPError) as refused:
            _register(broker, activation)
        assert json.loads(refused.value.read())["__type"] == "InvalidActivation"
    finally:
        ops_node.stop()
    # A new session of the new role works, under the new role's id.
    fresh = _session(broker, assumer, "Ops", name="ops-two")
    new_id = iam.get_role(RoleName="Ops")["Role"]["RoleId"]
    assert new_id != old_id
    assert broker.client("sts", *fresh).get_caller_identity()["UserId"] == f"{new_id}:ops-two"


# -- item 5: role chaining ---------------------------------------------------------------------


def test_role_chaining_is_limited_to_one_hour(broker: Broker, assumer: tuple[str, str]) -> None:
    iam = broker.client("iam")
    iam.create_role(RoleName="Hop", AssumeRolePolicyDocument=_trust())
    iam.put_role_policy(
        RoleName="Hop", PolicyName="p", PolicyDocument=json.dumps(_allow("sts:AssumeRole"))
    )
    iam.create_role(RoleName="Far", AssumeRolePolicyDocument=_trust(), MaxSessionDuration=43200)
    # Straight from a user, the role's own maximum applies.
    _session(broker, assumer, "Far", DurationSeconds=7200)
    hop = _session(broker, assumer, "Hop")
    with pytest.raises(ClientError) as exc:
        _session(broker, hop, "Far", DurationSeconds=3601)
    assert _error(exc) == (
        "ValidationError",
        "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by "
        "role chaining.",
    )
    _session(broker, hop, "Far", DurationSeconds=3600)


# -- item 13: a deleted session policy allows nothing ------------------------------------------


def test_deleted_managed_session_policy_allows_nothing(
    broker: Broker, assumer: tuple[str, str]
) -> None:
    iam = broker.client("iam")
    iam.create_role(RoleName="Scoped", AssumeRolePolicyDocument=_trust())
    iam.put_role_policy(
        RoleName="Scoped",
        PolicyName="p",
        PolicyDocument=json.dumps(
            _allow("ssm:DescribeSessions", "ssm:DescribeInstanceInformation")
        ),
    )
    arn = iam.create_policy(
        PolicyName="OnlySessions", PolicyDocument=json.dumps(_allow("ssm:DescribeSessions"))
    )["Policy"]["Arn"]
    ssm = broker.client("ssm", *_session(broker, assumer, "Scoped", PolicyArns=[{"arn": arn}]))
    ssm.describe_sessions(State="Active")
    with pytest.raises(ClientError):
        ssm.describe_instance_information()
    iam.delete_policy(PolicyArn=arn)
    for call in (lambda: ssm.describe_sessions(State="Active"), ssm.describe_instance_information):
        with pytest.raises(ClientError) as exc:
            call()
        code, message = _error(exc)
        assert code == "AccessDeniedException"
        assert "because no session policy allows the ssm:Describe" in message


# -- item 14: the trust policy decides session tags and source identity ------------------------


def test_trust_policy_must_allow_tag_session_and_source_identity(
    broker: Broker, assumer: tuple[str, str]
) -> None:
    iam = broker.client("iam")
    iam.create_role(
        RoleName="NoTags",
        AssumeRolePolicyDocument=_trust(
            "sts:AssumeRole", "sts:SetSourceIdentity", deny="sts:TagSession"
        ),
        Tags=[{"Key": "SSMSessionRunAs", "Value": "ops"}],
    )
    iam.create_role(RoleName="Plain", AssumeRolePolicyDocument=_trust("sts:AssumeRole"))
    role = f"arn:aws:iam::{ACCOUNT}:role/NoTags"
    runas = [{"Key": "SSMSessionRunAs", "Value": "daemon"}]
    # An explicit deny of sts:TagSession in the trust policy holds.
    with pytest.raises(ClientError) as exc:
        _session(broker, assumer, "NoTags", Tags=runas)
    assert _error(exc) == (
        "AccessDenied",
        f"User: arn:aws:iam::{ACCOUNT}:user/assumer is not authorized to perform: "
        f"sts:TagSession on resource: {role}",
    )
    with pytest.raises(ClientError) as exc:
        _session(broker, assumer, "NoTags", TransitiveTagKeys=["SSMSessionRunAs"])
    assert _error(exc)[0] == "AccessDenied"
    # A trust policy that does not allow them refuses tags and a source identity.
    with pytest.raises(ClientError) as exc:
        _session(broker, assumer, "Plain", Tags=runas)
    assert "sts:TagSession" in _error(exc)[1]
    with pytest.raises(ClientError) as exc:
        _session(broker, assumer, "Plain", SourceIdentity="alice")
    assert _error(exc)[1].endswith(
        f"sts:SetSourceIdentity on resource: arn:aws:iam::{ACCOUNT}:role/Plain"
    )
    # Allowed where the trust policy allows it; plain AssumeRole still works.
    out = broker.client("sts", *assumer).assume_role(
        RoleArn=role, RoleSessionName="who", SourceIdentity="alice"
    )
    assert out["SourceIdentity"] == "alice"
    _session(broker, assumer, "Plain")


def test_upgrade_binds_earlier_role_credentials_to_their_role(tmp_path: Path) -> None:
    """Credentials issued before role ids were recorded keep working after the upgrade, bound
    to the role that had their role's name then (schema step 5)."""
    store = Store(f"sqlite:///{tmp_path / 'h.db'}")
    now = datetime.now(UTC)
    store.insert(
        t.iam_entities,
        {
            "kind": "role",
            "name": "Old",
            "entity_id": "AROAOLDROLE000000001",
            "arn": f"arn:aws:iam::{ACCOUNT}:role/Old",
            "path": "/",
            "created": now,
            "data": {"trust": "{}"},
        },
    )
    for akid, owner, role in (("ASIAOLD1", "session", "Old"), ("AKIANODE1", "node", "Gone")):
        store.insert(
            t.access_keys,
            {
                "access_key_id": akid,
                "owner_kind": owner,
                "owner_name": "x",
                "secret": "sealed",
                "status": "Active",
                "created": now,
                "expires": None,
                "data": {"role_name": role, "session_name": "x"},
            },
        )
    with store.transaction() as c:
        c.execute(text("UPDATE hw_meta SET value = '4' WHERE key = 'schema_version'"))
    store.close()
    upgraded = Store(f"sqlite:///{tmp_path / 'h.db'}")
    assert upgraded.schema_version >= 5
    session = upgraded.get(t.access_keys, access_key_id="ASIAOLD1")
    assert session is not None and session["data"]["role_id"] == "AROAOLDROLE000000001"
    node = upgraded.get(t.access_keys, access_key_id="AKIANODE1")
    assert node is not None and node["data"]["role_id"] is None  # its role is gone: refused
    upgraded.close()
