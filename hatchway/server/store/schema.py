"""Tables of the broker's store (SQLAlchemy Core; SQLite and PostgreSQL).

Each table keeps the columns that are looked up or filtered on, and a JSON ``data`` column for
the rest of the record, so that new attributes need no schema change.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

meta = Table(
    "hw_meta",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("value", Text, nullable=False),
)

# Users, groups and roles: kind is "user" | "group" | "role".
iam_entities = Table(
    "hw_iam_entities",
    metadata,
    Column("kind", String(8), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("entity_id", String(32), nullable=False, unique=True),
    Column("arn", String(2048), nullable=False),
    Column("path", String(512), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("data", Text, nullable=False),
)

iam_policies = Table(
    "hw_iam_policies",
    metadata,
    Column("arn", String(2048), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("policy_id", String(32), nullable=False),
    Column("path", String(512), nullable=False),
    Column("default_version", String(16), nullable=False),
    Column("next_version", Integer, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
    Column("data", Text, nullable=False),
)

iam_policy_versions = Table(
    "hw_iam_policy_versions",
    metadata,
    Column("arn", String(2048), primary_key=True),
    Column("version_id", String(16), primary_key=True),
    Column("document", Text, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
)

iam_attachments = Table(
    "hw_iam_attachments",
    metadata,
    Column("kind", String(8), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("policy_arn", String(2048), primary_key=True),
)

iam_inline = Table(
    "hw_iam_inline",
    metadata,
    Column("kind", String(8), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("policy_name", String(128), primary_key=True),
    Column("document", Text, nullable=False),
)

iam_group_members = Table(
    "hw_iam_group_members",
    metadata,
    Column("group_name", String(128), primary_key=True),
    Column("user_name", String(128), primary_key=True),
)

# Access keys of users, nodes and STS sessions; secrets encrypted at rest.
access_keys = Table(
    "hw_access_keys",
    metadata,
    Column("access_key_id", String(128), primary_key=True),
    Column("owner_kind", String(16), nullable=False),
    Column("owner_name", String(256), nullable=False),
    Column("secret", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("expires", DateTime(timezone=True), nullable=True),
    Column("data", Text, nullable=False),
    Index("hw_access_keys_owner", "owner_kind", "owner_name"),
)

documents = Table(
    "hw_documents",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("owner", String(32), nullable=False),
    Column("document_type", String(64), nullable=False),
    Column("default_version", Integer, nullable=False),
    Column("latest_version", Integer, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("data", Text, nullable=False),
)

document_versions = Table(
    "hw_document_versions",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("content", Text, nullable=False),
    Column("format", String(8), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("data", Text, nullable=False),
)

activations = Table(
    "hw_activations",
    metadata,
    Column("activation_id", String(36), primary_key=True),
    Column("code_hash", String(128), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("expires", DateTime(timezone=True), nullable=False),
    Column("registrations", Integer, nullable=False),
    Column("data", Text, nullable=False),
)

instances = Table(
    "hw_instances",
    metadata,
    Column("instance_id", String(64), primary_key=True),
    Column("activation_id", String(36), nullable=True),
    Column("registered", DateTime(timezone=True), nullable=False),
    Column("last_ping", DateTime(timezone=True), nullable=True),
    Column("deregistered", Boolean, nullable=False, default=False),
    Column("data", Text, nullable=False),
)

sessions = Table(
    "hw_sessions",
    metadata,
    Column("session_id", String(96), primary_key=True),
    Column("target", String(400), nullable=False),
    Column("status", String(16), nullable=False),
    Column("owner", String(2048), nullable=False),
    Column("start_date", DateTime(timezone=True), nullable=False),
    Column("end_date", DateTime(timezone=True), nullable=True),
    Column("document_name", String(256), nullable=False),
    Column("data", Text, nullable=False),
    Index("hw_sessions_status_start", "status", "start_date"),
)

# Single-use data-channel tokens: only a hash is kept.
session_tokens = Table(
    "hw_session_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("session_id", String(96), nullable=False),
    Column("expires", DateTime(timezone=True), nullable=False),
    Column("used", Boolean, nullable=False, default=False),
    Index("hw_session_tokens_session", "session_id"),
)

audit = Table(
    "hw_audit",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("event_id", String(36), nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("event_source", String(64), nullable=False),
    Column("event_name", String(128), nullable=False),
    Column("principal", String(2048), nullable=False),
    Column("decision", String(16), nullable=False),
    Column("data", Text, nullable=False),
)

# The built-in KMS: symmetric keys (material sealed under master.key) and their aliases.
kms_keys = Table(
    "hw_kms_keys",
    metadata,
    Column("key_id", String(36), primary_key=True),
    Column("state", String(32), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("deletion_date", DateTime(timezone=True), nullable=True),
    Column("material", Text, nullable=False),
    Column("data", Text, nullable=False),
)

kms_aliases = Table(
    "hw_kms_aliases",
    metadata,
    Column("alias_name", String(256), primary_key=True),
    Column("key_id", String(36), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
    Index("hw_kms_aliases_key", "key_id"),
)

# Session logs as the agent streamed them: one row per agent_session_log batch (its payload
# verbatim), with the client address the broker saw when it arrived. Rendered on demand.
session_log = Table(
    "hw_session_log",
    metadata,
    Column("session_id", String(96), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("received", DateTime(timezone=True), nullable=False),
    Column("source_ip", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("chunk", LargeBinary, nullable=False),
)

# One row per cache domain, incremented in the transaction that changes the domain (see
# hatchway.server.store.invalidation): every broker on the database follows it.
cache_generation = Table(
    "hw_cache_generation",
    metadata,
    Column("domain", String(32), primary_key=True),
    Column("generation", BigInteger, nullable=False),
)

# Run Command (hatchway/server/ops/commands.py): one row per command, one per (command, node).
commands = Table(
    "hw_commands",
    metadata,
    Column("command_id", String(36), primary_key=True),
    Column("requested", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),
    Column("data", Text, nullable=False),
    Index("hw_commands_status", "status"),
)

command_invocations = Table(
    "hw_command_invocations",
    metadata,
    Column("command_id", String(36), primary_key=True),
    Column("instance_id", String(64), primary_key=True),
    Column("requested", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),
    Column("data", Text, nullable=False),
    Index("hw_command_invocations_status", "status"),
    Index("hw_command_invocations_instance", "instance_id"),
)
