"""The shapes of the records the broker reads most, for mypy (``TypedDict``: a row is still the
plain dict :class:`~hatchway.server.store.Store` returns, ``row["data"]["inputs"]`` as before).

A row holds the table's columns (hatchway.server.store.schema) and ``data``, the JSON column
with the rest of the record. Rows written by older brokers may lack any key of ``data``: the
data dicts are ``total=False``, and readers use ``.get`` where a key may be missing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, TypedDict

#: A session's status, as DescribeSessions reports it.
SessionStatus = Literal[
    "Connecting", "Connected", "Disconnected", "Terminating", "Terminated", "Failed"
]


class SessionData(TypedDict, total=False):
    """``hw_sessions.data``: what StartSession fixed for the session, and what happened to it."""

    reason: str | None  # StartSession's Reason
    owner_userid: str  # the caller's aws:userid (role sessions: "AROA…:<session name>")
    parameters: dict[str, list[str]]  # the document's parameters, validated, defaults applied
    inputs: dict[str, Any]  # the session preferences it runs with (parameters filled in)
    document_version: int  # the version StartSession validated, which the node runs
    document: dict[str, Any]  # ... and its content
    session_type: str | None  # the document's sessionType
    max_session_duration: str | None  # minutes (inputs.maxSessionDuration)
    idle_session_timeout: str  # minutes (inputs.idleSessionTimeout)
    run_as_user: str | None  # Run As: the OS user ("" when none resolved), None when off
    tags: dict[str, str]  # aws:ssmmessages:session-id / target-id, for OpenDataChannel
    details: str  # why it ended (DescribeSessions' Details)
    exit_code: int | None  # the shell's or command's, as the node reported it
    output_url: dict[str, str]  # where its log was delivered (S3OutputUrl, CloudWatchOutputUrl)


class SessionRow(TypedDict):
    """A row of ``hw_sessions``."""

    session_id: str
    target: str  # the node's instance id
    status: SessionStatus
    owner: str  # the caller's ARN
    start_date: datetime
    end_date: datetime | None
    document_name: str
    data: SessionData


class Tag(TypedDict):
    Key: str
    Value: str


class NodeData(TypedDict, total=False):
    """``hw_instances.data``: what the node said when it registered and last connected."""

    name: str  # the activation's DefaultInstanceName, else the node's computer name
    iam_role: str  # the activation's IamRole, the role the node acts as
    tags: list[Tag]  # the activation's tags, then AddTagsToResource's
    computer_name: str
    platform_name: str
    platform_version: str
    ip_address: str
    agent_name: str
    agent_version: str
    connected: bool  # its control channel is open (on some broker)
    # A node of AWS's amazon-ssm-agent (hatchway.server.ops.awsagent): no access key, its
    # RSA public key (base64 SPKI) and fingerprint instead, acting as its activation's role.
    agent_kind: str
    public_key: str
    public_key_type: str
    fingerprint: str
    key_created: str  # ISO 8601
    previous_public_key: str  # accepted until previous_key_until after a rotation
    previous_key_until: str
    rotate_key: bool  # an operator asked for a new key pair (UpdateKeyPair)
    role_name: str
    role_id: str
    control_tokens: dict[str, str]  # CreateControlChannel's tokens (hash -> expiry)
    agent_final_status: str


class NodeRow(TypedDict):
    """A row of ``hw_instances``: a registered (or deregistered) managed node."""

    instance_id: str
    activation_id: str | None
    registered: datetime
    last_ping: datetime | None
    deregistered: bool
    data: NodeData
