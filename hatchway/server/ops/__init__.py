"""Operation handlers, registered by service and operation name (see ``call.operation``)."""

from __future__ import annotations

from hatchway.server.runtime.state import ServerState


def register_all() -> None:
    """Import every operation module so that its handlers register themselves."""
    from hatchway.server.ops import (  # noqa: F401
        cloudtrail,
        commands,
        documents,
        iam,
        kms,
        nodes,
        records,
        sessions,
        sts,
    )


def seed_account(state: ServerState) -> None:
    """Account state every new broker starts with (AWS-owned documents, preferences)."""
    from hatchway.server.ops.documents import seed_documents

    seed_documents(state)
