"""AWS's AccessDenied message texts (docs/reference/iam-evaluation.md#access-denied-messages)."""

from __future__ import annotations

from hatchway.iam.kinds import PolicyKind

_EXPLICIT_PHRASE = {
    PolicyKind.IDENTITY: "an identity-based policy",
    PolicyKind.RESOURCE: "a resource-based policy",
    PolicyKind.BOUNDARY: "a permissions boundary",
    # AWS's documented text says "sessions policy" here (and "session policy" for implicit).
    PolicyKind.SESSION: "a sessions policy",
    PolicyKind.SCP: "a service control policy",
    PolicyKind.RCP: "a resource control policy",
    PolicyKind.TRUST: "the role trust policy",
}


def denial_message(
    principal: str,
    action: str,
    resource: str,
    kind: PolicyKind,
    *,
    explicit: bool,
    policy_arn: str | None = None,
) -> str:
    """``User: <p> is not authorized to perform: <a> [on resource: <r>] <why>``.

    ``on resource`` is left out for actions authorized against ``*``. An SCP that merely fails
    to allow is still reported as an explicit deny, as AWS does. ``policy_arn`` (the deciding
    managed policy, when there is one) is appended the way AWS's newer messages do.
    """
    head = f"User: {principal} is not authorized to perform: {action}"
    if resource and resource != "*":
        head += f" on resource: {resource}"
    if explicit or kind is PolicyKind.SCP:
        text = f"{head} with an explicit deny in {_EXPLICIT_PHRASE[kind]}"
        if policy_arn:
            text += f": {policy_arn}"
        return text
    return f"{head} because no {kind.label} allows the {action} action"
