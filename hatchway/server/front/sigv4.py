"""SigV4 request authentication, as AWS does it (pure: no sockets, no store).

:func:`verify` checks both forms of Signature Version 4:

* the ``Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`` header,
  with ``X-Amz-Date`` (or ``Date``) and an optional ``X-Amz-Security-Token``;
* presigned query strings (``X-Amz-Algorithm``, ``X-Amz-Credential``, ``X-Amz-Date``,
  ``X-Amz-Expires``, ``X-Amz-SignedHeaders``, ``X-Amz-Signature``, optional
  ``X-Amz-Security-Token``).

The signature is recomputed with botocore's own signer (:class:`botocore.auth.SigV4Auth`'s
``canonical_request`` / ``string_to_sign`` / ``signature``), fed an :class:`AWSRequest` rebuilt
from exactly the headers the client signed and the timestamp the client sent, and compared in
constant time. Failures raise :class:`AuthError` whose ``kind`` maps to AWS's error code and
HTTP status per protocol with :func:`error_code`; ``message`` is AWS's text. Sources and the
choices made are in ``docs/broker-sigv4.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import unquote_plus

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

__all__ = [
    "ALGORITHM",
    "KINDS",
    "AuthError",
    "Credential",
    "IncomingRequest",
    "Verified",
    "error_code",
    "error_message",
    "signed_service_and_region",
    "verify",
]

ALGORITHM: Final = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"
#: The longest a presigned URL may live (seven days), as AWS allows.
MAX_PRESIGNED_EXPIRES: Final = 604800
_SIGV4_TIMESTAMP: Final = "%Y%m%dT%H%M%SZ"
_AMZ_DATE = re.compile(r"\A\d{8}T\d{6}Z\Z")
_HEX64 = re.compile(r"\A[0-9a-fA-F]{64}\Z")
_SIGNATURE_HEX = re.compile(r"\A[0-9a-f]{64}\Z")
_SPLIT_AUTH = re.compile(r"[,\s]+")
#: Where the rebuilt request points; only its path is used (``host`` is always a signed header).
_BASE_URL: Final = "http://hatchway.invalid"

KINDS: Final = (
    "missing",
    "incomplete",
    "malformed",
    "signature",
    "unknown_key",
    "expired",
    "token_invalid",
    "token_expired",
)

MSG_SIGNATURE: Final = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)
MSG_MISSING: Final = "Request is missing Authentication Token"
MSG_TOKEN_INVALID: Final = "The security token included in the request is invalid."
MSG_TOKEN_EXPIRED: Final = "The security token included in the request is expired"
MSG_HOST_UNSIGNED: Final = (
    "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
)
MSG_PRESIGNED_EXPIRED: Final = "Request has expired"


class AuthError(Exception):
    """A request failed SigV4 authentication.

    ``kind`` is one of :data:`KINDS`; ``message`` is AWS's text for it (JSON-protocol wording;
    see :func:`error_message` for the Query variant). When the signature did not match,
    ``canonical_request`` and ``string_to_sign`` hold what the broker computed, for logs only.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        canonical_request: str | None = None,
        string_to_sign: str | None = None,
    ) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.canonical_request = canonical_request
        self.string_to_sign = string_to_sign


@dataclass(frozen=True)
class IncomingRequest:
    """A request exactly as the HTTP server received it.

    ``path`` is the raw (still percent-encoded) path, ``query`` the raw query string without
    ``?``. Header names are looked up case-insensitively; a multidict's repeated headers are
    all used (joined with ``,`` as SigV4 prescribes).
    """

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Credential:
    """What the broker holds for an access key id.

    ``session_token`` is set for temporary (STS) credentials, and the request must then carry
    it. ``expiration``, when set, makes requests at or after it fail with ``token_expired``.
    """

    secret_access_key: str
    session_token: str | None = None
    expiration: datetime | None = None


@dataclass(frozen=True)
class Verified:
    """A request whose signature checked out."""

    access_key_id: str
    region: str
    service: str
    signed_at: datetime
    session_token: str | None
    presigned: bool


# --------------------------------------------------------------------------- error mapping

