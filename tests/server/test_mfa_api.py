"""Virtual MFA devices and STS GetSessionToken through boto3 and the aws CLI against a running
broker: TOTP codes per RFC 6238 (computed here from the seed the broker returned), the MFA
condition keys in policies, and AWS's limits on GetSessionToken credentials (issue 15,
item 12)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from harness import ACCOUNT, Broker, start_broker, stop_broker, user_with_policy

MFA_ONLY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["iam:*", "ssm:DescribeSessions"], "Resource": "*"},
        {
            "Effect": "Deny",
            "Action": "ssm:DescribeSessions",
            "Resource": "*",
            "Condition": {"Bool": {"aws:MultiFactorAuthPresent": "false"}},
        },
        {
            "Effect": "Deny",
            # Only requests carrying an MFA age (seconds since MFA) below a day match.
            "Action": "iam:ListGroups",
            "Resource": "*",
            "Condition": {"NumericLessThan": {"aws:MultiFactorAuthAge": "86400"}},
        },
    ],
}


def _code(seed32: str, step: int) -> str:
    """RFC 6238 TOTP (HMAC-SHA-1, 6 digits) for ``step``, written from the RFC independently of
    the broker's implementation."""
    key = base64.b32decode(seed32)
    mac = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    o = mac[19] & 15
    return f"{(struct.unpack('>I', mac[o : o + 4])[0] & 0x7FFFFFFF) % 1_000_000:06d}"


def _step() -> int:
    return int(time.time()) // 30


def test_totp_matches_rfc_6238_vectors() -> None:
    """The broker's TOTP against RFC 6238 appendix B (SHA-1 seed, the 8 digits truncated to
    the 6 AWS uses), and this file's helper against the broker's."""
    from hatchway.server.ops.iam.mfa import totp

    seed = b"12345678901234567890"
    for when, eight in ((59, "94287082"), (1111111109, "07081804"), (2000000000, "69279037")):
        assert totp(seed, when // 30) == eight[-6:]
    seed32 = base64.b32encode(seed).decode()
    assert _code(seed32, 41152263) == totp(seed, 41152263)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("mfa") / "data")
    yield b
    stop_broker(b)


@pytest.fixture(scope="module")
def alice(broker: Broker) -> tuple[str, str]:
    return user_with_policy(broker, "alice", MFA_ONLY)


def _err(fn: Any) -> tuple[str, str, int]:
    with pytest.raises(ClientError) as exc:
        fn()
    e = exc.value.response
    return e["Error"]["Code"], e["Error"]["Message"], e["ResponseMetadata"]["HTTPStatusCode"]


@pytest.fixture(scope="module")
def device(broker: Broker, alice: tuple[str, str]) -> tuple[str, str]:
    """alice's enabled virtual device: (serial, Base32 seed)."""
    iam = broker.client("iam")
    out = iam.create_virtual_mfa_device(VirtualMFADeviceName="alice-phone")["VirtualMFADevice"]
    serial = out["SerialNumber"]
    assert serial == f"arn:aws:iam::{ACCOUNT}:mfa/alice-phone"
    seed = out["Base32StringSeed"].decode()
    assert len(seed) == 64 and base64.b32decode(seed)
    assert out["QRCodePNG"].startswith(b"\x89PNG\r\n\x1a\n")
    # A wrong pair of codes is refused and enables nothing.
    code, _, status = _err(
        lambda: iam.enable_mfa_device(
            UserName="alice",
            SerialNumber=serial,
            AuthenticationCode1="000000",
            AuthenticationCode2="000001",
        )
    )
    assert (code, status) == ("InvalidAuthenticationCode", 403)
    assert iam.list_mfa_devices(UserName="alice")["MFADevices"] == []
    step = _step()
    # Two valid codes that are not of consecutive steps: refused too.
    code, _, _ = _err(
        lambda: iam.enable_mfa_device(
            UserName="alice",
            SerialNumber=serial,
            AuthenticationCode1=_code(seed, step - 1),
            AuthenticationCode2=_code(seed, step + 1),
        )
    )
    assert code == "InvalidAuthenticationCode"
    assert iam.list_mfa_devices(UserName="alice")["MFADevices"] == []
    step = _step()
    iam.enable_mfa_device(
        UserName="alice",
        SerialNumber=serial,
        AuthenticationCode1=_code(seed, step - 1),
        AuthenticationCode2=_code(seed, step),
    )
    return serial, seed


