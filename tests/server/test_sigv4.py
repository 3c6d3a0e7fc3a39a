"""SigV4 verification against requests signed by botocore itself (and sent by boto3).

Every request is signed at a fixed instant (botocore's clock is pinned) and turned into what an
HTTP server receives: raw path, raw query, headers (with the ``Host`` the HTTP client adds) and
body bytes. ``now`` is always given explicitly; nothing sleeps.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import boto3
import botocore.auth
import pytest
from botocore.auth import S3SigV4QueryAuth, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from hatchway.server.front import sigv4
from hatchway.server.front.sigv4 import (
    AuthError,
    Credential,
    IncomingRequest,
    Verified,
    error_code,
    error_message,
    signed_service_and_region,
    verify,
)

AKID = "AKIAHATCHWAYTEST0001"
SECRET = "hatchway/test/secret+key/0000000000000000"
TEMP_AKID = "ASIAHATCHWAYTEST0002"
TEMP_SECRET = "temporary-secret-0000000000000000000000"
TOKEN = "FwoGZXIvYXdzEHatchwaySessionToken//+=="
EXPIRED_AKID = "ASIAHATCHWAYTEST0003"
SIGNED_AT = datetime(2026, 11, 27, 20, 0, 0, tzinfo=UTC)
ENDPOINT = "http://127.0.0.1:8080"

CREDENTIALS = {
    AKID: Credential(SECRET),
    TEMP_AKID: Credential(TEMP_SECRET, TOKEN),
    EXPIRED_AKID: Credential(TEMP_SECRET, TOKEN, expiration=SIGNED_AT - timedelta(seconds=1)),
}


def lookup(access_key_id: str) -> Credential | None:
    return CREDENTIALS.get(access_key_id)


@contextmanager
def frozen(at: datetime = SIGNED_AT) -> Iterator[None]:
    """Pin botocore's signing clock (``botocore.auth.get_current_datetime``)."""

    def fake(remove_tzinfo: bool = True) -> datetime:
        return at.replace(tzinfo=None) if remove_tzinfo else at

    with mock.patch.object(botocore.auth, "get_current_datetime", fake):
        yield


def received(method: str, url: str, headers: Any, body: bytes | str | None) -> IncomingRequest:
    """What an HTTP server gets for a request sent to ``url``: raw path/query, headers + Host."""
    parts = urlsplit(url)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        out.add(name, value.decode() if isinstance(value, bytes) else value)
    if "Host" not in out:
        out["Host"] = parts.netloc
    raw = body.encode() if isinstance(body, str) else (body or b"")
    return IncomingRequest(method, parts.path or "/", parts.query, out, raw)


def sign(
    method: str = "POST",
    url: str = ENDPOINT + "/",
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    service: str = "ssm",
    region: str = "us-east-1",
    akid: str = AKID,
    secret: str = SECRET,
    token: str | None = None,
    at: datetime = SIGNED_AT,
    params: Any = None,
) -> IncomingRequest:
    request = AWSRequest(method=method, url=url, headers=headers or {}, data=body, params=params)
    with frozen(at):
        SigV4Auth(Credentials(akid, secret, token), service, region).add_auth(request)
    prepared = request.prepare()
    return received(prepared.method, prepared.url, prepared.headers, prepared.body)


def presign(
    url: str,
    *,
    method: str = "GET",
    service: str = "sts",
    region: str = "us-east-1",
    expires: int = 60,
    akid: str = AKID,
    secret: str = SECRET,
    token: str | None = None,
    at: datetime = SIGNED_AT,
    auth_class: type[SigV4QueryAuth] = SigV4QueryAuth,
    body: bytes = b"",
) -> IncomingRequest:
    request = AWSRequest(method=method, url=url)
    with frozen(at):
        auth_class(Credentials(akid, secret, token), service, region, expires=expires).add_auth(
            request
        )
    prepared = request.prepare()
    return received(prepared.method, prepared.url, prepared.headers, body)


def ssm_call(body: dict[str, Any] | None = None, **kw: Any) -> IncomingRequest:
    return sign(
        headers={
            "X-Amz-Target": "AmazonSSM.GetParameter",
            "Content-Type": "application/x-amz-json-1.1",
        },
        body=json.dumps(body or {"Name": "/app/db"}).encode(),
        **kw,
    )


