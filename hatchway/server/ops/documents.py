"""SSM documents and tags (AWS JSON 1.1): documents, their versions, and resource tags.

Documents live in two tables: ``documents`` (one row per name: owner, type, default and latest
version, ``data`` = ``{"tags": [{"Key", "Value"}], "max_version": n}``) and
``document_versions`` (one row per version: content as submitted, its format, ``data`` =
hash, schemaVersion, VersionName, DisplayName, TargetType, description, parameter summary,
platform types). AWS-owned Session documents are rows with owner ``"Amazon"``, written by
:func:`seed_documents`; they are read-only. ``SSM-SessionManagerRunShell`` is an ordinary
account document that does not exist until created (sessions use
:func:`hatchway.ssm.documents.default_preferences` meanwhile).

Every handler authorizes against the document ARN (empty account for AWS-owned documents) with
``ssm:DocumentType`` and the document's tags as ``aws:ResourceTag/<k>`` / ``ssm:resourceTag/<k>``
before it reports whether the document exists, so a caller without permission learns nothing.
See docs/session-documents.md.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

from hatchway.server.base.errors import ServiceError
from hatchway.server.front.call import Call, operation
from hatchway.server.runtime.state import ServerState
from hatchway.server.store import Conflict, Record, Store
from hatchway.server.store import schema as t
from hatchway.ssm import documents as sd
from hatchway.ssm.arns import (
    DEFAULT_SESSION_DOCUMENT,
    InvalidTarget,
    document_arn,
    is_aws_owned_document,
    target_arn,
)
from hatchway.ssm.authorize import resource_tag_context

AMAZON = "Amazon"
MAX_TAGS = 50
MAX_ACCOUNT_DOCUMENTS = 500
MAX_VERSIONS = 1000
DEFAULT_PAGE = 50
NOT_FOUND = "No matching value was found for Name."
BAD_VERSION = "The document version is not valid or does not exist."
_SEED_KEY = "seeded:" + DEFAULT_SESSION_DOCUMENT
_UNSEED_KEY = "unseeded:" + DEFAULT_SESSION_DOCUMENT


def _now() -> datetime:
    return datetime.now(UTC)


# -- errors -------------------------------------------------------------------------------------


def _invalid_document() -> ServiceError:
    return ServiceError("InvalidDocument", NOT_FOUND)


def _invalid_version() -> ServiceError:
    return ServiceError("InvalidDocumentVersion", BAD_VERSION)


def _validation(message: str) -> ServiceError:
    return ServiceError("ValidationException", message)


def _from_document_error(exc: sd.DocumentError) -> ServiceError:
    return ServiceError(exc.code, exc.message)


def _aws_owned(action: str) -> ServiceError:
    return ServiceError(
        "InvalidDocumentOperation",
        f"Documents owned by Amazon are read-only: you can't {action} them.",
    )


# -- records ------------------------------------------------------------------------------------


def _tags(row: Record | None) -> dict[str, str]:
    if row is None:
        return {}
    raw = row["data"].get("tags", [])
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    return {str(x["Key"]): str(x["Value"]) for x in raw}


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _document_name(call: Call, name: str) -> str | None:
    """The document name behind ``name`` (a name or the ARN of one of ours), else ``None``."""
    if not name.startswith("arn:"):
        return name
    parts = name.split(":", 5)
    if len(parts) != 6 or parts[2] != "ssm" or not parts[5].startswith("document/"):
        return None
    if parts[3] != call.region or parts[4] not in ("", call.account):
        return None
    return parts[5][len("document/") :]


def _get_doc(store: Store, name: str | None, conn: Connection | None = None) -> Record | None:
    return store.get(t.documents, conn, name=name) if name else None


def _arn(call: Call, name: str, row: Record | None = None) -> str:
    if row is not None and row["owner"] == AMAZON:
        return f"arn:aws:ssm:{call.region}::document/{name}"
    return document_arn(name, call.region, call.account)


def _doc_context(row: Record | None, document_type: str | None = None) -> dict[str, object]:
    ctx: dict[str, object] = {}
    dtype = document_type or (row["document_type"] if row else None)
    if dtype:
        ctx["ssm:DocumentType"] = dtype
    ctx.update(resource_tag_context(_tags(row)))
    return ctx


def _request_tag_context(tags: Mapping[str, str]) -> dict[str, object]:
    ctx: dict[str, object] = {f"aws:RequestTag/{k}": v for k, v in tags.items()}
    ctx["aws:TagKeys"] = list(tags)
    return ctx


def _authorize_doc(
    call: Call,
    action: str,
    name: str,
    row: Record | None,
    extra: Mapping[str, object] | None = None,
) -> None:
    ctx = _doc_context(row)
    if extra:
        ctx.update(extra)
    call.authorize(action, _arn(call, name, row), ctx)


def _lookup(call: Call, action: str, raw_name: str) -> tuple[str, Record]:
    """Resolve, authorize (with the document's tags), then require existence."""
    name = _document_name(call, raw_name)
    row = _get_doc(call.store, name)
    _authorize_doc(call, action, name or raw_name, row)
    if row is None or name is None:
        raise _invalid_document()
    return name, row


MAX_VERSION = 2**63 - 1


def _version_number(doc: Record, document_version: str | None) -> int:
    if document_version in (None, "", "$DEFAULT"):
        return int(doc["default_version"])
    if document_version == "$LATEST":
        return int(doc["latest_version"])
    assert document_version is not None
    if not (document_version.isascii() and document_version.isdigit()):
        raise _invalid_version()
    number = int(document_version)
    if number > MAX_VERSION:  # no such version; the store's integers stop at 2**63 - 1
        raise _invalid_version()
    return number


def _pick_version(
    store: Store,
    doc: Record,
    document_version: str | None,
    version_name: str | None,
    conn: Connection | None = None,
) -> Record:
    """The version a request names by ``DocumentVersion`` and/or ``VersionName``."""
    if version_name and document_version is None:
        for v in store.select(t.document_versions, conn=conn, name=doc["name"]):
            if v["data"].get("version_name") == version_name:
                return v
        raise _invalid_version()
    row = store.get(
        t.document_versions, conn, name=doc["name"], version=_version_number(doc, document_version)
    )
    if row is None:
        raise _invalid_version()
    if version_name and row["data"].get("version_name") != version_name:
        raise _invalid_version()
    return row


def _version_data(
    doc: dict[str, Any],
    document_type: str,
    content: str,
    params: Mapping[str, Any],
    previous: Record | None = None,
) -> dict[str, Any]:
    prev = previous["data"] if previous else {}
    data: dict[str, Any] = {
        "hash": sd.content_hash(content),
        "schema_version": sd.schema_version(doc),
        "description": doc.get("description") if isinstance(doc.get("description"), str) else None,
        "parameters": sd.parameter_summary(doc),
        "platform_types": sd.platform_types(doc, document_type),
        "version_name": params.get("VersionName"),
        "display_name": params.get("DisplayName", prev.get("display_name")),
        "target_type": params.get("TargetType", prev.get("target_type")),
    }
    for key, member in (("requires", "Requires"), ("attachments", "Attachments")):
        if params.get(member):
            data[key] = params[member]
    return data


def _prune(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _description(doc: Record, version: Record, status: str = "Active") -> dict[str, Any]:
    vd = version["data"]
    return _prune(
        {
            "Sha1": None,
            "Hash": vd.get("hash"),
            "HashType": "Sha256",
            "Name": doc["name"],
            "DisplayName": vd.get("display_name"),
            "VersionName": vd.get("version_name"),
            "Owner": doc["owner"],
            "CreatedDate": version["created"],
            "Status": status,
            "DocumentVersion": str(version["version"]),
            "Description": vd.get("description"),
            "Parameters": vd.get("parameters") or None,
            "PlatformTypes": vd.get("platform_types") or None,
            "DocumentType": doc["document_type"],
            "SchemaVersion": vd.get("schema_version"),
            "LatestVersion": str(doc["latest_version"]),
            "DefaultVersion": str(doc["default_version"]),
            "DocumentFormat": version["format"],
            "TargetType": vd.get("target_type"),
            "Tags": _tag_list(_tags(doc)),
            "Requires": vd.get("requires"),
        }
    )


def _parse_and_validate(content: str, document_format: str, document_type: str) -> dict[str, Any]:
    if len(content.encode("utf-8")) > sd.MAX_CONTENT_BYTES:
        raise ServiceError("MaxDocumentSizeExceeded", "The size limit of a document is 64 KB.")
    try:
        sd.check_format(document_type, document_format)
        doc = sd.parse_content(content, document_format)
        sd.validate_document(doc, document_type)
    except sd.DocumentError as exc:
        raise _from_document_error(exc) from exc
    return doc


def _check_tags(tags: Mapping[str, str]) -> None:
    for k, v in tags.items():
        problem = sd.validate_tag(k, v)
        if problem:
            raise _validation(problem)


def _tags_param(raw: list[dict[str, Any]] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in raw or []:
        out[str(item.get("Key", ""))] = str(item.get("Value", ""))
    _check_tags(out)
    return out


def _insert_document(
    store: Store,
    conn: Connection,
    *,
    name: str,
    owner: str,
    document_type: str,
    content: str,
    document_format: str,
    created: datetime,
    version_data: dict[str, Any],
    tags: Mapping[str, str],
) -> None:
    store.insert(
        t.documents,
        {
            "name": name,
            "owner": owner,
            "document_type": document_type,
            "default_version": 1,
            "latest_version": 1,
            "created": created,
            "data": {"tags": _tag_list(tags), "max_version": 1},
        },
        conn,
    )
    store.insert(
        t.document_versions,
        {
            "name": name,
            "version": 1,
            "content": content,
            "format": document_format,
            "created": created,
            "data": version_data,
        },
        conn,
    )


# -- pagination ---------------------------------------------------------------------------------


def _token(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": value}).encode()).decode()


def _untoken(token: str | None) -> Any:
    if token is None:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise ServiceError("InvalidNextToken", "The specified token isn't valid.") from exc
    if not isinstance(data, dict) or "after" not in data:
        raise ServiceError("InvalidNextToken", "The specified token isn't valid.")
    return data["after"]


# -- sessions' view -----------------------------------------------------------------------------


@dataclass
class ResolvedDocument:
    """A document version as StartSession needs it."""

    name: str
    arn: str
    owner: str
    document_type: str
    version: int
    content: str
    document_format: str
    document: dict[str, Any]
    tags: dict[str, str]


def load_document(
    state: ServerState,
    name: str,
    document_version: str | None = None,
    version_name: str | None = None,
) -> ResolvedDocument | None:
    """The default (or named) version of ``name``, parsed; ``None`` if it does not exist."""
    store: Store = state.store
    row = _get_doc(store, name)
    if row is None:
        return None
    try:
        v = _pick_version(store, row, document_version, version_name)
    except ServiceError:
        return None
    arn = (
        f"arn:aws:ssm:{state.config.region}::document/{name}"
        if row["owner"] == AMAZON
        else document_arn(name, state.config.region, state.config.account_id)
    )
    return ResolvedDocument(
        name,
        arn,
        row["owner"],
        row["document_type"],
        int(v["version"]),
        v["content"],
        v["format"],
        sd.parse_content(v["content"], v["format"]),
        _tags(row),
    )


# -- seeding ------------------------------------------------------------------------------------


def _seed(
    store: Store,
    name: str,
    owner: str,
    content: str,
    created: datetime,
    document_type: str = "Session",
) -> None:
    doc = sd.parse_content(content, "JSON")
    data = _version_data(doc, document_type, content, {})
    try:
        with store.transaction() as c:
            existing = _get_doc(store, name, c)
            if existing is None:
                _insert_document(
                    store,
                    c,
                    name=name,
                    owner=owner,
                    document_type=document_type,
                    content=content,
                    document_format="JSON",
                    created=created,
                    version_data=data,
                    tags={},
                )
            elif existing["owner"] == AMAZON and owner == AMAZON:
                v1 = store.get(t.document_versions, c, name=name, version=1)
                if v1 is not None and v1["content"] != content:  # a newer Hatchway's copy
                    store.update(
                        t.document_versions,
                        {"name": name, "version": 1},
                        {"content": content, "format": "JSON", "data": data},
                        c,
                    )
    except Conflict:
        pass  # another process seeded it first


def seed_documents(state: ServerState) -> None:
    """AWS-owned Session documents (idempotent); ``SSM-SessionManagerRunShell`` is not seeded.

    AWS-owned documents are (re)written to Hatchway's copy on every call. As on AWS, the
    account's preferences document does not exist until someone creates it (AWS's documented
    ``create-document`` step, Terraform, CloudFormation); sessions use the built-in defaults
    (:func:`hatchway.ssm.documents.default_preferences`) meanwhile. Brokers that seeded it
    before (meta key ``seeded:SSM-SessionManagerRunShell``) lose the copy once, when it was
    never edited: one version, the seeded content, no tags (:func:`_unseed_preferences`).
    """
    store: Store = state.store
    for aws in sd.aws_documents().values():
        _seed(store, aws.name, AMAZON, aws.content, aws.created, aws.document_type)
    if store.meta_get(_UNSEED_KEY) != "1":
        if store.meta_get(_SEED_KEY) == "1":
            _unseed_preferences(store, state.config.account_id)
        store.meta_set(_UNSEED_KEY, "1")


def _unseed_preferences(store: Store, account: str) -> None:
    """Remove a seeded ``SSM-SessionManagerRunShell`` nobody edited (a migration, run once)."""
    seeded = sd.render_content(sd.default_preferences(), "JSON")
    with store.transaction() as c:
        row = _get_doc(store, DEFAULT_SESSION_DOCUMENT, c)
        if row is None or row["owner"] != account or row["data"].get("tags"):
            return
        if int(row["data"].get("max_version", 1)) != 1:
            return
        versions = store.select(t.document_versions, conn=c, name=DEFAULT_SESSION_DOCUMENT)
        if len(versions) != 1 or versions[0]["content"] != seeded:
            return
        store.delete(t.document_versions, c, name=DEFAULT_SESSION_DOCUMENT)
        store.delete(t.documents, c, name=DEFAULT_SESSION_DOCUMENT)


# -- documents ----------------------------------------------------------------------------------


@operation("ssm", "CreateDocument")
async def create_document(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name: str = params["Name"]
    content: str = params["Content"]
    document_type: str = params.get("DocumentType") or "Command"
    document_format: str = params.get("DocumentFormat") or "JSON"
    tags = _tags_param(params.get("Tags"))
    store: Store = call.store
    arn = document_arn(name, call.region, call.account)
    ctx: dict[str, object] = {"ssm:DocumentType": document_type, **_request_tag_context(tags)}
    call.authorize("ssm:CreateDocument", arn, ctx)
    if tags:
        call.authorize("ssm:AddTagsToResource", arn, ctx)
    if is_aws_owned_document(name):
        raise _validation(
            f"Invalid document name {name}: names can't start with the reserved "
            "prefixes aws, amazon or amzn."
        )
    if len(tags) > MAX_TAGS:
        raise ServiceError("TooManyTagsError", "")
    doc = _parse_and_validate(content, document_format, document_type)
    if _get_doc(store, name) is not None:
        raise ServiceError(
            "DocumentAlreadyExists", f"Document with same name {name} already exists"
        )
    if store.count(t.documents, owner=call.account) >= MAX_ACCOUNT_DOCUMENTS:
        raise ServiceError(
            "DocumentLimitExceeded",
            f"You can have at most {MAX_ACCOUNT_DOCUMENTS} active SSM documents.",
        )
    now = _now()
    data = _version_data(doc, document_type, content, params)
    try:
        with store.transaction() as c:
            _insert_document(
                store,
                c,
                name=name,
                owner=call.account,
                document_type=document_type,
                content=content,
                document_format=document_format,
                created=now,
                version_data=data,
                tags=tags,
            )
    except Conflict as exc:
        raise ServiceError(
            "DocumentAlreadyExists", f"Document with same name {name} already exists"
        ) from exc
    row = _get_doc(store, name)
    version = store.get(t.document_versions, name=name, version=1)
    assert row is not None and version is not None
    return {"DocumentDescription": _description(row, version, "Creating")}


@operation("ssm", "GetDocument")
async def get_document(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name, row = _lookup(call, "ssm:GetDocument", params["Name"])
    v = _pick_version(call.store, row, params.get("DocumentVersion"), params.get("VersionName"))
    want = params.get("DocumentFormat") or v["format"]
    try:
        content = sd.convert_content(v["content"], v["format"], want)
    except sd.DocumentError as exc:
        raise _from_document_error(exc) from exc
    vd = v["data"]
    return _prune(
        {
            "Name": name,
            "CreatedDate": v["created"],
            "DisplayName": vd.get("display_name"),
            "VersionName": vd.get("version_name"),
            "DocumentVersion": str(v["version"]),
            "Status": "Active",
            "Content": content,
            "DocumentType": row["document_type"],
            "DocumentFormat": want,
            "Requires": vd.get("requires"),
        }
    )


@operation("ssm", "DescribeDocument")
async def describe_document(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    _name, row = _lookup(call, "ssm:DescribeDocument", params["Name"])
    v = _pick_version(call.store, row, params.get("DocumentVersion"), params.get("VersionName"))
    return {"Document": _description(row, v)}


_OWNER_VALUES = ("Self", "Amazon", "Private", "Public", "ThirdParty", "All")
_FILTER_KEYS = (
    "Owner",
    "DocumentType",
    "Name",
    "PlatformTypes",
    "TargetType",
    "SearchKeyword",
    "tag-key",
)
_LEGACY_KEYS = ("Name", "Owner", "PlatformTypes", "DocumentType")


def _filters(params: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    legacy = params.get("DocumentFilterList")
    modern = params.get("Filters")
    if legacy and modern:
        raise _validation(
            "DocumentFilterList and Filters can't be used together. "
            "DocumentFilterList is deprecated: use Filters."
        )
    out: list[tuple[str, list[str]]] = []
    if legacy:
        for f in legacy:
            if f.get("key") not in _LEGACY_KEYS:
                raise ServiceError("InvalidFilterKey", "")
            out.append((f["key"], [f.get("value", "")]))
    for f in modern or []:
        key = f.get("Key", "")
        if key not in _FILTER_KEYS and not (key.startswith("tag:") and len(key) > 4):
            raise ServiceError("InvalidFilterKey", "")
        out.append((key, list(f.get("Values") or [])))
    owners = [v for k, vals in out if k == "Owner" for v in vals]
    if len(owners) > 1:
        raise _validation("Only one Owner can be specified in the filters.")
    for v in owners:
        if v not in _OWNER_VALUES:
            raise _validation(
                f"Invalid Owner filter value {v}. Valid values: {', '.join(_OWNER_VALUES)}."
            )
    return out


def _owner_matches(call: Call, row: Record, owner: str) -> bool:
    if owner in ("Self", "Private"):
        return bool(row["owner"] == call.account)
    if owner == "Amazon":
        return bool(row["owner"] == AMAZON)
    return owner == "All"  # Public and ThirdParty: Hatchway has no shared documents


def _matches(
    call: Call, row: Record, default: Record | None, filters: list[tuple[str, list[str]]]
) -> bool:
    tags = _tags(row)
    vd = default["data"] if default else {}
    name: str = row["name"]
    for key, values in filters:
        if not values:
            continue
        if key == "Owner":
            ok = _owner_matches(call, row, values[0])
        elif key == "DocumentType":
            ok = row["document_type"] in values
        elif key == "Name":
            ok = any(name.startswith(v) for v in values)
        elif key == "SearchKeyword":
            ok = any(v.lower() in name.lower() for v in values)
        elif key == "PlatformTypes":
            ok = bool(set(values) & set(vd.get("platform_types") or []))
        elif key == "TargetType":
            ok = vd.get("target_type") in values
        elif key == "tag-key":
            ok = bool(set(values) & set(tags))
        else:  # tag:<key>
            ok = tags.get(key[4:]) in values
        if not ok:
            return False
    return True


@operation("ssm", "ListDocuments")
async def list_documents(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    call.authorize("ssm:ListDocuments", "*")
    filters = _filters(params)
    after = _untoken(params.get("NextToken"))
    if after is not None and not isinstance(after, str):
        raise ServiceError("InvalidNextToken", "The specified token isn't valid.")
    limit = int(params.get("MaxResults") or DEFAULT_PAGE)
    store: Store = call.store
    rows = sorted(store.select(t.documents), key=lambda r: str(r["name"]))
    needs_version = any(k in ("PlatformTypes", "TargetType") for k, _ in filters)
    page: list[dict[str, Any]] = []
    more = False
    for row in rows:
        if after is not None and row["name"] <= after:
            continue
        default = (
            store.get(t.document_versions, name=row["name"], version=row["default_version"])
            if needs_version
            else None
        )
        if not _matches(call, row, default, filters):
            continue
        if len(page) == limit:
            more = True
            break
        if default is None:
            default = store.get(
                t.document_versions, name=row["name"], version=row["default_version"]
            )
        vd = default["data"] if default else {}
        page.append(
            _prune(
                {
                    "Name": row["name"],
                    "CreatedDate": row["created"],
                    "DisplayName": vd.get("display_name"),
                    "Owner": row["owner"],
                    "VersionName": vd.get("version_name"),
                    "PlatformTypes": vd.get("platform_types"),
                    "DocumentVersion": str(row["default_version"]),
                    "DocumentType": row["document_type"],
                    "SchemaVersion": vd.get("schema_version"),
                    "DocumentFormat": default["format"] if default else None,
                    "TargetType": vd.get("target_type"),
                    "Tags": _tag_list(_tags(row)),
                    "Requires": vd.get("requires"),
                }
            )
        )
    out: dict[str, Any] = {"DocumentIdentifiers": page}
    if more and page:
        out["NextToken"] = _token(page[-1]["Name"])
    return out


@operation("ssm", "ListDocumentVersions")
async def list_document_versions(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name, row = _lookup(call, "ssm:ListDocumentVersions", params["Name"])
    after = _untoken(params.get("NextToken"))
    if after is not None and (not isinstance(after, int) or isinstance(after, bool)):
        raise ServiceError("InvalidNextToken", "The specified token isn't valid.")
    limit = int(params.get("MaxResults") or DEFAULT_PAGE)
    versions = sorted(
        call.store.select(t.document_versions, name=name), key=lambda v: int(v["version"])
    )
    if after is not None:
        versions = [v for v in versions if int(v["version"]) > after]
    page, rest = versions[:limit], versions[limit:]
    out: dict[str, Any] = {
        "DocumentVersions": [
            _prune(
                {
                    "Name": name,
                    "DisplayName": v["data"].get("display_name"),
                    "DocumentVersion": str(v["version"]),
                    "VersionName": v["data"].get("version_name"),
                    "CreatedDate": v["created"],
                    "IsDefaultVersion": int(v["version"]) == int(row["default_version"]),
                    "DocumentFormat": v["format"],
                    "Status": "Active",
                }
            )
            for v in page
        ]
    }
    if rest:
        out["NextToken"] = _token(int(page[-1]["version"]))
    return out


@operation("ssm", "UpdateDocument")
async def update_document(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name, row = _lookup(call, "ssm:UpdateDocument", params["Name"])
    if row["owner"] == AMAZON:
        raise _aws_owned("update")
    store: Store = call.store
    latest = int(row["latest_version"])
    requested = params.get("DocumentVersion")
    if requested not in (None, "$LATEST") and _version_number(row, requested) != latest:
        raise _invalid_version()
    document_format: str = params.get("DocumentFormat") or "JSON"
    content: str = params["Content"]
    doc = _parse_and_validate(content, document_format, row["document_type"])
    previous = store.get(t.document_versions, name=name, version=latest)
    assert previous is not None
    try:
        same = sd.parse_content(previous["content"], previous["format"]) == doc
    except sd.DocumentError:
        same = previous["content"] == content
    if same and params.get("TargetType", previous["data"].get("target_type")) == previous[
        "data"
    ].get("target_type"):
        raise ServiceError(
            "DuplicateDocumentContent",
            "The content of the association document matches another document. "
            "Change the content of the document and try again.",
        )
    version_name = params.get("VersionName")
    versions = store.select(t.document_versions, name=name)
    if version_name and any(v["data"].get("version_name") == version_name for v in versions):
        raise ServiceError(
            "DuplicateDocumentVersionName", "The specified version name is a duplicate."
        )
    if len(versions) >= MAX_VERSIONS:
        raise ServiceError(
            "DocumentVersionLimitExceeded",
            "The document has too many versions. Delete one or more document "
            "versions and try again.",
        )
    new = max(latest, int(row["data"].get("max_version", latest))) + 1
    data = _version_data(doc, row["document_type"], content, params, previous)
    try:
        with store.transaction() as c:
            changed = store.update(
                t.documents,
                {"name": name},
                {"latest_version": new, "data": {**row["data"], "max_version": new}},
                c,
                t.documents.c.latest_version == latest,
            )
            if changed != 1:
                raise Conflict(name)
            store.insert(
                t.document_versions,
                {
                    "name": name,
                    "version": new,
                    "content": content,
                    "format": document_format,
                    "created": _now(),
                    "data": data,
                },
                c,
            )
    except Conflict as exc:
        raise ServiceError(
            "TooManyUpdates",
            "There are concurrent updates for a resource that supports one update at a time.",
        ) from exc
    fresh = _get_doc(store, name)
    version = store.get(t.document_versions, name=name, version=new)
    assert fresh is not None and version is not None
    return {"DocumentDescription": _description(fresh, version, "Updating")}


@operation("ssm", "UpdateDocumentDefaultVersion")
async def update_document_default_version(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name, row = _lookup(call, "ssm:UpdateDocumentDefaultVersion", params["Name"])
    if row["owner"] == AMAZON:
        raise _aws_owned("change the default version of")
    store: Store = call.store
    version = store.get(
        t.document_versions, name=name, version=_version_number(row, params["DocumentVersion"])
    )
    if version is None:
        raise _invalid_version()
    store.update(t.documents, {"name": name}, {"default_version": int(version["version"])})
    return {
        "Description": _prune(
            {
                "Name": name,
                "DefaultVersion": str(version["version"]),
                "DefaultVersionName": version["data"].get("version_name"),
            }
        )
    }


@operation("ssm", "DeleteDocument")
async def delete_document(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name, row = _lookup(call, "ssm:DeleteDocument", params["Name"])
    if row["owner"] == AMAZON:
        raise _aws_owned("delete")
    store: Store = call.store
    document_version = params.get("DocumentVersion")
    version_name = params.get("VersionName")
    with store.transaction() as c:
        if document_version is None and version_name is None:
            store.delete(t.document_versions, c, name=name)
            store.delete(t.documents, c, name=name)
            return {}
        try:
            v = _pick_version(store, row, document_version, version_name, c)
        except ServiceError as exc:
            raise _invalid_document() from exc
        number = int(v["version"])
        if number == int(row["default_version"]):
            raise ServiceError(
                "InvalidDocumentOperation", "Default version of the document can't be deleted."
            )
        store.delete(t.document_versions, c, name=name, version=number)
        remaining = [
            int(x["version"]) for x in store.select(t.document_versions, conn=c, name=name)
        ]
        store.update(
            t.documents,
            {"name": name},
            {
                "latest_version": max(remaining),
                "data": {
                    **row["data"],
                    "max_version": max(
                        int(row["data"].get("max_version", 1)), int(row["latest_version"])
                    ),
                },
            },
            c,
        )
    return {}


# -- tags ---------------------------------------------------------------------------------------


@dataclass
class _Tagged:
    table: Any
    keys: dict[str, str]
    arn: str
    row: Record | None
    context: dict[str, object]


def _tagged(
    call: Call, resource_type: str, resource_id: str, conn: Connection | None = None
) -> _Tagged:
    store: Store = call.store
    if resource_type == "Document":
        name = _document_name(call, resource_id)
        row = _get_doc(store, name, conn)
        if row is not None and row["owner"] == AMAZON:
            row = None  # AWS-owned documents can't be tagged
        return _Tagged(
            t.documents,
            {"name": name or resource_id},
            _arn(call, name or resource_id),
            row,
            _doc_context(row),
        )
    if resource_type == "ManagedInstance":
        if not resource_id.startswith("mi-"):
            # AWS: "The ManagedInstance type for this API operation is for on-premises managed
            # nodes. You must specify the name of the managed node in the following format:
            # mi-ID_number" (AddTagsToResource); an EC2 instance's tags are EC2's.
            raise ServiceError("InvalidResourceId", "")
        try:
            arn = target_arn(resource_id, call.region, call.account)
        except InvalidTarget as exc:
            raise ServiceError("InvalidResourceId", "") from exc
        row = store.get(t.instances, conn, instance_id=resource_id)
        if row is not None and row.get("deregistered"):
            row = None
        return _Tagged(
            t.instances,
            {"instance_id": resource_id},
            arn,
            row,
            dict(resource_tag_context(_tags(row))),
        )
    raise ServiceError("InvalidResourceType", "")


def _write_tags(
    call: Call,
    resource_type: str,
    resource_id: str,
    action: str,
    change: Mapping[str, str] | None,
    remove: list[str] | None,
) -> None:
    store: Store = call.store
    target = _tagged(call, resource_type, resource_id)
    ctx = dict(target.context)
    if change is not None:
        ctx.update(_request_tag_context(change))
    else:
        ctx["aws:TagKeys"] = list(remove or [])
    call.authorize(action, target.arn, ctx)
    if target.row is None:
        raise ServiceError("InvalidResourceId", "")
    with store.transaction() as c:
        fresh = _tagged(call, resource_type, resource_id, c).row
        if fresh is None:
            raise ServiceError("InvalidResourceId", "")
        tags = _tags(fresh)
        if change is not None:
            tags.update(change)
            if len(tags) > MAX_TAGS:
                raise ServiceError("TooManyTagsError", "")
        for k in remove or []:
            tags.pop(k, None)
        store.update(
            target.table, target.keys, {"data": {**fresh["data"], "tags": _tag_list(tags)}}, c
        )


@operation("ssm", "AddTagsToResource")
async def add_tags_to_resource(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    tags = _tags_param(params["Tags"])
    _write_tags(
        call, params["ResourceType"], params["ResourceId"], "ssm:AddTagsToResource", tags, None
    )
    return {}


@operation("ssm", "RemoveTagsFromResource")
async def remove_tags_from_resource(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    keys = [str(k) for k in params["TagKeys"]]
    for k in keys:
        problem = sd.validate_tag(k)
        if problem:
            raise _validation(problem)
    _write_tags(
        call, params["ResourceType"], params["ResourceId"], "ssm:RemoveTagsFromResource", None, keys
    )
    return {}


@operation("ssm", "ListTagsForResource")
async def list_tags_for_resource(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    target = _tagged(call, params["ResourceType"], params["ResourceId"])
    call.authorize("ssm:ListTagsForResource", target.arn, target.context)
    if target.row is None:
        raise ServiceError("InvalidResourceId", "")
    return {"TagList": _tag_list(_tags(target.row))}