def test_devices_are_listed_and_the_seed_is_sealed_in_the_store(
    broker: Broker, device: tuple[str, str]
) -> None:
    serial, seed = device
    iam = broker.client("iam")
    listed = iam.list_mfa_devices(UserName="alice")["MFADevices"]
    assert [d["SerialNumber"] for d in listed] == [serial]
    assert listed[0]["UserName"] == "alice"
    assigned = iam.list_virtual_mfa_devices(AssignmentStatus="Assigned")["VirtualMFADevices"]
    assert [d["SerialNumber"] for d in assigned] == [serial]
    assert assigned[0]["User"]["UserName"] == "alice"
    assert "Base32StringSeed" not in assigned[0]
    spare = iam.create_virtual_mfa_device(VirtualMFADeviceName="spare")["VirtualMFADevice"]
    free = broker.aws_json("iam", "list-virtual-mfa-devices", "--assignment-status", "Unassigned")
    assert [d["SerialNumber"] for d in free["VirtualMFADevices"]] == [spare["SerialNumber"]]
    code, _, _ = _err(lambda: iam.create_virtual_mfa_device(VirtualMFADeviceName="spare"))
    assert code == "EntityAlreadyExists"
    # The database holds no seed in clear (sealed under master.key like secret keys).
    db = sqlite3.connect(broker.data_dir / "hatchway.db")
    try:
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    assert seed not in dump and spare["Base32StringSeed"].decode() not in dump
    summary = iam.get_account_summary()["SummaryMap"]
    assert (summary["MFADevices"], summary["MFADevicesInUse"]) == (2, 1)
    iam.delete_virtual_mfa_device(SerialNumber=spare["SerialNumber"])
    code, _, _ = _err(lambda: iam.delete_virtual_mfa_device(SerialNumber=serial))
    assert code == "DeleteConflict"  # in use: deactivate first


def test_session_token_without_mfa_is_limited_as_aws_limits_it(
    broker: Broker, alice: tuple[str, str], device: tuple[str, str]
) -> None:
    sts = broker.client("sts", *alice)
    creds = sts.get_session_token()["Credentials"]
    assert creds["AccessKeyId"].startswith("ASIA")
    lifetime = creds["Expiration"].timestamp() - time.time()
    assert 43200 - 600 < lifetime <= 43200 + 60  # AWS's default, 12 hours
    tmp = (creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])
    who = broker.client("sts", *tmp).get_caller_identity()
    assert who["Arn"] == f"arn:aws:iam::{ACCOUNT}:user/alice"
    # No IAM call without MFA: IAM answers as for an invalid token.
    code, msg, status = _err(lambda: broker.client("iam", *tmp).list_users())
    assert (code, status) == ("InvalidClientTokenId", 403)
    assert msg.startswith("The security token included in the request is invalid")
    # On STS, no GetSessionToken with session credentials.
    code, msg, status = _err(lambda: broker.client("sts", *tmp).get_session_token())
    assert (code, msg) == ("AccessDenied", "Cannot call GetSessionToken with session credentials")
    # aws:MultiFactorAuthPresent is "false" in temporary credentials without MFA: denied.
    code, _, _ = _err(lambda: broker.client("ssm", *tmp).describe_sessions(State="Active"))
    assert code == "AccessDeniedException"
    # Long-term keys have no such key at all: Bool on an absent key does not match.
    broker.client("ssm", *alice).describe_sessions(State="Active")


