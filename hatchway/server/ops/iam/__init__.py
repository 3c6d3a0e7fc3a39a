"""IAM operations (Query protocol): users, groups, roles, managed and inline policies, access
keys, group membership, attachments, permissions boundaries, tags, account authorization
details and the policy simulator.

Every handler authorizes first (AWS's action and resource ARN; tag and boundary condition keys
where AWS sets them), then checks the request against the store, and makes all of its changes
in one store transaction: a failed operation changes nothing. Successful writes call
``state.iam_changed()`` so that cached compiled policy sets are rebuilt. Error codes and texts
are AWS's; ``docs/broker-iam.md`` ("IAM API") lists them and the choices made where AWS's
behaviour is not documented.
"""

from hatchway.server.ops.iam import (  # noqa: F401  (each module registers its handlers)
    access_keys,
    account,
    attachments,
    boundaries,
    common,
    details,
    entities,
    inline,
    membership,
    mfa,
    policies,
    simulator,
    tags,
)
