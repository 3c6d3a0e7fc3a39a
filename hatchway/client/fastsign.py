"""Signing the data-channel upgrade without importing botocore (the plugin's start path).

Importing any part of botocore costs about 100 ms, more than the rest of a session start, so
the plugin signs its websocket upgrade itself when the credentials are static ones it can read
cheaply: the environment (``AWS_ACCESS_KEY_ID`` …) when the AWS CLI passed no profile, or
access keys in the shared credentials or config file for the profile. Profiles that assume a
role, use SSO, web identity or a credential process, and every other source (instance metadata,
containers), return None here: the caller then signs with botocore, whose chain covers them.
The order follows botocore's chain, so both find the same keys. A test checks that the headers
equal botocore's ``SigV4Auth`` for the same request and time.
"""

from __future__ import annotations

import configparser
import functools
import hashlib
import hmac
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlsplit

__all__ = ["StaticCredentials", "sign_get", "sign_headers", "static_credentials"]

_DYNAMIC_KEYS = (
    "role_arn",
    "web_identity_token_file",
    "sso_session",
    "sso_start_url",
    "sso_account_id",
    "sso_role_name",
    "login_session",
)


@dataclass(frozen=True, slots=True)
class StaticCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None


def _read(path: str) -> configparser.RawConfigParser | None:
    parser = configparser.RawConfigParser()
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as fh:
            parser.read_file(fh)
    except (OSError, configparser.Error, UnicodeError):
        return None
    return parser


def _keys(section: configparser.SectionProxy) -> StaticCredentials | None:
    key, secret = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
    if not key or not secret:
        return None
    return StaticCredentials(key, secret, section.get("aws_session_token") or None)


def static_credentials(
    profile: str = "", environ: dict[str, str] | None = None
) -> StaticCredentials | None:
    """Static keys for ``profile`` (``""``: none given), or None when botocore must decide."""
    env = os.environ if environ is None else environ
    if not profile:
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if key and secret:
            return StaticCredentials(key, secret, env.get("AWS_SESSION_TOKEN") or None)
    name = profile or env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    config = _read(env.get("AWS_CONFIG_FILE") or "~/.aws/config")
    section_name = name if name == "default" else f"profile {name}"
    conf = config[section_name] if config is not None and config.has_section(section_name) else None
    if conf is not None and any(k in conf for k in _DYNAMIC_KEYS):
        return None  # botocore's assume-role / web-identity / SSO providers come first
    shared = _read(env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials")
    if shared is not None and shared.has_section(name):
        found = _keys(shared[name])
        if found is not None:
            return found
    if conf is not None:
        if "credential_process" in conf:
            return None
        return _keys(conf)
    return None


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


@functools.lru_cache(maxsize=64)
def _signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret).encode(), day)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def sign_headers(
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    credentials: StaticCredentials,
    region: str,
    service: str,
    now: datetime | None = None,
) -> dict[str, str]:
    """The SigV4 headers (``X-Amz-Date``, ``Authorization``, the session token) for a request
    whose ``headers`` (``Host`` among them) are all to be signed, as botocore's ``SigV4Auth``
    signs them. ``path`` and ``query`` are already in canonical (encoded, sorted) form."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    stamp = moment.strftime("%Y%m%dT%H%M%SZ")
    signed = {k.lower(): " ".join(v.split()) for k, v in headers.items()}
    signed["x-amz-date"] = stamp
    if credentials.session_token:
        signed["x-amz-security-token"] = credentials.session_token
    names = sorted(signed)
    canonical = "\n".join(
        [
            method,
            path,
            query,
            "".join(f"{n}:{signed[n]}\n" for n in names),
            ";".join(names),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _signing_key(credentials.secret_access_key, stamp[:8], region, service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = {
        "X-Amz-Date": stamp,
        "Authorization": (
            f"AWS4-HMAC-SHA256 Credential={credentials.access_key_id}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        ),
    }
    if credentials.session_token:
        out["X-Amz-Security-Token"] = credentials.session_token
    return out


def sign_get(
    url: str,
    host: str,
    credentials: StaticCredentials,
    region: str,
    service: str = "ssmmessages",
    now: datetime | None = None,
) -> dict[str, str]:
    """SigV4 headers (``Host``, ``X-Amz-Date``, ``Authorization``, token) for a GET of the
    http(s) form of ``url`` with an empty body, as botocore's ``SigV4Auth`` signs it."""
    parts = urlsplit(url)
    path = quote(parts.path or "/", safe="/~")
    pairs = sorted(
        (quote(k, safe="-_.~"), quote(v, safe="-_.~"))
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    query = "&".join(f"{k}={v}" for k, v in pairs)
    signed = sign_headers(
        "GET", path, query, {"Host": host}, b"", credentials, region, service, now
    )
    return {"Host": host, **signed}