def replace(req: IncomingRequest, **changes: Any) -> IncomingRequest:
    fields: dict[str, Any] = {"method": req.method, "path": req.path, "query": req.query}
    fields |= {"headers": CIMultiDict(req.headers), "body": req.body}
    fields.update(changes)
    return IncomingRequest(**fields)


def with_header(req: IncomingRequest, name: str, value: str) -> IncomingRequest:
    headers: CIMultiDict[str] = CIMultiDict(req.headers)
    headers[name] = value
    return replace(req, headers=headers)


def without_header(req: IncomingRequest, name: str) -> IncomingRequest:
    headers: CIMultiDict[str] = CIMultiDict(req.headers)
    headers.popall(name, None)
    return replace(req, headers=headers)


def failure(req: IncomingRequest, now: datetime = SIGNED_AT, **kw: Any) -> AuthError:
    with pytest.raises(AuthError) as info:
        verify(req, lookup, now, **kw)
    return info.value


# ----------------------------------------------------------------------------- boto3 capture


class Captured(Exception):
    def __init__(self, request: Any) -> None:
        super().__init__("captured")
        self.request = request


def boto3_request(
    service: str,
    call: Callable[[Any], Any],
    *,
    akid: str = AKID,
    secret: str = SECRET,
    token: str | None = None,
    region: str = "us-east-1",
) -> IncomingRequest:
    """The request boto3 would put on the wire for ``call`` (captured just before sending)."""
    client = boto3.session.Session().client(
        service,
        endpoint_url=ENDPOINT,
        region_name=region,
        aws_access_key_id=akid,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(retries={"total_max_attempts": 1}),
    )

    def stop(request: Any, **_: Any) -> None:
        raise Captured(request)

    client.meta.events.register("before-send", stop)
    with frozen(), pytest.raises(Captured) as info:
        call(client)
    sent = info.value.request
    return received(sent.method, sent.url, sent.headers, sent.body)


# ----------------------------------------------------------------------------- header form


def test_valid_json_request_verifies() -> None:
    result = verify(ssm_call(), lookup, SIGNED_AT)
    assert result == Verified(AKID, "us-east-1", "ssm", SIGNED_AT, None, presigned=False)


def test_boto3_ssm_request_verifies() -> None:
    req = boto3_request("ssm", lambda c: c.get_parameter(Name="/app/db", WithDecryption=True))
    assert req.headers["X-Amz-Target"] == "AmazonSSM.GetParameter"
    result = verify(req, lookup, SIGNED_AT + timedelta(minutes=4))
    assert (result.service, result.region, result.presigned) == ("ssm", "us-east-1", False)


def test_boto3_iam_query_post_form_body_verifies() -> None:
    req = boto3_request("iam", lambda c: c.list_users(PathPrefix="/ops/ team/", MaxItems=5))
    assert req.method == "POST" and req.query == ""
    assert req.body.startswith(b"Action=ListUsers&Version=2010-05-08")
    assert signed_service_and_region(req) == ("iam", "us-east-1")
    assert verify(req, lookup, SIGNED_AT).service == "iam"
    tampered = replace(req, body=req.body.replace(b"MaxItems=5", b"MaxItems=6"))
    assert failure(tampered).kind == "signature"


def test_boto3_sts_with_session_token_verifies() -> None:
    req = boto3_request(
        "sts", lambda c: c.get_caller_identity(), akid=TEMP_AKID, secret=TEMP_SECRET, token=TOKEN
    )
    assert signed_service_and_region(req) == ("sts", "us-east-1")
    result = verify(req, lookup, SIGNED_AT)
    assert (result.access_key_id, result.session_token) == (TEMP_AKID, TOKEN)


def test_wrong_secret_is_a_signature_mismatch() -> None:
    err = failure(ssm_call(secret="not-the-secret"))
    assert err.kind == "signature"
    assert err.message == (
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method. "
        "Consult the service documentation for details."
    )
    assert err.canonical_request is not None and err.canonical_request.startswith("POST\n/\n")
    assert err.string_to_sign is not None
    assert err.string_to_sign.startswith("AWS4-HMAC-SHA256\n20261127T200000Z\n")


