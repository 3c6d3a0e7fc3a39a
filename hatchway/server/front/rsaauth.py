"""The RSA variant of SigV4 that AWS's amazon-ssm-agent signs its managed-instance calls with.

``RequestManagedInstanceRoleToken`` and ``UpdateManagedInstancePublicKey`` carry an ordinary
SigV4 ``Authorization`` header (``AWS4-HMAC-SHA256 Credential=<mi-id>/<date>/<region>/ssm/
aws4_request, SignedHeaders=…, Signature=…``) whose canonical request and string to sign are
built exactly as SigV4's, but whose signature is base64 RSASSA-PSS (SHA-256, MGF1-SHA-256, salt
32) of the string to sign under the node's private key (the agent's ``agent/ssm/rsaauth``),
verified here with the PKIX public key the node registered. The access key id is the instance
id. Failures raise :class:`hatchway.server.sigv4.AuthError` with SigV4's kinds, so that they are
answered with the same codes as any SigV4 failure.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, quote

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from hatchway.server.front.sigv4 import AuthError, IncomingRequest

ALGORITHM = "AWS4-HMAC-SHA256"
MIN_KEY_BITS = 2048
MSG_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation "
    "for details."
)
MSG_UNKNOWN = "The security token included in the request is invalid."
_CREDENTIAL = re.compile(
    r"^(?P<id>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request$"
)


class PublicKeyError(ValueError):
    """A public key that is not base64 PKIX DER of an RSA key of at least 2048 bits."""


def load_public_key(text: str) -> rsa.RSAPublicKey:
    """The node's public key as registered: base64 of the PKIX (SubjectPublicKeyInfo) DER."""
    try:
        der = base64.b64decode(text.encode("ascii"), validate=True)
        key = serialization.load_der_public_key(der)
    except (ValueError, binascii.Error, UnicodeError, UnsupportedAlgorithm) as exc:
        raise PublicKeyError("The public key is not a base64-encoded PKIX RSA public key.") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise PublicKeyError("The public key is not an RSA key.")
    if key.key_size < MIN_KEY_BITS:
        raise PublicKeyError(f"The RSA key must have at least {MIN_KEY_BITS} bits.")
    return key


@dataclass(frozen=True)
class RsaSigned:
    """A request whose RSA signature checked out."""

    instance_id: str
    signed_at: datetime
    key_index: int  # which of the keys offered verified it (0: the current one)


def _headers(req: IncomingRequest) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    items: list[tuple[str, str]] = list(req.headers.items())
    getall = getattr(req.headers, "getall", None)
    if getall is not None:  # a multidict: every value of a repeated header
        items = [(k, v) for k in dict.fromkeys(req.headers.keys()) for v in getall(k)]
    for name, value in items:
        out.setdefault(name.lower(), []).append(value)
    return out


def _strip_spaces(value: str) -> str:
    """aws-sdk-go's ``stripExcessSpaces``: trimmed, runs of spaces made one."""
    return re.sub(" +", " ", value.strip())


def _canonical_query(raw: str) -> str:
    """Go's ``url.Values.Encode`` (sorted by key, values in order) with ``+`` as ``%20``."""
    pairs = parse_qsl(raw, keep_blank_values=True)
    pairs.sort(key=lambda kv: kv[0])
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs)


def parse_authorization(req: IncomingRequest) -> tuple[str, str, str, list[str], str]:
    """(instance id, date, region, signed header names, signature) from the header, or
    AuthError."""
    headers = _headers(req)
    auth = (headers.get("authorization") or [""])[0].strip()
    if not auth:
        raise AuthError("missing", "Request is missing Authentication Token")
    algorithm, _, rest = auth.partition(" ")
    if algorithm != ALGORITHM:
        raise AuthError("incomplete", f"Unsupported AWS 'algorithm': '{algorithm}'.")
    params: dict[str, str] = {}
    for part in rest.split(","):
        key, eq, value = part.strip().partition("=")
        if eq:
            params[key] = value
    missing = [k for k in ("Credential", "SignedHeaders", "Signature") if not params.get(k)]
    if missing:
        raise AuthError("incomplete", f"Authorization header requires '{missing[0]}' parameter.")
    cred = _CREDENTIAL.match(params["Credential"])
    if cred is None:
        raise AuthError("incomplete", "Credential should be scoped to a valid region.")
    signed = params["SignedHeaders"].split(";")
    return cred["id"], cred["date"], cred["region"], signed, params["Signature"]