_CODES: Final[dict[str, dict[str, tuple[str, int]]]] = {
    # AWS JSON 1.1 (SSM, ssmmessages): Coral answers every authentication failure with 400.
    "json": {
        "missing": ("MissingAuthenticationTokenException", 400),
        "incomplete": ("IncompleteSignatureException", 400),
        "malformed": ("IncompleteSignatureException", 400),
        "signature": ("InvalidSignatureException", 400),
        "expired": ("InvalidSignatureException", 400),
        "unknown_key": ("UnrecognizedClientException", 400),
        "token_invalid": ("UnrecognizedClientException", 400),
        "token_expired": ("ExpiredTokenException", 400),
    },
    # AWS Query (IAM, STS).
    "query": {
        "missing": ("MissingAuthenticationToken", 403),
        "incomplete": ("IncompleteSignature", 400),
        "malformed": ("IncompleteSignature", 400),
        "signature": ("SignatureDoesNotMatch", 403),
        "expired": ("SignatureDoesNotMatch", 403),
        "unknown_key": ("InvalidClientTokenId", 403),
        "token_invalid": ("InvalidClientTokenId", 403),
        "token_expired": ("ExpiredToken", 403),
    },
}


def error_code(kind: str, protocol: str) -> tuple[str, int]:
    """AWS's error code and HTTP status for an :class:`AuthError` kind.

    ``protocol`` is ``"json"`` (SSM) or ``"query"`` (IAM, STS). Raises :class:`ValueError` for
    anything else.
    """
    try:
        return _CODES[protocol][kind]
    except KeyError:
        raise ValueError(f"no error code for kind {kind!r} in protocol {protocol!r}") from None


def error_message(err: AuthError, protocol: str) -> str:
    """``err.message`` as the given protocol words it.

    IAM and STS (Query) say "The security token included in the request is invalid" without
    the full stop that the JSON services put at its end.
    """
    if protocol == "query" and err.kind in ("unknown_key", "token_invalid"):
        return err.message.rstrip(".")
    return err.message


# --------------------------------------------------------------------------- parsing helpers


class _Headers:
    """Case-insensitive view of the received headers, keeping repeated values in order."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in headers.items():
            self._values.setdefault(str(name).strip().lower(), []).append(str(value))

    def get(self, name: str) -> str | None:
        values = self._values.get(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        return list(self._values.get(name, ()))

    def __contains__(self, name: object) -> bool:
        return name in self._values


@dataclass(frozen=True)
class _Segment:
    raw: str
    key: str  # decoded leniently, for finding the X-Amz-* parameters


def _segments(query: str) -> list[_Segment]:
    out = []
    for raw in query.split("&"):
        if raw:
            key = unquote_plus(raw.partition("=")[0], errors="replace")
            out.append(_Segment(raw, key))
    return out


def _decoded_pairs(segments: Iterable[_Segment]) -> list[tuple[str, str]] | None:
    """The query's ``(name, value)`` pairs, decoded as aiohttp does (``+`` is a space).

    None when a value is not valid UTF-8 once decoded (no SDK signs such a query).
    """
    pairs = []
    try:
        for seg in segments:
            key, _, value = seg.raw.partition("=")
            pairs.append((unquote_plus(key, errors="strict"), unquote_plus(value, errors="strict")))
    except UnicodeDecodeError:
        return None
    return pairs


def _query_value(segments: list[_Segment], name: str) -> str | None:
    """The decoded value of a query parameter that must appear at most once."""
    found = [seg for seg in segments if seg.key == name]
    if not found:
        return None
    if len(found) > 1:
        raise AuthError("malformed", f"Duplicate query-string parameter '{name}'.")
    return unquote_plus(found[0].raw.partition("=")[2], errors="replace")


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_SIGV4_TIMESTAMP)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _span_text(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    return f"{seconds // 60} min." if seconds % 60 == 0 else f"{seconds} sec."


def _parse_amz_date(value: str) -> datetime:
    if _AMZ_DATE.match(value):
        try:  # what strptime(value, _SIGV4_TIMESTAMP) gives, without its per-call cost
            return datetime(
                int(value[0:4]),
                int(value[4:6]),
                int(value[6:8]),
                int(value[9:11]),
                int(value[11:13]),
                int(value[13:15]),
                tzinfo=UTC,
            )
        except ValueError:
            pass
    raise AuthError(
        "malformed",
        f"Date must be in ISO-8601 'basic format'. Got '{value}'. "
        "See http://en.wikipedia.org/wiki/ISO_8601",
    )


def _parse_http_date(value: str) -> datetime:
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        moment = None
    if moment is None:
        raise AuthError("malformed", f"Date header is not a valid HTTP date. Got '{value}'.")
    return _utc(moment).replace(microsecond=0)


@dataclass(frozen=True)
class _Scope:
    access_key_id: str
    date: str
    region: str
    service: str


def _parse_scope(credential: str) -> _Scope:
    parts = credential.split("/")
    if len(parts) != 5 or not all(parts[:4]):
        raise AuthError(
            "malformed",
            f"Credential should be of the form '<access key id>/<YYYYMMDD>/<region>/<service>/"
            f"aws4_request', not '{credential}'.",
        )
    if parts[4] != "aws4_request":
        raise AuthError(
            "signature",
            f"Credential should be scoped with a valid terminator: 'aws4_request', "
            f"not '{parts[4]}'.",
        )
    return _Scope(parts[0], parts[1], parts[2], parts[3])


def _scope_of(req: IncomingRequest) -> str | None:
    """The raw credential string of either form, or None."""
    headers = _Headers(req.headers)
    auth = headers.get("authorization")
    if auth is not None:
        _, _, rest = auth.strip().partition(" ")
        for token in _SPLIT_AUTH.split(rest):
            key, eq, value = token.partition("=")
            if eq and key == "Credential":
                return value
        return None
    for seg in _segments(req.query):
        if seg.key == "X-Amz-Credential":
            return unquote_plus(seg.raw.partition("=")[2], errors="replace")
    return None


def signed_service_and_region(req: IncomingRequest) -> tuple[str, str] | None:
    """``(service, region)`` from the request's credential scope, without verifying anything.

    Lets the router tell IAM (``iam``) from STS (``sts``) on one endpoint. None when the request
    carries no well-formed scope. Never raises.
    """
    try:
        credential = _scope_of(req)
        if credential is None:
            return None
        parts = credential.split("/")
        if len(parts) != 5 or not parts[2] or not parts[3]:
            return None
        return parts[3], parts[2]
    except Exception:  # a routing hint must never fail the request
        return None


# --------------------------------------------------------------------------- the signer


class _SignedHeaders:
    """The signed headers, in the two ways botocore's ``canonical_headers`` and
    ``signed_headers`` read them (iteration over the names, ``get_all``), without the cost of
    building its ``email.message``-based ``HTTPHeaders``."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            self._values.setdefault(name, []).append(value)

    def __iter__(self) -> Any:
        return iter(self._values)

    def get_all(self, name: str) -> list[str]:
        return self._values.get(name, [])