def test_unknown_key() -> None:
    err = failure(ssm_call(akid="AKIAUNKNOWNKEY000000"))
    assert (err.kind, err.message) == (
        "unknown_key",
        "The security token included in the request is invalid.",
    )


def test_tampered_body_signed_header_and_query_fail() -> None:
    req = ssm_call()
    assert failure(replace(req, body=req.body.replace(b"/app/db", b"/app/dc"))).kind == "signature"
    assert failure(with_header(req, "X-Amz-Target", "AmazonSSM.PutParameter")).kind == "signature"
    assert failure(replace(req, query="Action=Evil")).kind == "signature"
    assert failure(replace(req, path="/other")).kind == "signature"
    assert failure(replace(req, method="PUT")).kind == "signature"
    assert failure(with_header(req, "Host", "evil.example:8080")).kind == "signature"
    assert failure(without_header(req, "X-Amz-Target")).kind == "signature"


def test_signed_query_parameters_and_their_tampering() -> None:
    url = ENDPOINT + "/v1/things?b=2&a=x%20y&empty=&flag"
    req = sign("GET", url, service="ssmmessages")
    assert verify(req, lookup, SIGNED_AT).service == "ssmmessages"
    assert failure(replace(req, query="b=3&a=x%20y&empty=&flag")).kind == "signature"
    assert failure(replace(req, query="b=2&a=x%20y&empty=")).kind == "signature"


def test_unsigned_header_changes_are_allowed() -> None:
    req = ssm_call()
    assert "user-agent" not in req.headers["Authorization"].lower()
    changed = with_header(req, "User-Agent", "curl/8.0")
    changed = with_header(changed, "X-Forwarded-For", "10.0.0.1")
    changed = with_header(changed, "Content-Length", str(len(req.body)))
    assert verify(changed, lookup, SIGNED_AT).access_key_id == AKID


def test_header_value_whitespace_is_normalised() -> None:
    req = sign(
        "GET",
        ENDPOINT + "/",
        headers={"X-Amz-Meta": "  a   b\tc  "},
        service="ssm",
    )
    assert verify(with_header(req, "X-Amz-Meta", "a b c"), lookup, SIGNED_AT)
    assert verify(with_header(req, "x-amz-meta", "a  b   c "), lookup, SIGNED_AT)
    assert failure(with_header(req, "X-Amz-Meta", "a b d")).kind == "signature"


def test_repeated_headers_are_joined_with_commas() -> None:
    request = AWSRequest(method="GET", url=ENDPOINT + "/")
    request.headers["X-Amz-Dup"] = "one"
    request.headers["X-Amz-Dup"] = "two"
    with frozen():
        SigV4Auth(Credentials(AKID, SECRET), "ssm", "us-east-1").add_auth(request)
    prepared = request.prepare()
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.raw_items():
        headers.add(name, value)
    headers["Host"] = "127.0.0.1:8080"
    req = IncomingRequest("GET", "/", "", headers, b"")
    assert prepared.url == ENDPOINT + "/"
    assert verify(req, lookup, SIGNED_AT)
    swapped: CIMultiDict[str] = CIMultiDict(headers)
    swapped.popall("X-Amz-Dup")
    swapped.add("X-Amz-Dup", "two")
    swapped.add("X-Amz-Dup", "one")
    assert failure(replace(req, headers=swapped)).kind == "signature"


def test_plain_dict_headers_of_any_case_work() -> None:
    req = ssm_call()
    lowered = {name.lower(): value for name, value in req.headers.items()}
    assert verify(replace(req, headers=lowered), lookup, SIGNED_AT)
    upper = {name.upper(): value for name, value in req.headers.items()}
    assert verify(replace(req, headers=upper), lookup, SIGNED_AT)


def test_date_header_instead_of_x_amz_date() -> None:
    req = sign("GET", ENDPOINT + "/", headers={"Date": "Thu, 01 Jan 1970 00:00:00 GMT"})
    assert "X-Amz-Date" not in req.headers
    assert req.headers["Date"] == "Fri, 27 Nov 2026 20:00:00 -0000"  # botocore formatdate()
    assert verify(req, lookup, SIGNED_AT).signed_at == SIGNED_AT
    # The Date header is itself signed: even an equivalent spelling of it is a different request.
    assert failure(with_header(req, "Date", "Fri, 27 Nov 2026 20:00:00 GMT")).kind == "signature"
    err = failure(with_header(req, "Date", "Fri, 27 Nov 2026 20:00:01 GMT"))
    assert err.kind == "signature"