def test_session_token_with_mfa_carries_mfa_context(
    broker: Broker, alice: tuple[str, str], device: tuple[str, str]
) -> None:
    serial, seed = device
    # A wrong code: AWS's AccessDenied text.
    code, msg, status = _err(
        lambda: broker.client("sts", *alice).get_session_token(
            SerialNumber=serial,
            TokenCode="123456" if _code(seed, _step()) != "123456" else "654321",
        )
    )
    assert (code, status) == ("AccessDenied", 403)
    assert msg.startswith("MultiFactorAuthentication failed, unable to validate MFA code.")
    # A fresh code through the real aws CLI (the documented procedure).
    step = _step() + 1  # the next step's code: in the window and not used by enable
    out = broker.aws_json(
        "sts",
        "get-session-token",
        "--serial-number",
        serial,
        "--token-code",
        _code(seed, step),
        "--duration-seconds",
        "900",
        key=alice[0],
        secret=alice[1],
    )["Credentials"]
    tmp = (out["AccessKeyId"], out["SecretAccessKey"], out["SessionToken"])
    broker.client("ssm", *tmp).describe_sessions(State="Active")  # MFA present: allowed
    users = broker.client("iam", *tmp).list_users()["Users"]  # IAM calls allowed with MFA
    assert "alice" in [u["UserName"] for u in users]
    # aws:MultiFactorAuthAge is present, numeric and small with MFA; absent for long-term keys.
    code, _, _ = _err(lambda: broker.client("iam", *tmp).list_groups())
    assert code == "AccessDenied"
    broker.client("iam", *alice).list_groups()
    # The same code again is refused (each code once).
    code, _, _ = _err(
        lambda: broker.client("sts", *alice).get_session_token(
            SerialNumber=serial, TokenCode=_code(seed, step)
        )
    )
    assert code == "AccessDenied"
    # The audit records the calls without the codes.
    events = [json.loads(x) for x in (broker.data_dir / "audit.jsonl").read_text().splitlines()]
    gst = [e for e in events if e["eventName"] == "GetSessionToken" and e["requestParameters"]]
    assert gst and all(e["requestParameters"].get("TokenCode") == "***" for e in gst)
    enable = [e for e in events if e["eventName"] == "EnableMFADevice"]
    assert enable and all(e["requestParameters"]["AuthenticationCode2"] == "***" for e in enable)
    # A device that is not the caller's fails MFA the same way.
    code, _, _ = _err(
        lambda: broker.client("sts", *alice).get_session_token(
            SerialNumber=f"arn:aws:iam::{ACCOUNT}:mfa/nobody", TokenCode="123456"
        )
    )
    assert code == "AccessDenied"


def test_session_token_durations_follow_aws(broker: Broker, alice: tuple[str, str]) -> None:
    import boto3
    from botocore.config import Config
    from harness import REGION

    lax = boto3.client(
        "sts",
        endpoint_url=broker.url,
        region_name=REGION,
        aws_access_key_id=alice[0],
        aws_secret_access_key=alice[1],
        config=Config(parameter_validation=False, retries={"max_attempts": 1}),
    )
    for bad in (899, 129601):
        code, _, status = _err(lambda b=bad: lax.get_session_token(DurationSeconds=b))
        assert (code, status) == ("ValidationError", 400)
    longest = lax.get_session_token(DurationSeconds=129600)["Credentials"]["Expiration"]
    assert 129600 - 600 < longest.timestamp() - time.time() <= 129600 + 60
    # A role session cannot call it either.
    code, msg, _ = _err(lambda: broker.client("sts", *_role_session(broker)).get_session_token())
    assert (code, msg) == ("AccessDenied", "Cannot call GetSessionToken with session credentials")


def _role_session(broker: Broker) -> tuple[str, str, str]:
    iam = broker.client("iam")
    iam.create_role(
        RoleName="gst-role",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )
    c = broker.client("sts").assume_role(
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/gst-role", RoleSessionName="gst-session"
    )["Credentials"]
    return c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"]