class _Signer(SigV4Auth):  # type: ignore[misc]
    """botocore's SigV4 signer, fed exactly what the client signed.

    ``headers_to_sign`` returns every signed header (``signed``, set by :func:`verify`), without
    botocore's client-side blacklist: the client decided what it signed. ``payload`` returns
    the payload hash chosen by :func:`verify` (the body's SHA-256, or ``UNSIGNED-PAYLOAD``); a
    signed ``x-amz-content-sha256`` header, put on the rebuilt request, takes precedence inside
    botocore's ``canonical_request`` exactly as on the client.
    """

    def __init__(self, access_key_id: str, secret: str, service: str, region: str) -> None:
        super().__init__(Credentials(access_key_id, secret), service, region)
        self.payload_hash = ""
        self.signed: list[tuple[str, str]] = []

    def headers_to_sign(self, request: Any) -> Any:
        return _SignedHeaders(self.signed)

    def payload(self, request: Any) -> str:
        return self.payload_hash

    def signature(self, string_to_sign: str, request: Any) -> str:
        """botocore's ``signature``, with the derived signing key kept per (secret, day,
        region, service) as every SDK keeps it: the same four ``_sign`` steps, once a day
        instead of on every request."""
        day = request.context["timestamp"][0:8]
        secret = self.credentials.secret_key
        cache_key = (secret, day, self._region_name, self._service_name)
        key = _SIGNING_KEYS.get(cache_key)
        if key is None:
            key = self._sign(f"AWS4{secret}".encode(), day)
            for part in (self._region_name, self._service_name, "aws4_request"):
                key = self._sign(key, part)
            if len(_SIGNING_KEYS) >= _SIGNING_KEYS_KEPT:
                _SIGNING_KEYS.clear()
            _SIGNING_KEYS[cache_key] = key
        signed: str = self._sign(key, string_to_sign, hex=True)
        return signed


#: Derived signing keys (see _Signer.signature), a bounded few.
_SIGNING_KEYS: dict[tuple[str, str, str, str], bytes] = {}
_SIGNING_KEYS_KEPT = 4096


