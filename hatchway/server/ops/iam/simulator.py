"""The policy simulator: SimulateCustomPolicy and SimulatePrincipalPolicy."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

from hatchway.iam import PolicyError
from hatchway.iam.simulate import ContextEntry, SimulationInput, simulate_custom_policy
from hatchway.server.accounts import iamdata
from hatchway.server.base.cpu import run_cpu
from hatchway.server.base.errors import ServiceError
from hatchway.server.front.call import Call, operation
from hatchway.server.ops.iam.common import (
    from_policy_error,
    no_entity,
    page_of,
)
from hatchway.server.store import Record


def _context_entries(params: Mapping[str, Any]) -> list[ContextEntry]:
    return [ContextEntry.from_dict(e) for e in params.get("ContextEntries") or []]


def _simulate(inp: SimulationInput) -> dict[str, Any]:
    try:
        return simulate_custom_policy(inp)
    except PolicyError as exc:
        raise from_policy_error(exc) from exc
    except (ValueError, KeyError) as exc:
        raise ServiceError("InvalidInput", str(exc), 400) from exc


def _paged_results(result: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    page, meta = page_of(result["EvaluationResults"], params)
    return {"EvaluationResults": page, **meta}


@operation("iam", "SimulateCustomPolicy")
async def simulate_custom(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    call.authorize("iam:SimulateCustomPolicy", "*")
    inp = SimulationInput(
        policy_input_list=list(params["PolicyInputList"]),
        action_names=list(params["ActionNames"]),
        resource_arns=list(params.get("ResourceArns") or ["*"]),
        permissions_boundary_policy_input_list=list(
            params.get("PermissionsBoundaryPolicyInputList") or []
        ),
        resource_policy=params.get("ResourcePolicy"),
        resource_owner=params.get("ResourceOwner"),
        caller_arn=params.get("CallerArn"),
        context_entries=_context_entries(params),
        resource_specific=bool(params.get("ResourceArns")),
    )
    return _paged_results(await run_cpu(partial(_simulate, inp)), params)


def _source_entity(call: Call, arn: str) -> Record:
    prefix = f"arn:aws:iam::{call.account}:"
    kind = arn[len(prefix) :].split("/", 1)[0] if arn.startswith(prefix) else ""
    if kind not in ("user", "group", "role"):
        raise ServiceError("InvalidInput", f"Invalid ARN: {arn}.", 400)
    name = arn.rsplit("/", 1)[-1]
    row = iamdata.get_entity(call.store, kind, name)
    if row is None or row["arn"] != arn:
        raise no_entity(kind, name)
    return row


def _excluded(doc: Mapping[str, Any], exclusions: Iterable[Mapping[str, Any]]) -> bool:
    for ex in exclusions:
        if doc["arn"] is not None and ex.get("PolicyArn") == doc["arn"]:
            return True
        ident = ex.get("InlinePolicyIdentifier")
        if doc["arn"] is None and ident:
            owner = f"{ident['AttachmentType'].lower()}/{ident['AttachmentName']}"
            if doc["name"] == f"{owner}/{ident['PolicyName']}":
                return True
    return False


@operation("iam", "SimulatePrincipalPolicy")
async def simulate_principal(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    source = params["PolicySourceArn"]
    call.authorize("iam:SimulatePrincipalPolicy", source)
    row = _source_entity(call, source)
    exclusions = params.get("PolicyExclusionList") or []
    docs = [
        d
        for d in iamdata.identity_documents(call.store, row["kind"], row["name"])
        if not _excluded(d, exclusions)
    ]
    ids = [d["name"].replace("/", "_") if d["arn"] is None else d["name"] for d in docs]
    texts = [str(d["text"]) for d in docs]
    extra = list(params.get("PolicyInputList") or [])
    ids += [f"PolicyInputList.{i}" for i in range(1, len(extra) + 1)]
    boundaries = list(params.get("PermissionsBoundaryPolicyInputList") or [])
    barn = row["data"].get("boundary")
    if (
        not boundaries
        and barn
        and not any(e.get("PolicyType") == "permission-boundary" for e in exclusions)
    ):
        text = iamdata.policy_document(call.store, barn)
        boundaries = [text] if text else []
    entries = _context_entries(params)
    given = {e.name.lower() for e in entries}
    for k, v in iamdata.tags_dict(row).items():
        if f"aws:principaltag/{k}".lower() not in given:
            entries.append(ContextEntry(f"aws:PrincipalTag/{k}", [v]))
    caller = params.get("CallerArn") or (source if row["kind"] != "group" else None)
    inp = SimulationInput(
        policy_input_list=texts + extra,
        action_names=list(params["ActionNames"]),
        resource_arns=list(params.get("ResourceArns") or ["*"]),
        permissions_boundary_policy_input_list=boundaries,
        resource_policy=params.get("ResourcePolicy"),
        resource_owner=params.get("ResourceOwner"),
        caller_arn=caller,
        context_entries=entries,
        resource_specific=bool(params.get("ResourceArns")),
    )
    result = await run_cpu(partial(_simulate, inp))
    for r in result["EvaluationResults"]:
        statements = list(r["MatchedStatements"])
        for specific in r.get("ResourceSpecificResults", []):
            statements += specific["MatchedStatements"]
        for m in statements:
            sid = str(m.get("SourcePolicyId", ""))
            if sid.startswith("PolicyInputList."):
                m["SourcePolicyId"] = ids[int(sid.rsplit(".", 1)[1]) - 1]
    return _paged_results(result, params)
