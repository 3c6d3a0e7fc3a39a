"""AWS wire protocols of the broker, driven by botocore's service models.

* :mod:`.models` — botocore's models for SSM, IAM and STS, and a cached compiled view.
* :mod:`.validate` — model-driven input validation with AWS's messages.
* :mod:`.jsonproto` — AWS JSON 1.1 (SSM).
* :mod:`.query` — AWS Query with XML responses (IAM, STS).
"""

from __future__ import annotations

from hatchway.server.awswire.jsonproto import (
    parse_json_body,
    parse_target,
    serialize_json_error,
    serialize_json_output,
)
from hatchway.server.awswire.models import load_service, operation
from hatchway.server.awswire.query import (
    parse_query_input,
    parse_query_params,
    resolve_action,
    serialize_query_error,
    serialize_query_output,
)
from hatchway.server.awswire.validate import validate_input

__all__ = [
    "load_service",
    "operation",
    "parse_json_body",
    "parse_query_input",
    "parse_query_params",
    "parse_target",
    "resolve_action",
    "serialize_json_error",
    "serialize_json_output",
    "serialize_query_error",
    "serialize_query_output",
    "validate_input",
]