@dataclass(frozen=True)
class _Parsed:
    scope: _Scope
    amz_date: str
    signed_at: datetime
    signed_headers: list[str]
    signature: str
    token: str | None
    presigned: bool
    expires: int | None
    payload_hint: str | None  # X-Amz-Content-Sha256 given as a query parameter (presigned)


def _parse_header_form(auth: str, headers: _Headers) -> _Parsed:
    header = auth
    algorithm, _, rest = auth.strip().partition(" ")
    params: dict[str, str] = {}
    for token in _SPLIT_AUTH.split(rest):
        if not token:
            continue
        key, eq, value = token.partition("=")
        if not eq:
            raise AuthError(
                "malformed",
                f"'{token}' not a valid key=value pair (missing equal-sign) in Authorization "
                f"header: '{header}'.",
            )
        if key in params:
            raise AuthError("malformed", f"Duplicate '{key}' parameter in Authorization header.")
        params[key] = value
    amz_date = headers.get("x-amz-date")
    http_date = headers.get("date")
    problems = [
        f"Authorization header requires '{name}' parameter."
        for name in ("Credential", "Signature", "SignedHeaders")
        if not params.get(name)
    ]
    if amz_date is None and http_date is None:
        problems.append(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
        )
    if problems:
        raise AuthError("incomplete", " ".join([*problems, f"Authorization={header}"]))
    if algorithm != ALGORITHM:
        raise AuthError("incomplete", f"Unsupported AWS 'algorithm': '{algorithm}'.")
    if amz_date is not None:
        amz_date = amz_date.strip()
        signed_at = _parse_amz_date(amz_date)  # checked: the text is its own canonical form
    else:
        signed_at = _parse_http_date(http_date or "")
        amz_date = _stamp(signed_at)
    return _Parsed(
        scope=_parse_scope(params["Credential"]),
        amz_date=amz_date,
        signed_at=signed_at,
        signed_headers=params["SignedHeaders"].split(";"),
        signature=params["Signature"],
        token=headers.get("x-amz-security-token"),
        presigned=False,
        expires=None,
        payload_hint=None,
    )


_PRESIGNED_REQUIRED: Final = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Date",
    "X-Amz-SignedHeaders",
    "X-Amz-Expires",
)


_PRESIGNED_MARKERS: Final = frozenset({"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature"})


def _parse_query_form(segments: list[_Segment], headers: _Headers) -> _Parsed:
    values = {name: _query_value(segments, name) for name in _PRESIGNED_REQUIRED}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise AuthError(
            "incomplete",
            " ".join(
                f"AWS query-string parameters must include '{name}'. "
                "Re-examine the query-string parameters."
                for name in missing
            ),
        )
    algorithm = values["X-Amz-Algorithm"] or ""
    if algorithm != ALGORITHM:
        raise AuthError("incomplete", f"Unsupported AWS 'algorithm': '{algorithm}'.")
    expires_text = values["X-Amz-Expires"] or ""
    if not expires_text.isascii() or not expires_text.isdigit():
        raise AuthError("malformed", "X-Amz-Expires should be a number")
    expires = int(expires_text)
    if expires > MAX_PRESIGNED_EXPIRES:
        raise AuthError(
            "malformed",
            f"X-Amz-Expires must be less than a week (in seconds) that is {MAX_PRESIGNED_EXPIRES}",
        )
    signed_at = _parse_amz_date(values["X-Amz-Date"] or "")
    token = _query_value(segments, "X-Amz-Security-Token")
    return _Parsed(
        scope=_parse_scope(values["X-Amz-Credential"] or ""),
        amz_date=_stamp(signed_at),
        signed_at=signed_at,
        signed_headers=(values["X-Amz-SignedHeaders"] or "").split(";"),
        signature=values["X-Amz-Signature"] or "",
        token=token if token is not None else headers.get("x-amz-security-token"),
        presigned=True,
        expires=expires,
        payload_hint=_query_value(segments, "X-Amz-Content-Sha256"),
    )