def test_deactivate_then_delete(broker: Broker, alice: tuple[str, str], device: Any) -> None:
    serial, _ = device
    iam = broker.client("iam")
    # alice cannot be deleted while the device is hers (DeleteUser checks keys first: use a
    # user with none).
    iam.create_user(UserName="bob")
    bob_dev = iam.create_virtual_mfa_device(VirtualMFADeviceName="bob-phone")["VirtualMFADevice"]
    step = _step()
    bob_seed = bob_dev["Base32StringSeed"].decode()
    iam.enable_mfa_device(
        UserName="bob",
        SerialNumber=bob_dev["SerialNumber"],
        AuthenticationCode1=_code(bob_seed, step),
        AuthenticationCode2=_code(bob_seed, step + 1),
    )
    code, msg, _ = _err(lambda: iam.delete_user(UserName="bob"))
    assert (code, msg) == ("DeleteConflict", "Cannot delete entity, must delete MFA device first.")
    iam.deactivate_mfa_device(UserName="bob", SerialNumber=bob_dev["SerialNumber"])
    iam.delete_user(UserName="bob")
    iam.delete_virtual_mfa_device(SerialNumber=bob_dev["SerialNumber"])
    iam.deactivate_mfa_device(UserName="alice", SerialNumber=serial)
    assert iam.list_mfa_devices(UserName="alice")["MFADevices"] == []
    iam.delete_virtual_mfa_device(SerialNumber=serial)
    code, _, status = _err(lambda: iam.delete_virtual_mfa_device(SerialNumber=serial))
    assert (code, status) == ("NoSuchEntity", 404)
    assert json.dumps(iam.list_virtual_mfa_devices()["VirtualMFADevices"]) == "[]"


def test_assume_role_with_mfa(broker: Broker) -> None:
    """AssumeRole's SerialNumber/TokenCode (what the aws CLI sends for a profile with
    ``mfa_serial``): a trust policy requiring MFA, and the role session carrying it."""
    iam = broker.client("iam")
    carol = user_with_policy(
        broker,
        "carol",
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}],
        },
    )
    dev = iam.create_virtual_mfa_device(VirtualMFADeviceName="carol-phone")["VirtualMFADevice"]
    serial, seed = dev["SerialNumber"], dev["Base32StringSeed"].decode()
    step = _step()
    iam.enable_mfa_device(
        UserName="carol",
        SerialNumber=serial,
        AuthenticationCode1=_code(seed, step - 1),
        AuthenticationCode2=_code(seed, step),
    )
    iam.create_role(
        RoleName="needs-mfa",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                        "Action": "sts:AssumeRole",
                        "Condition": {"Bool": {"aws:MultiFactorAuthPresent": "true"}},
                    }
                ],
            }
        ),
    )
    iam.put_role_policy(
        RoleName="needs-mfa",
        PolicyName="p",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "ssm:DescribeSessions",
                        "Resource": "*",
                        "Condition": {"Bool": {"aws:MultiFactorAuthPresent": "true"}},
                    }
                ],
            }
        ),
    )
    arn = f"arn:aws:iam::{ACCOUNT}:role/needs-mfa"
    sts = broker.client("sts", *carol)
    code, _, _ = _err(lambda: sts.assume_role(RoleArn=arn, RoleSessionName="no-mfa"))
    assert code == "AccessDenied"
    wrong = "123456" if _code(seed, _step() + 1) != "123456" else "654321"
    code, msg, _ = _err(
        lambda: sts.assume_role(
            RoleArn=arn, RoleSessionName="bad", SerialNumber=serial, TokenCode=wrong
        )
    )
    assert (code, msg) == (
        "AccessDenied",
        "MultiFactorAuthentication failed with invalid MFA one time pass code.",
    )
    out = broker.aws_json(
        "sts",
        "assume-role",
        "--role-arn",
        arn,
        "--role-session-name",
        "with-mfa",
        "--serial-number",
        serial,
        "--token-code",
        _code(seed, _step() + 1),
        key=carol[0],
        secret=carol[1],
    )["Credentials"]
    tmp = (out["AccessKeyId"], out["SecretAccessKey"], out["SessionToken"])
    broker.client("ssm", *tmp).describe_sessions(State="Active")  # the session has MFA
