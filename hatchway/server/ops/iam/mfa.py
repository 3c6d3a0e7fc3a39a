"""IAM virtual MFA devices: CreateVirtualMFADevice, EnableMFADevice, DeactivateMFADevice,
DeleteVirtualMFADevice, ListMFADevices, ListVirtualMFADevices; and the TOTP codes (RFC 6238:
30-second steps, 6 digits, HMAC-SHA-1, one step either side accepted, each code once) that
EnableMFADevice and STS ``GetSessionToken`` check.

A device is a row of ``hw_iam_entities`` with kind ``mfa`` (its name the device's name, its ARN
the serial number), so that it shares the IAM cache generation and needs no schema change. Its
``data`` holds the seed sealed under ``master.key`` (bound to the serial number, as secret
access keys are bound to their key id), the user it is enabled for, the enable date and the
last time step a code was accepted for (a code is never accepted twice).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import secrets
import struct
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from hatchway.server.accounts import iamdata
from hatchway.server.base import crypto
from hatchway.server.base.errors import ServiceError
from hatchway.server.front.call import Call, operation
from hatchway.server.ops.iam.common import (
    check_tags,
    merge_tags,
    page_of,
    require,
    self_user,
    tag_context,
)
from hatchway.server.store import Record, Store
from hatchway.server.store import schema as t

STEP = 30  # seconds per TOTP time step (RFC 6238's default, what authenticator apps use)
DIGITS = 6
WINDOW = 1  # steps accepted either side of the current one (clock drift)
SEED_BYTES = 40  # a 64-character Base32 seed, as AWS's virtual devices have
KIND = "mfa"
MAX_DEVICES_PER_USER = 8  # AWS: up to eight MFA devices of any kind per user


# -- TOTP (RFC 6238 over RFC 4226's HOTP) ----------------------------------------------------


def totp(seed: bytes, step: int) -> str:
    """The ``DIGITS``-digit code of time step ``step`` (HMAC-SHA-1, dynamic truncation)."""
    mac = hmac.new(seed, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**DIGITS).zfill(DIGITS)


def current_step(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // STEP)


def matching_step(seed: bytes, code: str, after: int, now: float | None = None) -> int | None:
    """The time step within ``WINDOW`` of now whose code is ``code`` and that comes after
    ``after`` (the last step accepted for this device), or None."""
    here = current_step(now)
    for step in range(here - WINDOW, here + WINDOW + 1):
        if step > after and hmac.compare_digest(totp(seed, step), code):
            return step
    return None


# -- the store ---------------------------------------------------------------------------------


def device_arn(account: str, path: str, name: str) -> str:
    return f"arn:aws:iam::{account}:mfa{path}{name}"


def get_device(store: Store, serial: str, conn: Connection | None = None) -> Record | None:
    """The virtual device whose serial number (its ARN) is ``serial``."""
    name = serial.rsplit("/", 1)[-1] if serial.startswith("arn:") else ""
    row = iamdata.get_entity(store, KIND, name, conn) if name else None
    if row is None or row["arn"] != serial:
        return None
    return row


def device_seed(call: Call, row: Record) -> bytes:
    return base64.b32decode(call.state.box.open(row["data"]["seed"], row["arn"]))


def accept_code(
    call: Call,
    serial: str,
    codes: list[str],
    user: str | None,
    conn: Connection,
    *,
    consecutive: bool = False,
) -> Record | None:
    """Check ``codes`` (oldest first; of consecutive steps if ``consecutive``) against the
    device ``serial`` inside ``conn``'s transaction and record the last step used; returns the
    updated row, or None if the device does not exist (or is not ``user``'s when ``user`` is
    given) or a code is wrong or was used before."""
    row = get_device(call.store, serial, conn)
    if row is None or (user is not None and row["data"].get("user") != user):
        return None
    col = t.iam_entities.c
    raw = conn.execute(
        select(col.data).where(col.kind == KIND, col.name == row["name"])
    ).scalar_one_or_none()
    seed = device_seed(call, row)
    last = int(row["data"].get("last_step", -1))
    for i, code in enumerate(codes):
        step = matching_step(seed, code, last)
        if step is None or (consecutive and i > 0 and step != last + 1):
            return None
        last = step
    data = {**row["data"], "last_step": last}
    # Compare-and-set on the record as read: of two brokers accepting the same code at once
    # (PostgreSQL, read committed), the second changes nothing and is refused.
    changed = call.store.update(
        t.iam_entities, {"kind": KIND, "name": row["name"]}, {"data": data}, conn, col.data == raw
    )
    return {**row, "data": data} if changed == 1 else None


def devices_of(store: Store, user: str) -> list[Record]:
    return [r for r in store.select(t.iam_entities, kind=KIND) if r["data"].get("user") == user]


# -- output shapes -----------------------------------------------------------------------------


def _qr_png(uri: str) -> bytes:
    import segno  # only CreateVirtualMFADevice draws one

    out = io.BytesIO()
    segno.make(uri, error="m").save(out, kind="png", scale=4, border=4)
    return out.getvalue()


def _user_shape(store: Store, name: str) -> dict[str, Any] | None:
    user = iamdata.get_entity(store, "user", name)
    if user is None:
        return None
    return {
        "Path": user["path"],
        "UserName": user["name"],
        "UserId": user["entity_id"],
        "Arn": user["arn"],
        "CreateDate": user["created"],
    }


def _virtual_shape(store: Store, row: Record) -> dict[str, Any]:
    out: dict[str, Any] = {"SerialNumber": row["arn"]}
    user = row["data"].get("user")
    if user:
        shape = _user_shape(store, user)
        if shape is not None:
            out["User"] = shape
        out["EnableDate"] = datetime.fromisoformat(row["data"]["enabled"])
    if row["data"].get("tags"):
        out["Tags"] = list(row["data"]["tags"])
    return out


def _no_device(serial: str) -> ServiceError:
    return ServiceError("NoSuchEntity", f"MFA Device with serial number {serial} not found.", 404)


def _invalid_code(serial: str) -> ServiceError:
    return ServiceError(
        "InvalidAuthenticationCode", "Authentication code for device is not valid.", 403
    )


# -- operations --------------------------------------------------------------------------------


@operation("iam", "CreateVirtualMFADevice")
async def create_virtual_mfa_device(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name, path = params["VirtualMFADeviceName"], params.get("Path") or "/"
    tags = check_tags(params.get("Tags"))
    arn = device_arn(call.account, path, name)
    call.authorize("iam:CreateVirtualMFADevice", arn, tag_context(tags))
    if tags:
        merge_tags("user", [], tags)
    seed = secrets.token_bytes(SEED_BYTES)
    seed32 = base64.b32encode(seed).decode()
    row: Record = {
        "kind": KIND,
        "name": name,
        "entity_id": crypto.unique_id("AMFA"),
        "arn": arn,
        "path": path,
        "created": datetime.now(UTC),
        "data": {"seed": call.state.box.seal(seed32, arn), "tags": tags},
    }
    with call.store.transaction() as c:
        if iamdata.get_entity(call.store, KIND, name, c) is not None:
            raise ServiceError(
                "EntityAlreadyExists",
                "MFADevice entity at the same path and name already exists.",
                409,
            )
        call.store.insert(t.iam_entities, row, c)
    call.state.iam_changed()
    uri = f"otpauth://totp/{name}@{call.account}?secret={seed32}"
    device: dict[str, Any] = {
        "SerialNumber": arn,
        "Base32StringSeed": seed32.encode(),
        "QRCodePNG": _qr_png(uri),
    }
    if tags:
        device["Tags"] = tags
    return {"VirtualMFADevice": device}


@operation("iam", "EnableMFADevice")
async def enable_mfa_device(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    user, serial = params["UserName"], params["SerialNumber"]
    require(call, "iam:EnableMFADevice", "user", user)
    codes = [params["AuthenticationCode1"], params["AuthenticationCode2"]]
    with call.store.transaction() as c:
        if iamdata.get_entity(call.store, "user", user, c) is None:
            raise ServiceError("NoSuchEntity", f"The user with name {user} cannot be found.", 404)
        row = get_device(call.store, serial, c)
        if row is None:
            raise _no_device(serial)
        if row["data"].get("user"):
            raise ServiceError("EntityAlreadyExists", "MFA Device is already in use.", 409)
        if len(devices_of(call.store, user)) >= MAX_DEVICES_PER_USER:
            raise ServiceError(
                "LimitExceeded",
                f"Cannot exceed quota for MFADevicesPerUser: {MAX_DEVICES_PER_USER}",
                409,
            )
        # Two consecutive codes (AWS's rule), accepted once, the device taken once.
        accepted = accept_code(call, serial, codes, None, c, consecutive=True)
        if accepted is None:
            raise _invalid_code(serial)
        data = {**accepted["data"], "user": user, "enabled": datetime.now(UTC).isoformat()}
        call.store.update(t.iam_entities, {"kind": KIND, "name": row["name"]}, {"data": data}, c)
    call.state.iam_changed()
    return {}


@operation("iam", "DeactivateMFADevice")
async def deactivate_mfa_device(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    user, serial = self_user(call, params), params["SerialNumber"]
    require(call, "iam:DeactivateMFADevice", "user", user)
    with call.store.transaction() as c:
        row = get_device(call.store, serial, c)
        if row is None or row["data"].get("user") != user:
            raise _no_device(serial)
        data = {k: v for k, v in row["data"].items() if k not in ("user", "enabled")}
        call.store.update(t.iam_entities, {"kind": KIND, "name": row["name"]}, {"data": data}, c)
    call.state.iam_changed()
    return {}


@operation("iam", "DeleteVirtualMFADevice")
async def delete_virtual_mfa_device(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    serial = params["SerialNumber"]
    call.authorize("iam:DeleteVirtualMFADevice", serial)
    with call.store.transaction() as c:
        row = get_device(call.store, serial, c)
        if row is None:
            raise ServiceError(
                "NoSuchEntity", f"VirtualMFADevice with serial number {serial} doesn't exist.", 404
            )
        if row["data"].get("user"):
            raise ServiceError(
                "DeleteConflict", "MFA VirtualDevice in use. Must deactivate first.", 409
            )
        call.store.delete(t.iam_entities, c, kind=KIND, name=row["name"])
    call.state.iam_changed()
    return {}


@operation("iam", "ListMFADevices")
async def list_mfa_devices(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    user = self_user(call, params)
    require(call, "iam:ListMFADevices", "user", user)
    rows = sorted(devices_of(call.store, user), key=lambda r: r["name"])
    page, meta = page_of(rows, params)
    return {
        "MFADevices": [
            {
                "UserName": user,
                "SerialNumber": r["arn"],
                "EnableDate": datetime.fromisoformat(r["data"]["enabled"]),
            }
            for r in page
        ],
        **meta,
    }


@operation("iam", "ListVirtualMFADevices")
async def list_virtual_mfa_devices(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    call.authorize("iam:ListVirtualMFADevices", "*")
    status = params.get("AssignmentStatus") or "Any"
    rows = [
        r
        for r in call.store.select(t.iam_entities, kind=KIND, order_by=[t.iam_entities.c.name])
        if status == "Any" or (status == "Assigned") == bool(r["data"].get("user"))
    ]
    page, meta = page_of(rows, params)
    return {"VirtualMFADevices": [_virtual_shape(call.store, r) for r in page], **meta}