def _check_time(parsed: _Parsed, now: datetime, max_skew: timedelta) -> None:
    if parsed.scope.date != parsed.amz_date[:8]:
        raise AuthError(
            "signature",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{parsed.scope.date}' != '{parsed.amz_date[:8]}', "
            f"from '{parsed.amz_date}'.",
        )
    signed_at, skew = parsed.signed_at, _span_text(max_skew)
    if signed_at > now + max_skew:
        raise AuthError(
            "expired",
            f"Signature not yet current: {parsed.amz_date} is still later than "
            f"{_stamp(now + max_skew)} ({_stamp(now)} + {skew})",
        )
    if parsed.presigned:
        if parsed.expires is not None and now > signed_at + timedelta(seconds=parsed.expires):
            raise AuthError("expired", MSG_PRESIGNED_EXPIRED)
    elif signed_at < now - max_skew:
        raise AuthError(
            "expired",
            f"Signature expired: {parsed.amz_date} is now earlier than "
            f"{_stamp(now - max_skew)} ({_stamp(now)} - {skew})",
        )


def _check_token(parsed: _Parsed, cred: Credential, now: datetime) -> None:
    given = parsed.token
    if cred.session_token is None:
        if given is not None:
            raise AuthError("token_invalid", MSG_TOKEN_INVALID)
    elif given is None or not hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), cred.session_token.encode("utf-8", "surrogatepass")
    ):
        raise AuthError("token_invalid", MSG_TOKEN_INVALID)
    if cred.expiration is not None and now >= _utc(cred.expiration):
        raise AuthError("token_expired", MSG_TOKEN_EXPIRED)


def _payload_candidates(parsed: _Parsed, headers: _Headers, body: bytes) -> list[str]:
    """The payload hashes the client may have signed with.

    A signed ``x-amz-content-sha256`` (or, presigned, ``X-Amz-Content-Sha256``) is used as
    given, after checking a hex value against the body. ``UNSIGNED-PAYLOAD`` is accepted only
    for an empty body: the broker's APIs carry their action in the body, which must be signed.
    Presigned URLs without a hint may have been signed over the body's hash (botocore) or over
    ``UNSIGNED-PAYLOAD`` (other SDKs).
    """
    body_hash = hashlib.sha256(body).hexdigest()
    if "x-amz-content-sha256" in parsed.signed_headers:
        hint: str | None = ",".join(v.strip() for v in headers.get_all("x-amz-content-sha256"))
    else:
        hint = parsed.payload_hint
    if hint is None:
        if parsed.presigned and not body:
            return [body_hash, UNSIGNED_PAYLOAD]
        return [body_hash]
    if _HEX64.match(hint):
        if hint.lower() != body_hash:
            raise AuthError("signature", MSG_SIGNATURE)
        return [hint]
    if hint == UNSIGNED_PAYLOAD and not body:
        return [hint]
    raise AuthError("signature", MSG_SIGNATURE)


def _query_candidates(
    segments: list[_Segment], presigned: bool
) -> list[tuple[list[tuple[str, str]], str]]:
    """How the client may have canonicalised the query: ``(params, raw_query)`` pairs.

    First the decoded parameters (canonicalised by botocore's ``_canonical_query_string_params``,
    as every SDK signs), then the raw query as received (botocore signs a URL's own query
    verbatim). Both authenticate what the broker parses; :func:`verify` skips a candidate whose
    canonical request it has already tried.
    """
    kept = [seg for seg in segments if not (presigned and seg.key == "X-Amz-Signature")]
    raw = "&".join(seg.raw for seg in kept)
    candidates: list[tuple[list[tuple[str, str]], str]] = []
    decoded = _decoded_pairs(kept)
    if decoded is not None:
        candidates.append((decoded, ""))
    candidates.append(([], raw))
    return candidates


def _compute(
    signer: _Signer,
    req: IncomingRequest,
    headers: list[tuple[str, str]],
    amz_date: str,
    params: list[tuple[str, str]],
    raw_query: str,
) -> tuple[str, str, str]:
    url = _BASE_URL + req.path + (f"?{raw_query}" if raw_query else "")
    request = AWSRequest(method=req.method, url=url, params=params)
    signer.signed = headers
    for name, value in headers:
        if name == "x-amz-content-sha256":  # canonical_request reads it from the request
            request.headers[name] = value
    request.context["timestamp"] = amz_date
    canonical: str = signer.canonical_request(request)
    string_to_sign: str = signer.string_to_sign(request, canonical)
    signature: str = signer.signature(string_to_sign, request)
    return canonical, string_to_sign, signature


def scope_region_message(region: str) -> str:
    """AWS's text for a credential scope naming a region the endpoint does not serve."""
    return f"Credential should be scoped to a valid region, not '{region}'."


