"""The broker's built-in KMS through boto3 and the ``aws`` CLI (docs/kms.md).

Keys, aliases, Encrypt/Decrypt/GenerateDataKey with encryption contexts, key states, AWS's
error codes and texts, IAM policies and key policies, the node role's grant, and what is at
rest: key material sealed under master.key, the blob format as documented.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import stat
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from harness import (
    ACCOUNT,
    ADMIN_KEY,
    ADMIN_SECRET,
    REGION,
    Broker,
    allow_instance_id,
    user_with_policy,
)

KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/"
ALIAS_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/"


def error(fn: Callable[..., Any], **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as exc:
        fn(**kwargs)
    err = exc.value.response["Error"]
    return err["Code"], err.get("Message", "")


@pytest.fixture(scope="module")
def kms(broker: Broker) -> Any:
    return broker.client("kms")


@pytest.fixture
def key(kms: Any) -> dict[str, Any]:
    meta: dict[str, Any] = kms.create_key(Description="test key")["KeyMetadata"]
    return meta


def denied(user: str, action: str, resource: str, why: str = "identity-based policy") -> str:
    return (
        f"User: arn:aws:iam::{ACCOUNT}:user/{user} is not authorized to perform: {action} "
        f"on resource: {resource} because no {why} allows the {action} action"
    )


# -- keys and aliases ---------------------------------------------------------------------


def test_create_and_describe_a_key(kms: Any, key: dict[str, Any]) -> None:
    key_id = key["KeyId"]
    assert str(uuid.UUID(key_id)) == key_id
    assert key["Arn"] == KEY_ARN + key_id
    assert (key["KeyState"], key["Enabled"], key["KeySpec"], key["KeyUsage"]) == (
        "Enabled",
        True,
        "SYMMETRIC_DEFAULT",
        "ENCRYPT_DECRYPT",
    )
    assert key["AWSAccountId"] == ACCOUNT and key["Description"] == "test key"
    kms.create_alias(AliasName="alias/describe-me", TargetKeyId=key_id)
    for name in (key_id, key["Arn"], "alias/describe-me", ALIAS_ARN + "describe-me"):
        assert kms.describe_key(KeyId=name)["KeyMetadata"]["Arn"] == key["Arn"], name
    listed = [
        k["KeyId"] for k in kms.get_paginator("list_keys").paginate().build_full_result()["Keys"]
    ]
    assert key_id in listed


def test_unknown_keys_get_aws_texts(kms: Any) -> None:
    missing = "12345678-1234-1234-1234-123456789012"
    assert error(kms.describe_key, KeyId=missing) == (
        "NotFoundException",
        f"Key '{KEY_ARN}{missing}' does not exist",
    )
    assert error(kms.describe_key, KeyId="alias/none-such") == (
        "NotFoundException",
        f"Alias {ALIAS_ARN}none-such is not found.",
    )
    assert error(kms.describe_key, KeyId="not-a-key") == (
        "NotFoundException",
        "Invalid keyId not-a-key",
    )
    other_region = f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/{missing}"
    assert error(kms.encrypt, KeyId=other_region, Plaintext=b"x")[0] == "NotFoundException"


def test_list_keys_pages(kms: Any) -> None:
    for _ in range(3):
        kms.create_key()
    first = kms.list_keys(Limit=2)
    assert len(first["Keys"]) == 2 and first["Truncated"] is True
    second = kms.list_keys(Limit=2, Marker=first["NextMarker"])
    assert {k["KeyId"] for k in first["Keys"]}.isdisjoint(k["KeyId"] for k in second["Keys"])
    assert error(kms.list_keys, Marker="bm9wZQ==")[0] == "InvalidMarkerException"


def test_aliases(kms: Any, key: dict[str, Any]) -> None:
    other = kms.create_key()["KeyMetadata"]
    kms.create_alias(AliasName="alias/app", TargetKeyId=key["Arn"])
    assert error(kms.create_alias, AliasName="alias/app", TargetKeyId=other["KeyId"]) == (
        "AlreadyExistsException",
        f"An alias with the name {ALIAS_ARN}app already exists",
    )
    listed = kms.list_aliases(KeyId=key["KeyId"])["Aliases"]
    assert [(a["AliasName"], a["AliasArn"], a["TargetKeyId"]) for a in listed] == [
        ("alias/app", ALIAS_ARN + "app", key["KeyId"])
    ]
    kms.update_alias(AliasName="alias/app", TargetKeyId=other["KeyId"])
    assert kms.describe_key(KeyId="alias/app")["KeyMetadata"]["KeyId"] == other["KeyId"]
    assert kms.list_aliases(KeyId=key["KeyId"])["Aliases"] == []
    kms.delete_alias(AliasName="alias/app")
    assert error(kms.describe_key, KeyId="alias/app")[0] == "NotFoundException"
    assert error(kms.delete_alias, AliasName="alias/app") == (
        "NotFoundException",
        f"Alias {ALIAS_ARN}app is not found.",
    )


@pytest.mark.parametrize(
    ("name", "target", "code"),
    [
        ("app", None, "InvalidAliasNameException"),
        ("alias/aws/ssm", None, "InvalidAliasNameException"),
        ("alias/bad name", None, "ValidationException"),
        ("alias/ok", "12345678-1234-1234-1234-123456789012", "NotFoundException"),
        ("alias/ok", "alias/describe-me", "NotFoundException"),
    ],
)
def test_bad_aliases(
    kms: Any, key: dict[str, Any], name: str, target: str | None, code: str
) -> None:
    assert error(kms.create_alias, AliasName=name, TargetKeyId=target or key["KeyId"])[0] == code


# -- cryptography -------------------------------------------------------------------------


def test_encrypt_and_decrypt_with_a_context(kms: Any, key: dict[str, Any]) -> None:
    kms.create_alias(AliasName="alias/ctx", TargetKeyId=key["KeyId"])
    context = {"purpose": "test", "aws:ssm:SessionId": "alice-0123456789abcdef0"}
    out = kms.encrypt(KeyId="alias/ctx", Plaintext=b"attack at dawn", EncryptionContext=context)
    assert out["KeyId"] == key["Arn"] and out["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    blob = out["CiphertextBlob"]
    assert b"attack at dawn" not in blob
    # No KeyId needed: the blob names its key. The context must match exactly.
    back = kms.decrypt(CiphertextBlob=blob, EncryptionContext=dict(reversed(context.items())))
    assert back["Plaintext"] == b"attack at dawn" and back["KeyId"] == key["Arn"]
    for name in (key["KeyId"], key["Arn"], "alias/ctx", ALIAS_ARN + "ctx"):
        assert (
            kms.decrypt(CiphertextBlob=blob, EncryptionContext=context, KeyId=name)["Plaintext"]
            == b"attack at dawn"
        )
    for wrong in ({}, {"purpose": "test"}, {**context, "purpose": "other"}, {**context, "x": "y"}):
        assert error(kms.decrypt, CiphertextBlob=blob, EncryptionContext=wrong) == (
            "InvalidCiphertextException",
            "",
        )


def test_decrypt_refuses_other_keys_and_altered_blobs(kms: Any, key: dict[str, Any]) -> None:
    other = kms.create_key()["KeyMetadata"]
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"payload")["CiphertextBlob"]
    assert error(kms.decrypt, CiphertextBlob=blob, KeyId=other["KeyId"]) == (
        "IncorrectKeyException",
        "The key ID in the request does not identify a CMK that can perform this operation.",
    )
    for i in (0, 5, 20, len(blob) - 1):
        altered = bytearray(blob)
        altered[i] ^= 1
        assert error(kms.decrypt, CiphertextBlob=bytes(altered))[0] == "InvalidCiphertextException"
    # The other key's id spliced into the blob: it names a real key, and still fails.
    spliced = blob[:4] + uuid.UUID(other["KeyId"]).bytes + blob[20:]
    assert error(kms.decrypt, CiphertextBlob=spliced)[0] == "InvalidCiphertextException"
    for garbage in (b"x", b"\x00" * 64, b"HWK\x01" + b"\x00" * 60):
        assert error(kms.decrypt, CiphertextBlob=garbage)[0] == "InvalidCiphertextException"


def test_generate_data_key(kms: Any, key: dict[str, Any]) -> None:
    context = {"aws:ssm:SessionId": "s-1", "aws:ssm:TargetId": "mi-0123456789abcdef0"}
    out = kms.generate_data_key(KeyId=key["KeyId"], NumberOfBytes=64, EncryptionContext=context)
    assert len(out["Plaintext"]) == 64 and out["KeyId"] == key["Arn"]
    back = kms.decrypt(CiphertextBlob=out["CiphertextBlob"], EncryptionContext=context)
    assert back["Plaintext"] == out["Plaintext"]
    assert len(kms.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_128")["Plaintext"]) == 16
    bare = kms.generate_data_key_without_plaintext(KeyId=key["Arn"], KeySpec="AES_256")
    assert "Plaintext" not in bare
    assert len(kms.decrypt(CiphertextBlob=bare["CiphertextBlob"])["Plaintext"]) == 32
    message = "Please specify either number of bytes or key spec."
    assert error(kms.generate_data_key, KeyId=key["KeyId"]) == ("ValidationException", message)
    assert error(
        kms.generate_data_key, KeyId=key["KeyId"], KeySpec="AES_256", NumberOfBytes=32
    ) == ("ValidationException", message)


def test_model_constraints_get_aws_validation_texts(broker: Broker, key: dict[str, Any]) -> None:
    client = boto3.client(
        "kms",
        endpoint_url=broker.url,
        region_name=REGION,
        aws_access_key_id=ADMIN_KEY,
        aws_secret_access_key=ADMIN_SECRET,
        config=Config(parameter_validation=False, retries={"max_attempts": 1}),
    )
    assert error(client.generate_data_key, KeyId=key["KeyId"], NumberOfBytes=2000) == (
        "ValidationException",
        "1 validation error detected: Value '2000' at 'numberOfBytes' failed to satisfy "
        "constraint: Member must have value less than or equal to 1024",
    )
    code, message = error(client.encrypt, KeyId=key["KeyId"], Plaintext=b"")
    assert code == "ValidationException" and "at 'plaintext'" in message


def test_disabled_and_deleted_keys(kms: Any, key: dict[str, Any]) -> None:
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"keep")["CiphertextBlob"]
    kms.disable_key(KeyId=key["KeyId"])
    assert kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"] == "Disabled"
    disabled = ("DisabledException", f"{key['Arn']} is disabled.")
    assert error(kms.encrypt, KeyId=key["KeyId"], Plaintext=b"x") == disabled
    assert error(kms.decrypt, CiphertextBlob=blob) == disabled
    assert error(kms.generate_data_key, KeyId=key["Arn"], NumberOfBytes=64) == disabled
    kms.enable_key(KeyId=key["KeyId"])
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"keep"
    assert error(kms.schedule_key_deletion, KeyId=key["KeyId"], PendingWindowInDays=6) == (
        "ValidationException",
        "1 validation error detected: Value '6' at 'pendingWindowInDays' failed to satisfy "
        "constraint: Member must have value greater than or equal to 7",
    )
    scheduled = kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    assert (scheduled["KeyState"], scheduled["PendingWindowInDays"]) == ("PendingDeletion", 7)
    pending = ("KMSInvalidStateException", f"{key['Arn']} is pending deletion.")
    assert error(kms.decrypt, CiphertextBlob=blob) == pending
    assert error(kms.enable_key, KeyId=key["KeyId"]) == pending
    assert error(kms.schedule_key_deletion, KeyId=key["KeyId"]) == pending
    kms.cancel_key_deletion(KeyId=key["KeyId"])
    assert kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"] == "Disabled"
    assert error(kms.cancel_key_deletion, KeyId=key["KeyId"]) == (
        "KMSInvalidStateException",
        f"{key['Arn']} is not pending deletion.",
    )
    # Key-management operations take a key id or ARN, not an alias.
    kms.create_alias(AliasName="alias/manage", TargetKeyId=key["KeyId"])
    assert error(kms.enable_key, KeyId="alias/manage") == (
        "NotFoundException",
        "Invalid keyId alias/manage",
    )


def test_tags_and_description(kms: Any) -> None:
    key = kms.create_key(Tags=[{"TagKey": "team", "TagValue": "ops"}])["KeyMetadata"]
    kms.tag_resource(KeyId=key["KeyId"], Tags=[{"TagKey": "env", "TagValue": "dev"}])
    kms.untag_resource(KeyId=key["KeyId"], TagKeys=["team"])
    assert kms.list_resource_tags(KeyId=key["KeyId"])["Tags"] == [
        {"TagKey": "env", "TagValue": "dev"}
    ]
    kms.update_key_description(KeyId=key["Arn"], Description="now described")
    assert kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["Description"] == "now described"


# -- authorization ------------------------------------------------------------------------


def test_iam_policies_decide_under_the_default_key_policy(
    broker: Broker, kms: Any, key: dict[str, Any]
) -> None:
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "kms:Encrypt", "Resource": key["Arn"]},
            {
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": key["Arn"],
                "Condition": {"StringEquals": {"kms:EncryptionContext:app": "billing"}},
            },
            {
                "Effect": "Allow",
                "Action": "kms:GenerateDataKey",
                "Resource": "*",
                "Condition": {
                    "ForAllValues:StringEquals": {
                        "kms:EncryptionContextKeys": ["aws:ssm:SessionId", "aws:ssm:TargetId"]
                    },
                    "Null": {"kms:EncryptionContextKeys": "false"},
                    "StringEquals": {"kms:CallerAccount": ACCOUNT},
                },
            },
        ],
    }
    user = "kms-limited"
    akid, secret = user_with_policy(broker, user, policy)
    mine = broker.client("kms", akid, secret)
    blob = mine.encrypt(KeyId=key["KeyId"], Plaintext=b"x", EncryptionContext={"app": "billing"})[
        "CiphertextBlob"
    ]
    assert mine.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "billing"})["Plaintext"]
    other = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"y", EncryptionContext={"app": "hr"})
    assert error(
        mine.decrypt, CiphertextBlob=other["CiphertextBlob"], EncryptionContext={"app": "hr"}
    ) == ("AccessDeniedException", denied(user, "kms:Decrypt", key["Arn"]))
    session_ctx = {"aws:ssm:SessionId": "s", "aws:ssm:TargetId": "mi-0123456789abcdef0"}
    assert mine.generate_data_key(KeyId=key["Arn"], NumberOfBytes=64, EncryptionContext=session_ctx)
    assert error(mine.generate_data_key, KeyId=key["Arn"], NumberOfBytes=64) == (
        "AccessDeniedException",
        denied(user, "kms:GenerateDataKey", key["Arn"]),
    )
    assert error(mine.describe_key, KeyId=key["KeyId"]) == (
        "AccessDeniedException",
        denied(user, "kms:DescribeKey", key["Arn"]),
    )
    assert error(mine.create_key)[0] == "AccessDeniedException"


def test_key_policy_naming_a_user_and_locking_others_out(broker: Broker, kms: Any) -> None:
    nothing_of_kms = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sts:GetCallerIdentity", "Resource": "*"}],
    }
    akid, secret = user_with_policy(broker, "kms-by-key-policy", nothing_of_kms)
    named = broker.client("kms", akid, secret)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/kms-by-key-policy"},
                "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"],
                "Resource": "*",
            }
        ],
    }
    text = json.dumps(policy)
    assert error(kms.create_key, Policy=text) == (
        "MalformedPolicyDocumentException",
        "The new key policy will not allow you to update the key policy in the future.",
    )
    key = kms.create_key(Policy=text, BypassPolicyLockoutSafetyCheck=True)["KeyMetadata"]
    # The user has no KMS permission in IAM: the key policy names it, that is enough.
    blob = named.encrypt(KeyId=key["KeyId"], Plaintext=b"z")["CiphertextBlob"]
    assert named.decrypt(CiphertextBlob=blob)["Plaintext"] == b"z"
    # The admin's AdministratorAccess does not help: the key policy leaves the account out.
    assert error(kms.decrypt, CiphertextBlob=blob) == (
        "AccessDeniedException",
        f"User: arn:aws:iam::{ACCOUNT}:user/admin is not authorized to perform: kms:Decrypt "
        f"on resource: {key['Arn']} because no resource-based policy allows the kms:Decrypt "
        "action",
    )
    assert error(kms.get_key_policy, KeyId=key["KeyId"])[0] == "AccessDeniedException"


def test_key_policy_explicit_deny_and_policy_round_trip(kms: Any) -> None:
    key = kms.create_key()["KeyMetadata"]
    default = json.loads(kms.get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"])
    assert default["Statement"][0]["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    assert kms.list_key_policies(KeyId=key["KeyId"])["PolicyNames"] == ["default"]
    deny = {
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Action": "kms:Encrypt",
        "Resource": "*",
    }
    text = json.dumps({**default, "Statement": [*default["Statement"], deny]})
    kms.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=text)
    assert json.loads(kms.get_key_policy(KeyId=key["KeyId"])["Policy"]) == json.loads(text)
    code, message = error(kms.encrypt, KeyId=key["KeyId"], Plaintext=b"x")
    assert code == "AccessDeniedException"
    assert message.endswith("with an explicit deny in a resource-based policy")
    assert (
        error(kms.put_key_policy, KeyId=key["KeyId"], Policy='{"Version": "2012-10-17"}')[0]
        == "MalformedPolicyDocumentException"
    )
    assert error(kms.get_key_policy, KeyId=key["KeyId"], PolicyName="other") == (
        "NotFoundException",
        "No such policy exists",
    )


def _register_node(broker: Broker, instance_id: str) -> tuple[str, str]:
    activation = broker.client("ssm").create_activation(IamRole="SSMServiceRole")
    allow_instance_id(broker, activation["ActivationId"], instance_id)  # the operator's say
    body = json.dumps(
        {
            "ActivationId": activation["ActivationId"],
            "ActivationCode": activation["ActivationCode"],
            "InstanceId": instance_id,
        }
    ).encode()
    req = urllib.request.Request(
        broker.url + "/hatchway/v1/register",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        creds = json.loads(resp.read())
    return creds["AccessKeyId"], creds["SecretAccessKey"]


def test_the_node_role_decrypts_data_keys_of_its_own_sessions_only(
    broker: Broker, kms: Any, key: dict[str, Any]
) -> None:
    node = "i-0aaaabbbbccccdddd"
    akid, secret = _register_node(broker, node)
    as_node = broker.client("kms", akid, secret)
    own = {"aws:ssm:SessionId": "alice-0123", "aws:ssm:TargetId": node}
    blob = kms.generate_data_key(KeyId=key["KeyId"], NumberOfBytes=64, EncryptionContext=own)
    got = as_node.decrypt(CiphertextBlob=blob["CiphertextBlob"], EncryptionContext=own)
    assert got["Plaintext"] == blob["Plaintext"]
    theirs = {"aws:ssm:SessionId": "alice-0123", "aws:ssm:TargetId": "i-0ffffeeeeddddcccc"}
    other = kms.generate_data_key(KeyId=key["KeyId"], NumberOfBytes=64, EncryptionContext=theirs)
    code, message = error(
        as_node.decrypt, CiphertextBlob=other["CiphertextBlob"], EncryptionContext=theirs
    )
    assert code == "AccessDeniedException"
    assert message.startswith(
        f"User: arn:aws:sts::{ACCOUNT}:assumed-role/SSMServiceRole/{node} is not authorized"
    )
    plain = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"not a session key")["CiphertextBlob"]
    assert error(as_node.decrypt, CiphertextBlob=plain)[0] == "AccessDeniedException"
    assert error(as_node.encrypt, KeyId=key["KeyId"], Plaintext=b"x")[0] == "AccessDeniedException"


# -- the wire, the audit log, what is at rest ---------------------------------------------


def _signed_post(broker: Broker, target: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/x-amz-json-1.1"}
    if target is not None:
        headers["X-Amz-Target"] = target
    request = AWSRequest(method="POST", url=broker.url + "/", data=body, headers=headers)
    SigV4Auth(Credentials(ADMIN_KEY, ADMIN_SECRET), "kms", REGION).add_auth(request)
    prepared = urllib.request.Request(
        broker.url + "/", data=body, headers=dict(request.headers.items()), method="POST"
    )
    try:
        with urllib.request.urlopen(prepared, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("target", "body", "code"),
    [
        ("TrentService.NoSuchOperation", b"{}", "UnknownOperationException"),
        ("TrentService.Decrypt", b"{not json", "SerializationException"),
        ("TrentService.Decrypt", b'{"CiphertextBlob": "***"}', "SerializationException"),
        ("TrentService.Decrypt", b"{}", "ValidationException"),
        ("TrentService.Encrypt", b'{"KeyId": 7, "Plaintext": "eA=="}', "SerializationException"),
        (
            "TrentService.GenerateDataKey",
            b'{"KeyId": "", "NumberOfBytes": 1}',
            "ValidationException",
        ),
    ],
)
def test_bad_requests_get_aws_errors(broker: Broker, target: str, body: bytes, code: str) -> None:
    status, payload = _signed_post(broker, target, body)
    assert (status, payload["__type"]) == (400, code)
    assert broker.client("kms").list_keys()["Keys"] is not None  # still serving


def test_audit_records_kms_calls_without_plaintext(broker: Broker, kms: Any) -> None:
    key = kms.create_key()["KeyMetadata"]
    marker = b"audit-must-not-see-this-0x5eed"
    kms.encrypt(KeyId=key["KeyId"], Plaintext=marker)
    lines = (broker.data_dir / "audit.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    encrypts = [e for e in events if e["eventName"] == "Encrypt"]
    assert encrypts and encrypts[-1]["eventSource"] == "kms.amazonaws.com"
    assert encrypts[-1]["authorizations"][0]["action"] == "kms:Encrypt"
    text = "\n".join(lines)
    assert marker.decode() not in text and base64.b64encode(marker).decode() not in text


def test_key_material_is_sealed_and_blobs_follow_the_documented_format(
    broker: Broker, kms: Any
) -> None:
    """Reads the database and master.key directly: the material is sealed, and a blob opens
    with the documented layout (this is an independent reader of docs/kms.md's format)."""
    key = kms.create_key()["KeyMetadata"]
    context = {"b": "2", "a": "1"}
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"by the book", EncryptionContext=context)[
        "CiphertextBlob"
    ]
    master = broker.data_dir / "master.key"
    assert stat.S_IMODE(master.stat().st_mode) == 0o600
    with sqlite3.connect(broker.data_dir / "hatchway.db") as db:
        (sealed,) = db.execute(
            "SELECT material FROM hw_kms_keys WHERE key_id = ?", (key["KeyId"],)
        ).fetchone()
    raw = base64.b64decode(sealed)
    opened = AESGCM(master.read_bytes()).decrypt(raw[:12], raw[12:], key["KeyId"].encode())
    material = base64.b64decode(opened)
    assert len(material) == 32 and material not in raw
    assert blob[:4] == b"HWK\x01" and blob[4:20] == uuid.UUID(key["KeyId"]).bytes
    aad = blob[:20] + b'{"a":"1","b":"2"}'
    assert AESGCM(material).decrypt(blob[20:32], blob[32:], aad) == b"by the book"


def test_the_aws_cli_speaks_to_the_built_in_kms(broker: Broker) -> None:
    created = broker.aws_json("kms", "create-key", "--description", "from the cli")
    key_id = created["KeyMetadata"]["KeyId"]
    broker.aws_json("kms", "create-alias", "--alias-name", "alias/cli", "--target-key-id", key_id)
    described = broker.aws_json("kms", "describe-key", "--key-id", "alias/cli")
    assert described["KeyMetadata"]["Description"] == "from the cli"
    missing = broker.aws("kms", "describe-key", "--key-id", "alias/absent")
    assert missing.returncode == 255  # awscli v1's code for a service error
    assert (
        f"NotFoundException) when calling the DescribeKey operation: Alias {ALIAS_ARN}absent"
        in (missing.stderr)
    )