def string_to_sign(req: IncomingRequest) -> tuple[str, str]:
    """(canonical request, string to sign) as the agent's signer builds them."""
    headers = _headers(req)
    _, date, region, signed, _ = parse_authorization(req)
    service = parse_credential_service(req)
    amz_date = (headers.get("x-amz-date") or [""])[0].strip()
    lines = []
    for name in signed:
        values = headers.get(name)
        if values is None:
            raise AuthError("signature", MSG_SIGNATURE)
        lines.append(_strip_spaces(f"{name}:{','.join(values)}"))
    body_hash = hashlib.sha256(req.body).hexdigest()
    canonical = "\n".join(
        [
            req.method,
            req.path or "/",
            _canonical_query(req.query),
            "\n".join(lines) + "\n",
            ";".join(signed),
            body_hash,
        ]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return canonical, "\n".join([ALGORITHM, amz_date, scope, digest])


def parse_credential_service(req: IncomingRequest) -> str:
    auth = (_headers(req).get("authorization") or [""])[0]
    credential = auth.partition("Credential=")[2].partition(",")[0].strip()
    match = _CREDENTIAL.match(credential)
    return match["service"] if match else ""


def _signed_at(req: IncomingRequest, date: str) -> datetime:
    amz_date = (_headers(req).get("x-amz-date") or [""])[0].strip()
    try:
        at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise AuthError(
            "incomplete",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        ) from None
    if amz_date[:8] != date:
        raise AuthError(
            "signature",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{date}' != '{amz_date[:8]}', from '{amz_date}'.",
        )
    return at


def verify(
    req: IncomingRequest,
    public_keys: Callable[[str], Sequence[str]],
    now: datetime,
    *,
    region: str,
    service: str = "ssm",
    max_skew: timedelta = timedelta(minutes=5),
) -> RsaSigned:
    """Authenticate an RSA-signed request, or raise AuthError. ``public_keys(instance_id)``
    returns the node's acceptable keys (the current one first, then one kept for a grace
    period after a rotation); none means an unknown or deregistered node."""
    instance_id, date, scope_region, _, signature = parse_authorization(req)
    if scope_region != region:
        raise AuthError(
            "signature", f"Credential should be scoped to a valid region, not '{scope_region}'."
        )
    if parse_credential_service(req) != service:
        raise AuthError(
            "signature", f"Credential should be scoped to correct service: '{service}'."
        )
    signed_at = _signed_at(req, date)
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    if signed_at > now + max_skew or signed_at < now - max_skew:
        raise AuthError(
            "expired",
            "Signature expired: the request's X-Amz-Date is more than 5 minutes from the "
            "broker's time.",
        )
    keys = list(public_keys(instance_id))
    if not keys:
        raise AuthError("unknown_key", MSG_UNKNOWN)
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
    except (ValueError, binascii.Error, UnicodeError):
        raise AuthError("signature", MSG_SIGNATURE) from None
    _, to_sign = string_to_sign(req)
    for index, text in enumerate(keys):
        try:
            key = load_public_key(text)
            key.verify(
                raw,
                to_sign.encode("utf-8"),
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO),
                hashes.SHA256(),
            )
        except (InvalidSignature, PublicKeyError, ValueError):
            continue
        return RsaSigned(instance_id, signed_at, index)
    raise AuthError("signature", MSG_SIGNATURE)