def test_x_amz_content_sha256_header() -> None:
    body = b'{"Name": "/app/db"}'
    digest = hashlib.sha256(body).hexdigest()
    req = sign(body=body, headers={"X-Amz-Content-SHA256": digest})
    assert verify(req, lookup, SIGNED_AT)
    assert failure(replace(req, body=b'{"Name": "/app/dc"}')).kind == "signature"
    unsigned = sign(body=body, headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert failure(unsigned).kind == "signature"  # the broker's APIs need a signed body
    empty = sign("GET", headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert verify(empty, lookup, SIGNED_AT)


def test_percent_encoded_path_is_double_encoded_like_the_client() -> None:
    req = sign("GET", ENDPOINT + "/v1/data-channel/sess%3A01/a%20b", service="ssmmessages")
    assert req.path == "/v1/data-channel/sess%3A01/a%20b"
    assert verify(req, lookup, SIGNED_AT)
    assert failure(replace(req, path="/v1/data-channel/sess:01/a%20b")).kind == "signature"


def test_query_canonicalisation_of_what_clients_sign() -> None:
    # botocore signs request params in canonical (RFC 3986) form, but sends them form-encoded
    # (a space is "+" on the wire and "%20" in the canonical query)...
    params = {"Name": "a b/c~d", "Filter": "x+y", "Ünï": "çødé"}
    req = sign("GET", ENDPOINT + "/", params=params)
    assert "Name=a+b%2Fc~d" in req.query and "Filter=x%2By" in req.query
    assert verify(req, lookup, SIGNED_AT)
    # ...and the same parameters sent with another (equivalent) encoding still verify.
    re_encoded = req.query.replace("~", "%7E").replace("%20", "+")
    assert verify(replace(req, query=re_encoded), lookup, SIGNED_AT)
    # A URL's own query is signed as it stands; that verifies too.
    raw = sign("GET", ENDPOINT + "/?z=1&a=b+c&m=%7e")
    assert verify(raw, lookup, SIGNED_AT)
    # Reordering parameters does not change the canonical query (as with AWS).
    assert verify(replace(raw, query="a=b+c&m=%7e&z=1"), lookup, SIGNED_AT)


# ----------------------------------------------------------------------------- missing / malformed


def test_missing_authentication() -> None:
    req = without_header(ssm_call(), "Authorization")
    err = failure(req)
    assert (err.kind, err.message) == ("missing", "Request is missing Authentication Token")
    assert signed_service_and_region(req) is None


def test_authorization_that_is_not_key_value_pairs_is_malformed() -> None:
    err = failure(with_header(ssm_call(), "Authorization", "Bearer abc.def"))
    assert err.kind == "malformed"
    assert err.message == (
        "'abc.def' not a valid key=value pair (missing equal-sign) in Authorization header: "
        "'Bearer abc.def'."
    )


def test_incomplete_authorization_lists_what_is_missing() -> None:
    auth = f"AWS4-HMAC-SHA256 Credential={AKID}/20261127/us-east-1/ssm/aws4_request"
    err = failure(with_header(ssm_call(), "Authorization", auth))
    assert err.kind == "incomplete"
    assert err.message == (
        "Authorization header requires 'Signature' parameter. "
        "Authorization header requires 'SignedHeaders' parameter. "
        f"Authorization={auth}"
    )
    no_date = without_header(ssm_call(), "X-Amz-Date")
    err = failure(no_date)
    assert err.kind == "incomplete"
    assert "requires existence of either a 'X-Amz-Date' or a 'Date' header" in err.message
    only_alg = failure(with_header(ssm_call(), "Authorization", "AWS4-HMAC-SHA256"))
    assert only_alg.message.startswith(
        "Authorization header requires 'Credential' parameter. "
        "Authorization header requires 'Signature' parameter. "
        "Authorization header requires 'SignedHeaders' parameter."
    )


def test_unsupported_algorithm() -> None:
    req = ssm_call()
    auth = req.headers["Authorization"].replace("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA512", 1)
    err = failure(with_header(req, "Authorization", auth))
    assert (err.kind, err.message) == (
        "incomplete",
        "Unsupported AWS 'algorithm': 'AWS4-HMAC-SHA512'.",
    )


def test_bad_x_amz_date_is_malformed() -> None:
    err = failure(with_header(ssm_call(), "X-Amz-Date", "2026-11-27T20:00:00Z"))
    assert err.kind == "malformed"
    assert err.message.startswith(
        "Date must be in ISO-8601 'basic format'. Got '2026-11-27T20:00:00Z'."
    )


def test_host_must_be_signed() -> None:
    req = ssm_call()
    auth = req.headers["Authorization"].replace(
        "SignedHeaders=content-type;host;", "SignedHeaders=content-type;"
    )
    assert auth != req.headers["Authorization"]
    err = failure(with_header(req, "Authorization", auth))
    assert (err.kind, err.message) == (
        "incomplete",
        "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
    )


def test_malformed_credential_scope() -> None:
    req = ssm_call()
    auth = req.headers["Authorization"].replace("/aws4_request", "/aws5_request")
    err = failure(with_header(req, "Authorization", auth))
    assert err.kind == "signature"
    assert err.message == (
        "Credential should be scoped with a valid terminator: 'aws4_request', not 'aws5_request'."
    )
    short = req.headers["Authorization"].replace("/us-east-1/ssm/", "/ssm/")
    assert failure(with_header(req, "Authorization", short)).kind == "malformed"


def test_scope_date_must_match_x_amz_date() -> None:
    req = ssm_call()
    auth = req.headers["Authorization"].replace("/20261127/", "/20261126/")
    err = failure(with_header(req, "Authorization", auth))
    assert err.kind == "signature"
    assert err.message == (
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
        "HTTP: '20261126' != '20261127', from '20261127T200000Z'."
    )


# ----------------------------------------------------------------------------- time window


def test_signature_older_than_five_minutes_is_expired() -> None:
    err = failure(ssm_call(), now=datetime(2026, 11, 27, 20, 6, 12, tzinfo=UTC))
    assert err.kind == "expired"
    assert err.message == (
        "Signature expired: 20261127T200000Z is now earlier than 20261127T200112Z "
        "(20261127T200612Z - 5 min.)"
    )


def test_signature_more_than_five_minutes_ahead_is_not_yet_current() -> None:
    err = failure(ssm_call(), now=SIGNED_AT - timedelta(minutes=6))
    assert err.kind == "expired"
    assert err.message == (
        "Signature not yet current: 20261127T200000Z is still later than 20261127T195900Z "
        "(20261127T195400Z + 5 min.)"
    )


def test_window_edges_and_naive_now() -> None:
    req = ssm_call()
    assert verify(req, lookup, SIGNED_AT + timedelta(minutes=5))
    assert verify(req, lookup, SIGNED_AT - timedelta(minutes=5))
    assert verify(req, lookup, (SIGNED_AT + timedelta(minutes=1)).replace(tzinfo=None))
    assert failure(req, SIGNED_AT + timedelta(minutes=5, seconds=1)).kind == "expired"
    wide = verify(req, lookup, SIGNED_AT + timedelta(minutes=14), max_skew=timedelta(minutes=15))
    assert wide.signed_at == SIGNED_AT
    err = failure(req, SIGNED_AT + timedelta(minutes=16), max_skew=timedelta(minutes=15))
    assert err.message.endswith("(20261127T201600Z - 15 min.)")


# ----------------------------------------------------------------------------- session tokens


def test_temporary_credentials_require_their_token() -> None:
    good = ssm_call(akid=TEMP_AKID, secret=TEMP_SECRET, token=TOKEN)
    assert verify(good, lookup, SIGNED_AT).session_token == TOKEN
    missing = ssm_call(akid=TEMP_AKID, secret=TEMP_SECRET)
    err = failure(missing)
    assert (err.kind, err.message) == (
        "token_invalid",
        "The security token included in the request is invalid.",
    )
    wrong = ssm_call(akid=TEMP_AKID, secret=TEMP_SECRET, token=TOKEN + "x")
    assert failure(wrong).kind == "token_invalid"
    swapped = with_header(good, "X-Amz-Security-Token", "another-token")
    assert failure(swapped).kind == "token_invalid"


def test_token_on_long_term_key_is_invalid() -> None:
    assert failure(ssm_call(token="stray-token")).kind == "token_invalid"


def test_expired_temporary_credentials() -> None:
    err = failure(ssm_call(akid=EXPIRED_AKID, secret=TEMP_SECRET, token=TOKEN))
    assert (err.kind, err.message) == (
        "token_expired",
        "The security token included in the request is expired",
    )


# ----------------------------------------------------------------------------- presigned


def test_presigned_get_caller_identity_from_boto3() -> None:
    client = boto3.session.Session().client(
        "sts",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
    )
    with frozen():
        url = client.generate_presigned_url("get_caller_identity", ExpiresIn=900)
    # botocore presigns Query operations with their modeled method (POST); fetched with GET the
    # URL fails, at AWS too (boto/boto3#756: "The Canonical String ... should have been 'GET").
    assert failure(received("GET", url, {}, b"")).kind == "signature"
    req = received("POST", url, {}, b"")
    assert "X-Amz-Signature=" in req.query
    result = verify(req, lookup, SIGNED_AT + timedelta(minutes=14))
    assert (result.service, result.presigned, result.signed_at) == ("sts", True, SIGNED_AT)
    assert signed_service_and_region(req) == ("sts", "us-east-1")
    err = failure(req, SIGNED_AT + timedelta(seconds=901))
    assert (err.kind, err.message) == ("expired", "Request has expired")


def test_presigned_expiry_and_future_dates() -> None:
    req = presign(ENDPOINT + "/?Action=GetCallerIdentity&Version=2011-06-15", expires=60)
    assert verify(req, lookup, SIGNED_AT + timedelta(seconds=60)).presigned
    assert failure(req, SIGNED_AT + timedelta(seconds=61)).kind == "expired"
    err = failure(req, SIGNED_AT - timedelta(minutes=6))
    assert err.kind == "expired" and err.message.startswith("Signature not yet current")


def test_presigned_tampering_and_missing_parameters() -> None:
    req = presign(ENDPOINT + "/?Action=GetCallerIdentity&Version=2011-06-15")
    tampered = req.query.replace("GetCallerIdentity", "GetSessionToken")
    assert failure(replace(req, query=tampered)).kind == "signature"
    longer = req.query.replace("X-Amz-Expires=60", "X-Amz-Expires=600")
    assert failure(replace(req, query=longer)).kind == "signature"
    without_sig = "&".join(p for p in req.query.split("&") if not p.startswith("X-Amz-Signature="))
    err = failure(replace(req, query=without_sig))
    assert err.kind == "incomplete"
    assert err.message == (
        "AWS query-string parameters must include 'X-Amz-Signature'. "
        "Re-examine the query-string parameters."
    )
    too_long = presign(ENDPOINT + "/", expires=604801)
    assert failure(too_long).kind == "malformed"
    assert failure(replace(req, query=req.query + "&X-Amz-Date=20261127T200000Z")).kind == (
        "malformed"
    )


def test_presigned_with_session_token() -> None:
    req = presign(ENDPOINT + "/", akid=TEMP_AKID, secret=TEMP_SECRET, token=TOKEN)
    assert "X-Amz-Security-Token=" in req.query
    assert verify(req, lookup, SIGNED_AT).session_token == TOKEN
    missing = presign(ENDPOINT + "/", akid=TEMP_AKID, secret=TEMP_SECRET)
    assert failure(missing).kind == "token_invalid"
    wrong = presign(ENDPOINT + "/", akid=TEMP_AKID, secret=TEMP_SECRET, token="nope")
    assert failure(wrong).kind == "token_invalid"


def test_presigned_unsigned_payload() -> None:
    # S3-style presigners (and several SDKs) sign UNSIGNED-PAYLOAD instead of the body hash.
    req = presign(
        ENDPOINT + "/v1/x?role=publish_subscribe",
        service="ssmmessages",
        auth_class=S3SigV4QueryAuth,
    )
    assert verify(req, lookup, SIGNED_AT).presigned
    with_body = presign(
        ENDPOINT + "/v1/x",
        service="ssmmessages",
        auth_class=S3SigV4QueryAuth,
        method="POST",
        body=b"Action=DeleteUser",
    )
    assert failure(with_body).kind == "signature"


def test_presigned_query_post_moves_form_body_into_the_query() -> None:
    request = AWSRequest(
        method="POST",
        url=ENDPOINT + "/",
        data={"Action": "GetCallerIdentity", "Version": "2011-06-15"},
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    with frozen():
        SigV4QueryAuth(Credentials(AKID, SECRET), "sts", "us-east-1").add_auth(request)
    prepared = request.prepare()
    req = received("POST", prepared.url, prepared.headers, prepared.body)
    assert req.body == b"" and req.query.startswith("Action=GetCallerIdentity&Version=2011-06-15")
    assert verify(req, lookup, SIGNED_AT).presigned
    assert failure(replace(req, body=b"Action=DeleteUser&UserName=alice")).kind == "signature"


# ----------------------------------------------------------------------------- websocket


def test_websocket_upgrade_get_for_ssmmessages() -> None:
    url = ENDPOINT + "/v1/data-channel/sess-0a1b2c3d?role=publish_subscribe&stream=input%2Foutput"
    req = sign(
        "GET",
        url,
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        },
        service="ssmmessages",
        region="eu-west-1",
        akid=TEMP_AKID,
        secret=TEMP_SECRET,
        token=TOKEN,
    )
    assert req.path == "/v1/data-channel/sess-0a1b2c3d"
    assert signed_service_and_region(req) == ("ssmmessages", "eu-west-1")
    result = verify(req, lookup, SIGNED_AT)
    assert (result.service, result.region, result.session_token) == (
        "ssmmessages",
        "eu-west-1",
        TOKEN,
    )
    # Connection and Upgrade are hop-by-hop: botocore does not sign them, proxies may rewrite.
    assert verify(with_header(req, "Connection", "keep-alive, Upgrade"), lookup, SIGNED_AT)
    assert failure(with_header(req, "Sec-WebSocket-Key", "b3RoZXIgbm9uY2U=")).kind == "signature"
    assert failure(replace(req, query="role=publish_subscribe&stream=input")).kind == "signature"


# ----------------------------------------------------------------------------- error mapping


def test_error_codes() -> None:
    assert error_code("signature", "json") == ("InvalidSignatureException", 400)
    assert error_code("signature", "query") == ("SignatureDoesNotMatch", 403)
    assert error_code("unknown_key", "json") == ("UnrecognizedClientException", 400)
    assert error_code("unknown_key", "query") == ("InvalidClientTokenId", 403)
    assert error_code("missing", "json") == ("MissingAuthenticationTokenException", 400)
    assert error_code("missing", "query") == ("MissingAuthenticationToken", 403)
    assert error_code("incomplete", "query") == ("IncompleteSignature", 400)
    assert error_code("token_expired", "query") == ("ExpiredToken", 403)
    for protocol in ("json", "query"):
        for kind in sigv4.KINDS:
            code, status = error_code(kind, protocol)
            assert code and status in (400, 403)
    with pytest.raises(ValueError):
        error_code("signature", "rest-xml")
    with pytest.raises(ValueError):
        error_code("nope", "json")


def test_query_wording_of_invalid_token() -> None:
    err = failure(ssm_call(akid="AKIAUNKNOWNKEY000000"))
    assert error_message(err, "json") == "The security token included in the request is invalid."
    assert error_message(err, "query") == "The security token included in the request is invalid"
    sig = failure(ssm_call(secret="x"))
    assert error_message(sig, "query") == sig.message


# ----------------------------------------------------------------------------- fuzz

_TEXT = st.text(max_size=40)
_HEADER_NAMES = st.one_of(
    st.sampled_from(
        [
            "Authorization",
            "X-Amz-Date",
            "Date",
            "Host",
            "X-Amz-Security-Token",
            "X-Amz-Content-SHA256",
            "x-amz-target",
        ]
    ),
    _TEXT,
)
_AUTH = st.builds(
    lambda cred, signed, sig, extra: (
        f"AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders={signed}, Signature={sig}{extra}"
    ),
    st.one_of(st.just(f"{AKID}/20261127/us-east-1/ssm/aws4_request"), _TEXT),
    st.one_of(st.just("host;x-amz-date"), _TEXT),
    st.one_of(st.just("0" * 64), st.text(alphabet="0123456789abcdef", max_size=64), _TEXT),
    _TEXT,
)
_QUERY_PART = st.one_of(
    st.sampled_from(
        [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            f"X-Amz-Credential={AKID}%2F20261127%2Fus-east-1%2Fsts%2Faws4_request",
            "X-Amz-Date=20261127T200000Z",
            "X-Amz-Expires=60",
            "X-Amz-SignedHeaders=host",
            "X-Amz-Signature=" + "0" * 64,
            "X-Amz-Security-Token=%ff%fe",
            "a=%zz",
            "b=+%2B",
        ]
    ),
    _TEXT,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.one_of(st.sampled_from(["GET", "POST"]), _TEXT),
    path=st.one_of(st.just("/"), _TEXT),
    query=st.lists(_QUERY_PART, max_size=8).map("&".join),
    headers=st.dictionaries(_HEADER_NAMES, st.one_of(_AUTH, _TEXT), max_size=6),
    body=st.binary(max_size=64),
    date=st.one_of(st.just("20261127T200000Z"), _TEXT),
)
def test_junk_only_ever_raises_auth_error(
    method: str, path: str, query: str, headers: dict[str, str], body: bytes, date: str
) -> None:
    all_headers = {"X-Amz-Date": date, "Host": "127.0.0.1:8080", **headers}
    req = IncomingRequest(method, path, query, all_headers, body)
    try:
        verify(req, lookup, SIGNED_AT)
    except AuthError as err:
        assert err.kind in sigv4.KINDS
        assert isinstance(err.message, str) and err.message
        for protocol in ("json", "query"):
            error_code(err.kind, protocol)
    scope = signed_service_and_region(req)
    assert scope is None or all(isinstance(part, str) for part in scope)


_SIGNED_OR_SPECIAL = {
    "authorization",
    "host",
    "x-amz-date",
    "date",
    "x-amz-security-token",
    "x-amz-content-sha256",
    "sec-websocket-key",
    "sec-websocket-version",
}
_WS_REQUEST = sign(
    "GET",
    ENDPOINT + "/v1/data-channel/sess-1?role=publish_subscribe",
    headers={"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"},
    service="ssmmessages",
)


@settings(max_examples=300, deadline=None)
@given(
    extra=st.dictionaries(
        st.text(min_size=1, max_size=20).filter(lambda n: n.lower() not in _SIGNED_OR_SPECIAL),
        _TEXT,
        max_size=5,
    ),
    junk_query=st.lists(_QUERY_PART, max_size=4).map("&".join),
)
def test_signed_request_with_junk(extra: dict[str, str], junk_query: str) -> None:
    headers: CIMultiDict[str] = CIMultiDict(_WS_REQUEST.headers)
    for name, value in extra.items():
        headers.add(name, value)
    # Unsigned headers, whatever they are, never matter.
    assert verify(replace(_WS_REQUEST, headers=headers), lookup, SIGNED_AT)
    # Extra query parameters are signed: they fail (or, if they decode to nothing, verify).
    query = _WS_REQUEST.query + "&" + junk_query
    try:
        verify(replace(_WS_REQUEST, headers=headers, query=query), lookup, SIGNED_AT)
    except AuthError as err:
        assert err.kind in ("signature", "incomplete", "malformed", "token_invalid", "expired")


@settings(max_examples=60, deadline=None)
@given(
    secret=st.text(min_size=1, max_size=40),
    day=st.sampled_from(["20261127", "20261128", "20270101"]),
    region=st.sampled_from(["us-east-1", "eu-west-3"]),
    service=st.sampled_from(["ssm", "sts", "iam", "ssmmessages"]),
    string_to_sign=st.text(max_size=200),
)
def test_the_signing_key_kept_per_day_signs_as_botocore(
    secret: str, day: str, region: str, service: str, string_to_sign: str
) -> None:
    """The verifier keeps derived signing keys; every signature, first or from the kept key,
    equals botocore's own ``SigV4Auth.signature``."""
    request = AWSRequest("POST", "http://x/")
    request.context["timestamp"] = f"{day}T120000Z"
    expected = SigV4Auth(Credentials("AKID", secret), service, region).signature(
        string_to_sign, request
    )
    for _ in range(2):  # derived, then kept
        signer = sigv4._Signer("AKID", secret, service, region)
        assert signer.signature(string_to_sign, request) == expected
