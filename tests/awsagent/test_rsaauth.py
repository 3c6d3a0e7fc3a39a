"""The RSA-SigV4 verifier against requests signed by AWS's own agent.

``tests/data/aws_agent_rsa_vectors.json`` was produced by a small Go program built inside
amazon-ssm-agent 3.3.0.0's source tree with its vendored modules: it creates key pairs with the
agent's ``agent/managedInstances/auth.CreateKeypair``, builds RequestManagedInstanceRoleToken
and UpdateManagedInstancePublicKey requests with the agent's vendored aws-sdk-go SSM client,
signs them with the agent's ``agent/ssm/rsaauth.SignRsa`` handler at a fixed time, and prints
each request (method, path, headers, body) with the public key (and an unrelated key). Only the
vectors are committed; the program and the agent are not.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hatchway.server.front import rsaauth
from hatchway.server.front.sigv4 import AuthError, IncomingRequest

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent.parent / "data" / "aws_agent_rsa_vectors.json").read_text()
)["vectors"]


def _request(v: dict[str, Any]) -> IncomingRequest:
    return IncomingRequest(
        v["method"], v["path"], v["query"], dict(v["headers"]), v["body"].encode()
    )


def _signed_at(v: dict[str, Any]) -> datetime:
    return datetime.strptime(v["headers"]["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def _verify(
    v: dict[str, Any],
    req: IncomingRequest | None = None,
    keys: list[str] | None = None,
    now: datetime | None = None,
) -> rsaauth.RsaSigned:
    return rsaauth.verify(
        req or _request(v),
        lambda iid: keys if keys is not None else [v["public_key"]],
        now or _signed_at(v) + timedelta(seconds=30),
        region=v["region"],
    )


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_agent_signature_verifies(v: dict[str, Any]) -> None:
    signed = _verify(v)
    assert signed.instance_id == v["headers"]["Authorization"].split("Credential=")[1].split("/")[0]
    assert signed.key_index == 0


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_previous_key_is_accepted_in_second_place(v: dict[str, Any]) -> None:
    assert _verify(v, keys=[v["other_public_key"], v["public_key"]]).key_index == 1


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_another_key_is_refused(v: dict[str, Any]) -> None:
    with pytest.raises(AuthError) as err:
        _verify(v, keys=[v["other_public_key"]])
    assert err.value.kind == "signature"


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"] for v in VECTORS])
def test_tampering_is_refused(v: dict[str, Any]) -> None:
    req = _request(v)
    cases = [
        replace(req, body=req.body.replace(b"}", b" }")),
        replace(
            req, headers={**req.headers, "X-Amz-Target": "AmazonSSM.DeregisterManagedInstance"}
        ),
        replace(req, headers={**req.headers, "Host": "evil.example"}),
        replace(req, path="/other"),
    ]
    for bad in cases:
        with pytest.raises(AuthError) as err:
            _verify(v, bad)
        assert err.value.kind == "signature"


def test_unknown_node_old_request_and_wrong_region() -> None:
    v = VECTORS[0]
    with pytest.raises(AuthError) as err:
        _verify(v, keys=[])
    assert err.value.kind == "unknown_key"
    with pytest.raises(AuthError) as err:
        _verify(v, now=_signed_at(v) + timedelta(minutes=6))
    assert err.value.kind == "expired"
    with pytest.raises(AuthError) as err:
        rsaauth.verify(_request(v), lambda _: [v["public_key"]], _signed_at(v), region="us-west-2")
    assert "valid region" in err.value.message
    headers = {k: val for k, val in v["headers"].items() if k != "Authorization"}
    with pytest.raises(AuthError) as err:
        _verify(v, replace(_request(v), headers=headers))
    assert err.value.kind == "missing"


def test_public_keys_are_checked() -> None:
    assert rsaauth.load_public_key(VECTORS[0]["public_key"]).key_size == 2048
    for bad in ("", "not base64!", base64.b64encode(b"\x30\x03\x02\x01\x01").decode()):
        with pytest.raises(rsaauth.PublicKeyError):
            rsaauth.load_public_key(bad)