def scope_service_message(service: str) -> str:
    """AWS's text for a credential scope naming another service (``service``: the right one)."""
    return f"Credential should be scoped to correct service: '{service}'."


def check_scope(
    scope_region: str, scope_service: str, regions: Collection[str], service: str
) -> None:
    """Raise ``AuthError("signature")`` unless the scope names one of ``regions`` and
    ``service``. The region is checked first (AWS reports a wrong region before a wrong
    service); the region message quotes what was sent, the service message what is expected."""
    if scope_region not in regions:
        raise AuthError("signature", scope_region_message(scope_region))
    if scope_service != service:
        raise AuthError("signature", scope_service_message(service))


def verify(
    req: IncomingRequest,
    lookup: Callable[[str], Credential | None],
    now: datetime,
    *,
    max_skew: timedelta = timedelta(minutes=5),
    regions: Collection[str] | None = None,
    service: str | None = None,
) -> Verified:
    """Authenticate ``req`` with SigV4 as AWS does, or raise :class:`AuthError`.

    ``lookup`` maps an access key id to its :class:`Credential` (None if unknown or inactive).
    ``now`` is the current time (naive means UTC). Header-signed requests must be within
    ``max_skew`` of ``now``; presigned ones must not be past ``X-Amz-Date + X-Amz-Expires``
    (nor more than ``max_skew`` in the future).

    With ``regions`` and ``service`` given, the credential scope must name one of
    ``regions`` and exactly ``service`` (:func:`check_scope`), checked once the request is
    parsed, before the key is looked up or the signature computed. Without them the signed
    region and service are returned unchecked.
    """
    now = _utc(now)
    headers = _Headers(req.headers)
    segments = _segments(req.query)
    auth = headers.get("authorization")
    if auth is not None:
        parsed = _parse_header_form(auth, headers)
    elif any(seg.key in _PRESIGNED_MARKERS for seg in segments):
        parsed = _parse_query_form(segments, headers)
    else:
        raise AuthError("missing", MSG_MISSING)

    signed = parsed.signed_headers
    if "host" not in signed:
        raise AuthError("incomplete", MSG_HOST_UNSIGNED)
    if regions is not None or service is not None:
        check_scope(
            parsed.scope.region,
            parsed.scope.service,
            (parsed.scope.region,) if regions is None else regions,
            service or parsed.scope.service,
        )
    _check_time(parsed, now, max_skew)

    cred = lookup(parsed.scope.access_key_id)
    if cred is None:
        raise AuthError("unknown_key", MSG_TOKEN_INVALID)
    _check_token(parsed, cred, now)

    # Only a lowercase hex signature can ever match; anything else cannot and is not parsed.
    if not _SIGNATURE_HEX.match(parsed.signature) or "?" in req.path or "#" in req.path:
        raise AuthError("signature", MSG_SIGNATURE)
    # The rebuilt request holds exactly the signed headers; a signed header that is absent
    # (or a SignedHeaders list botocore would not have produced) cannot match.
    if any(name not in headers or name != name.strip().lower() or not name for name in signed):
        raise AuthError("signature", MSG_SIGNATURE)
    rebuilt = [(name, value) for name in signed for value in headers.get_all(name)]
    payloads = _payload_candidates(parsed, headers, req.body)

    first: tuple[str, str] | None = None
    seen: set[str] = set()
    for params, raw_query in _query_candidates(segments, parsed.presigned):
        for payload_hash in payloads:
            signer = _Signer(
                parsed.scope.access_key_id,
                cred.secret_access_key,
                parsed.scope.service,
                parsed.scope.region,
            )
            signer.payload_hash = payload_hash
            try:
                canonical, string_to_sign, expected = _compute(
                    signer, req, rebuilt, parsed.amz_date, params, raw_query
                )
            except (ValueError, TypeError, UnicodeError, LookupError):
                continue
            if canonical in seen:
                continue
            seen.add(canonical)
            if first is None:
                first = (canonical, string_to_sign)
            if hmac.compare_digest(expected, parsed.signature):
                return Verified(
                    access_key_id=parsed.scope.access_key_id,
                    region=parsed.scope.region,
                    service=parsed.scope.service,
                    signed_at=parsed.signed_at,
                    session_token=parsed.token,
                    presigned=parsed.presigned,
                )
    raise AuthError(
        "signature",
        MSG_SIGNATURE,
        canonical_request=first[0] if first else None,
        string_to_sign=first[1] if first else None,
    )
