"""IAM policy decisions per second: hatchway's engine against moto and cedarpy, in one run.

Run with ``make bench`` (it installs the ``bench`` extra: moto and cedarpy). Every figure is
single-threaded (the process is pinned to one CPU where the OS allows it) and is the median of
``--repeats`` timed runs of about ``--seconds`` each. Nothing is asserted: the script prints
figures, ratios against the baselines measured in the same run, and whether the engines agree.

Engines and what one "decision" is:

* hatchway: ``PolicySet.evaluate(make_request(action, resource, principal_arn, context))`` with
  the request built inside the timed loop (column "hatchway"), and ``PolicySet.evaluate(req)``
  on prebuilt requests (column "prebuilt"). Policies are compiled with ``compile_policy``
  (validation is a write-time step, not part of a decision).
* moto: ``moto.iam.access_control.IAMPolicy.is_action_permitted(action, resource)`` over the
  same documents, combined like moto's own ``IAMRequestBase.check_action_permitted``. The
  ``IAMPolicy`` objects are built once (moto itself re-parses the JSON on every request), so
  the comparison is generous to moto. moto ignores conditions (it only knows StringEquals, and
  its request path passes no context), does not substitute policy variables and matches actions
  case-sensitively: it answers an easier question, and sometimes a different one.
* cedarpy: the same statements translated to Cedar (``permit``/``forbid``; resource and action
  wildcards become ``like`` on ``context.resource``/``context.action``), evaluated with a
  pre-parsed ``PolicySet`` and ``Entities`` through ``is_authorized`` (one call per request,
  request dicts prebuilt) and ``is_authorized_batch`` (column "cedarpy batch", up to 1,000
  requests per call). Policy variables have no Cedar equivalent, so the quickstart scenarios
  are not translated.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import json
import os
import platform
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import cycle, islice
from typing import Any

from hatchway.iam import PolicySet, Principal, compile_policy, make_request
from hatchway.ssm.authorize import authorize_start_session

try:
    from moto.iam.access_control import IAMPolicy, PermissionResult

    HAVE_MOTO = True
except ImportError:  # the bench extra is not installed
    HAVE_MOTO = False

try:
    import cedarpy
except ImportError:
    cedarpy = None

REGION = "us-west-2"
ACCOUNT = "123456789012"
INSTANCE = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-02573cafcfEXAMPLE"
OTHER_INSTANCE = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0a1b2c3d4e5f60718"
RUN_SHELL = f"arn:aws:ssm:{REGION}:{ACCOUNT}:document/SSM-SessionManagerRunShell"
SSH_DOC = f"arn:aws:ssm:{REGION}::document/AWS-StartSSHSession"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
CHECK = "ssm:SessionDocumentAccessCheck"
START = "ssm:StartSession"
Document = dict[str, Any]


@dataclass(frozen=True)
class Req:
    """One authorization request, with the decision IAM gives it."""

    action: str
    resource: str
    principal: str
    context: dict[str, str]
    expect: bool


@dataclass
class Scenario:
    key: str
    title: str
    documents: list[Document]
    requests: list[Req]
    cedar_text: str | None = None
    cedar_note: str = ""

    @property
    def statements(self) -> int:
        return sum(len(_as_list(d["Statement"])) for d in self.documents)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- scenario 1: the seed policy -----------------------------------------------------------------

SEED_POLICY: Document = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": [START],
            "Resource": [INSTANCE, RUN_SHELL],
            "Condition": {"BoolIfExists": {CHECK: "true"}},
        }
    ],
}


def seed_scenario() -> Scenario:
    # StartSession without a document evaluates the target with the key "false"; with a named
    # document, the target and the document are evaluated with the key absent.
    requests = [
        Req(START, INSTANCE, ALICE, {CHECK: "false"}, False),
        Req(START, INSTANCE, ALICE, {}, True),
        Req(START, SSH_DOC, ALICE, {}, False),
        Req(START, RUN_SHELL, ALICE, {}, True),
    ]
    return Scenario("seed", "seed policy (1 statement)", [SEED_POLICY], requests)


# --- scenario 2: AWS's Session Manager quickstart policies
# (docs/reference/session-manager.md#sample-policies) ------------------------

QS_REGION = "us-east-1"
QS_ACCOUNT = "111122223333"
QS_INSTANCE = f"arn:aws:ec2:{QS_REGION}:{QS_ACCOUNT}:instance/i-02573cafcfEXAMPLE"
QS_OTHER = f"arn:aws:ec2:{QS_REGION}:{QS_ACCOUNT}:instance/i-0a1b2c3d4e5f60718"
QS_RUN_SHELL = f"arn:aws:ssm:{QS_REGION}:{QS_ACCOUNT}:document/SSM-SessionManagerRunShell"
QS_SSH_DOC = f"arn:aws:ssm:{QS_REGION}::document/AWS-StartSSHSession"
QS_SESSION = f"arn:aws:ssm:{QS_REGION}:{QS_ACCOUNT}:session/"

# Legacy (2021-2023) end-user policy, "Session Manager and CLI" tab, placeholders filled in; the
# KMS resource uses the 2025 page's ARN form instead of the bare "key-name".
QS_END_USER: Document = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["ssm:StartSession"],
            "Resource": [QS_INSTANCE, QS_RUN_SHELL],
            "Condition": {"BoolIfExists": {CHECK: "true"}},
        },
        {
            "Effect": "Allow",
            "Action": [
                "ssm:DescribeSessions",
                "ssm:GetConnectionStatus",
                "ssm:DescribeInstanceProperties",
                "ec2:DescribeInstances",
            ],
            "Resource": "*",
        },
        {
            "Effect": "Allow",
            "Action": ["ssm:TerminateSession", "ssm:ResumeSession"],
            "Resource": ["arn:aws:ssm:*:*:session/${aws:username}-*"],
        },
        {
            "Effect": "Allow",
            "Action": ["kms:GenerateDataKey"],
            "Resource": f"arn:aws:kms:{QS_REGION}:{QS_ACCOUNT}:key/key-name",
        },
    ],
}

# Current (2025) administrator policy, "Session Manager and CLI" tab, verbatim.
QS_ADMIN: Document = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["ssm:StartSession"],
            "Resource": [f"arn:aws:ec2:*:{QS_ACCOUNT}:instance/*"],
            "Condition": {"StringLike": {"ssm:resourceTag/Finance": ["WebServers"]}},
        },
        {
            "Effect": "Allow",
            "Action": ["ssmmessages:OpenDataChannel"],
            "Resource": ["arn:aws:ssm:*:*:session/${aws:userid}-*"],
        },
        {
            "Effect": "Allow",
            "Action": [
                "ssm:DescribeSessions",
                "ssm:GetConnectionStatus",
                "ssm:DescribeInstanceProperties",
                "ec2:DescribeInstances",
            ],
            "Resource": "*",
        },
        {
            "Effect": "Allow",
            "Action": [
                "ssm:CreateDocument",
                "ssm:UpdateDocument",
                "ssm:GetDocument",
                "ssm:StartSession",
            ],
            "Resource": QS_RUN_SHELL,
        },
        {
            "Effect": "Allow",
            "Action": ["ssmmessages:OpenDataChannel"],
            "Resource": ["arn:aws:ssm:*:*:session/${aws:userid}-*"],
        },
        {
            "Effect": "Allow",
            "Action": ["ssm:TerminateSession", "ssm:ResumeSession"],
            "Resource": ["arn:aws:ssm:*:*:session/${aws:userid}-*"],
        },
    ],
}


def _tags(**tags: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in tags.items():
        out[f"ssm:resourceTag/{k}"] = v
        out[f"aws:ResourceTag/{k}"] = v
    return out


def _session_tags(owner: str, target: str) -> dict[str, str]:
    return {
        "ssm:resourceTag/aws:ssmmessages:session-id": owner,
        "ssm:resourceTag/aws:ssmmessages:target-id": target,
    }


def end_user_scenario() -> Scenario:
    user = f"arn:aws:iam::{QS_ACCOUNT}:user/alice"
    ctx = {"aws:userid": "AIDAEXAMPLEALICE00001", "aws:SourceIp": "203.0.113.7"}
    mine = QS_SESSION + "alice-07a16060613c408b5"
    theirs = QS_SESSION + "bob-0db53f487931ed9d4"
    requests = [
        Req(START, QS_INSTANCE, user, {**ctx, CHECK: "false", **_tags(Env="prod")}, False),
        Req(START, QS_INSTANCE, user, {**ctx, **_tags(Env="prod")}, True),
        Req(START, QS_RUN_SHELL, user, ctx, True),
        Req(START, QS_OTHER, user, ctx, False),
        Req("ssm:TerminateSession", mine, user, {**ctx, **_session_tags("alice", "i-0")}, True),
        Req("ssm:TerminateSession", theirs, user, {**ctx, **_session_tags("bob", "i-0")}, False),
        Req("ssm:ResumeSession", mine, user, ctx, True),
        Req("ssm:DescribeSessions", "*", user, ctx, True),
        Req("ssm:GetConnectionStatus", QS_INSTANCE, user, ctx, True),
        Req("ssm:SendCommand", QS_INSTANCE, user, ctx, False),
    ]
    return Scenario(
        "enduser", "quickstart end user (4 st., ${aws:username})", [QS_END_USER], requests
    )


def admin_scenario() -> Scenario:
    role = f"arn:aws:sts::{QS_ACCOUNT}:assumed-role/SSMAdmins/bob"
    userid = "AROAEXAMPLEADMINROLE1:bob"
    ctx = {"aws:userid": userid, "aws:SourceIp": "198.51.100.20"}
    # Session ids in the aws:userid form, so the 2025 samples match literally
    # (docs/reference/session-manager.md#username-and-userid).
    mine = QS_SESSION + f"{userid}-0123456789abcdef0"
    theirs = QS_SESSION + "bob-0123456789abcdef0"
    requests = [
        Req(START, QS_OTHER, role, {**ctx, CHECK: "false", **_tags(Finance="WebServers")}, True),
        Req(START, QS_OTHER, role, {**ctx, **_tags(Finance="Databases")}, False),
        Req(START, QS_INSTANCE, role, ctx, False),
        Req(START, QS_RUN_SHELL, role, ctx, True),
        Req(START, QS_SSH_DOC, role, ctx, False),
        Req("ssm:TerminateSession", mine, role, {**ctx, **_session_tags(userid, "i-0")}, True),
        Req("ssm:TerminateSession", theirs, role, {**ctx, **_session_tags("bob", "i-0")}, False),
        Req("ssm:ResumeSession", mine, role, ctx, True),
        Req("ssm:DescribeSessions", "*", role, ctx, True),
        Req("ssmmessages:OpenDataChannel", mine, role, ctx, True),
        Req("ssm:UpdateDocument", QS_RUN_SHELL, role, ctx, True),
        Req("ssm:DeleteDocument", QS_RUN_SHELL, role, ctx, False),
    ]
    return Scenario("admin", "quickstart admin (6 st., ${aws:userid}, tags)", [QS_ADMIN], requests)


# --- scenario 3: synthetic sets ------------------------------------------------------------------

_FILLERS: tuple[tuple[str, tuple[str, ...], Callable[[int], str]], ...] = (
    (
        "s3",
        ("GetObject", "PutObject", "DeleteObject", "ListBucket", "GetObjectTagging"),
        lambda i: f"arn:aws:s3:::bucket-{i}/*",
    ),
    (
        "dynamodb",
        ("GetItem", "PutItem", "Query", "Scan", "UpdateItem"),
        lambda i: f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/table-{i}",
    ),
    (
        "ec2",
        ("StartInstances", "StopInstances", "RebootInstances", "DescribeInstances"),
        lambda i: f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-{i:017x}",
    ),
    (
        "lambda",
        ("InvokeFunction", "GetFunction", "UpdateFunctionCode"),
        lambda i: f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fn-{i}",
    ),
    (
        "kms",
        ("Decrypt", "Encrypt", "GenerateDataKey"),
        lambda i: f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{i:08x}-0000-4000-8000-{i:012x}",
    ),
    (
        "sqs",
        ("SendMessage", "ReceiveMessage", "DeleteMessage"),
        lambda i: f"arn:aws:sqs:{REGION}:{ACCOUNT}:queue-{i}",
    ),
    (
        "logs",
        ("CreateLogStream", "PutLogEvents"),
        lambda i: f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/app/{i}:*",
    ),
    (
        "ssm",
        ("GetParameter", "GetParameters", "PutParameter", "SendCommand", "GetDocument"),
        lambda i: f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/app/{i}/*",
    ),
)
_SSM_WILDCARDS = (
    "ssm:Get*",
    "ssm:Describe*",
    "ssm:List*",
    "ssm:Start*",
    "ssm:*Session",
    "ssm:Send*",
)


def _filler_condition(i: int) -> dict[str, Any] | None:
    m = i % 4
    if m == 1:
        return {"StringEquals": {"aws:ResourceTag/team": [f"team-{i % 50}", f"team-{i % 7}"]}}
    if m == 2:
        return {"StringLike": {"aws:PrincipalTag/dept": f"eng-{i % 7}*"}}
    if m == 3:
        return {"Bool": {"aws:SecureTransport": "true"}}
    return None


def _filler(i: int, rng: random.Random, wildcards: bool) -> Document:
    """A statement that does not name ssm:StartSession (unless ``wildcards``: then every other
    statement names SSM actions with wildcards, about 2 in 5 of which cover StartSession)."""
    if wildcards and i % 2 == 0:
        actions = rng.sample(_SSM_WILDCARDS, rng.randint(1, 2))
        if i % 4 == 0:
            resource = f"arn:aws:ssm:{REGION}:{ACCOUNT}:document/Team{i}-*"
        else:
            resource = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-{i:017x}"
    else:
        service, names, arn = _FILLERS[i % len(_FILLERS)]
        actions = [f"{service}:{a}" for a in rng.sample(names, rng.randint(1, min(3, len(names))))]
        resource = arn(i)
    st: Document = {
        "Effect": "Deny" if i % 20 in (6, 7) else "Allow",
        "Action": actions,
        "Resource": resource,
    }
    cond = _filler_condition(i)
    if cond is not None:
        st["Condition"] = cond
    return st


# The few statements that name ssm:StartSession, placed at 1/3, 1/2 and the end of the set.
_TARGETS: tuple[Document, ...] = (
    {
        "Effect": "Deny",
        "Action": START,
        "Resource": "arn:aws:ssm:*:*:document/AWS-StartSSHSession",
    },
    {
        "Effect": "Allow",
        "Action": [START, "ssm:SendCommand"],
        "Resource": f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*",
        "Condition": {"StringEquals": {"ssm:resourceTag/Team": "web"}},
    },
    SEED_POLICY["Statement"][0],
)


def synthetic_scenario(n: int, wildcards: bool = False, per_policy: int = 25) -> Scenario:
    rng = random.Random(n * 2 + wildcards)
    slots = {n // 3: _TARGETS[0], n // 2: _TARGETS[1], n - 1: _TARGETS[2]}
    statements = [slots.get(i) or _filler(i, rng, wildcards) for i in range(n)]
    documents = [
        {"Version": "2012-10-17", "Statement": statements[k : k + per_policy]}
        for k in range(0, n, per_policy)
    ]
    requests = [
        Req(START, INSTANCE, ALICE, {}, True),
        Req(START, INSTANCE, ALICE, {CHECK: "false"}, False),
        Req(START, RUN_SHELL, ALICE, {}, True),
        Req(START, SSH_DOC, ALICE, {}, False),
        Req(START, OTHER_INSTANCE, ALICE, {CHECK: "false", **_tags(Team="web")}, True),
        Req(START, OTHER_INSTANCE, ALICE, {CHECK: "false", **_tags(Team="db")}, False),
    ]
    if wildcards:
        return Scenario(
            f"wild{n}", f"{n:,} st., half ssm:Get*/Start*/*Session…", documents, requests
        )
    return Scenario(f"syn{n}", f"{n:,} st., 3 name StartSession", documents, requests)


# --- translation to Cedar ------------------------------------------------------------------------


class Untranslatable(ValueError):
    pass


def _q(text: str) -> str:
    if "${" in text:
        raise Untranslatable("policy variables have no Cedar equivalent")
    return json.dumps(text)


def _like(pattern: str) -> str:
    if "?" in pattern:
        raise Untranslatable("'?' has no Cedar equivalent")
    return _q(pattern)


def _wild(text: str) -> bool:
    return "*" in text or "?" in text


def _cedar_condition(op: str, key: str, values: list[Any]) -> str:
    k = _q(key.lower())
    low = op.lower()
    vals = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
    if low in ("stringequals", "stringlike"):
        if low == "stringlike":
            tests = [f"context[{k}] like {_like(v)}" for v in vals]
        else:
            tests = [f"context[{k}] == {_q(v)}" for v in vals]
        return f"(context has {k} && ({' || '.join(tests)}))"
    if low in ("bool", "boolifexists"):
        tests = [f"context[{k}] == {_q(v.lower())}" for v in vals]
        absent = "!" if low == "boolifexists" else ""
        joiner = "||" if absent else "&&"
        return f"({absent}(context has {k}) {joiner} ({' || '.join(tests)}))"
    raise Untranslatable(f"operator {op}")


def cedar_statement(st: Document) -> str:
    """One IAM identity-policy statement as one Cedar policy (for the operators used here)."""
    if any(k in st for k in ("NotAction", "NotResource", "Principal", "NotPrincipal")):
        raise Untranslatable("Not*/Principal elements")
    effect = "permit" if st["Effect"] == "Allow" else "forbid"
    when: list[str] = []
    actions = [a.lower() for a in _as_list(st["Action"])]
    action_scope = "action"
    if "*" not in actions:
        exact = [a for a in actions if not _wild(a)]
        if len(exact) == len(actions):
            action_scope = "action in [" + ", ".join(f"Action::{_q(a)}" for a in exact) + "]"
        else:
            tests = [f"action == Action::{_q(a)}" for a in exact]
            tests += [f"context.action like {_like(a)}" for a in actions if _wild(a)]
            when.append("(" + " || ".join(tests) + ")")
    resources = [str(r) for r in _as_list(st["Resource"])]
    resource_scope = "resource"
    if "*" not in resources:
        if len(resources) == 1 and not _wild(resources[0]):
            resource_scope = f"resource == Resource::{_q(resources[0])}"
        else:
            tests = [
                f"context.resource like {_like(r)}"
                if _wild(r)
                else f"resource == Resource::{_q(r)}"
                for r in resources
            ]
            when.append("(" + " || ".join(tests) + ")")
    for op, block in st.get("Condition", {}).items():
        for key, values in block.items():
            when.append(_cedar_condition(op, key, _as_list(values)))
    text = f"{effect}(principal, {action_scope}, {resource_scope})"
    if when:
        text += " when { " + " && ".join(when) + " }"
    return text + ";"


def cedar_policies(documents: Iterable[Document]) -> str:
    return "\n".join(cedar_statement(st) for doc in documents for st in _as_list(doc["Statement"]))


def cedar_request(r: Req) -> dict[str, Any]:
    ctx: dict[str, Any] = {k.lower(): v for k, v in r.context.items()}
    ctx["action"] = r.action.lower()
    ctx["resource"] = r.resource
    return {
        "principal": {"type": "User", "id": r.principal},
        "action": {"type": "Action", "id": r.action.lower()},
        "resource": {"type": "Resource", "id": r.resource},
        "context": ctx,
    }


# --- engines -------------------------------------------------------------------------------------


def hatchway_policy_set(documents: Sequence[Document]) -> PolicySet:
    return PolicySet([compile_policy(d) for d in documents])


def moto_policies(documents: Sequence[Document]) -> list[Any]:
    return [IAMPolicy(json.dumps(d)) for d in documents]


def moto_allowed(policies: Sequence[Any], action: str, resource: str) -> bool:
    """moto's IAMRequestBase.check_action_permitted, minus the exceptions."""
    permitted = False
    for p in policies:
        result = p.is_action_permitted(action, resource)
        if result == PermissionResult.DENIED:
            return False
        if result == PermissionResult.PERMITTED:
            permitted = True
    return permitted


# --- measurement ---------------------------------------------------------------------------------

Runner = Callable[[int], int]  # run(k): do k units of work, return the number of decisions


@dataclass
class Settings:
    repeats: int = 7
    seconds: float = 0.2


def calibrate(run: Runner, s: Settings) -> int:
    """Units of work that take about ``s.seconds`` (the calibration runs also warm up)."""
    k = 1
    while True:
        t0 = time.perf_counter()
        run(k)
        elapsed = time.perf_counter() - t0
        if elapsed >= s.seconds / 8 or k >= 1 << 24:
            break
        k *= 4
    return max(1, round(k * s.seconds / elapsed))


def _one_rate(run: Runner, k: int) -> float:
    gc.collect()
    t0 = time.perf_counter()
    n = run(k)
    return n / (time.perf_counter() - t0)


def rate(run: Runner, s: Settings) -> float:
    """Median decisions per second over ``s.repeats`` timed runs of about ``s.seconds``."""
    k = calibrate(run, s)
    return statistics.median(_one_rate(run, k) for _ in range(s.repeats))


def slowdown(small: Runner, big: Runner, s: Settings, rounds: int = 9) -> float:
    """Median over interleaved rounds of rate(small) / rate(big): pairing the runs cancels most
    of the drift a shared machine adds to two figures measured seconds apart."""
    ks, kb = calibrate(small, s), calibrate(big, s)
    return statistics.median(
        _one_rate(small, ks) / _one_rate(big, kb) for _ in range(max(rounds, s.repeats))
    )


def hatchway_built(ps: PolicySet, reqs: Sequence[Req]) -> Runner:
    items = [(r.action, r.resource, r.principal, r.context) for r in reqs]
    evaluate = ps.evaluate

    def run(k: int) -> int:
        for action, resource, principal, context in islice(cycle(items), k):
            evaluate(make_request(action, resource, principal, context))
        return k

    return run


def hatchway_prebuilt(ps: PolicySet, reqs: Sequence[Req]) -> Runner:
    built = [make_request(r.action, r.resource, r.principal, r.context) for r in reqs]
    evaluate = ps.evaluate

    def run(k: int) -> int:
        for req in islice(cycle(built), k):
            evaluate(req)
        return k

    return run


def moto_runner(policies: Sequence[Any], reqs: Sequence[Req]) -> Runner:
    items = [(r.action, r.resource) for r in reqs]

    def run(k: int) -> int:
        for action, resource in islice(cycle(items), k):
            moto_allowed(policies, action, resource)
        return k

    return run


def cedar_single(ps: Any, entities: Any, reqs: Sequence[Req]) -> Runner:
    creqs = [cedar_request(r) for r in reqs]
    is_authorized = cedarpy.is_authorized

    def run(k: int) -> int:
        for creq in islice(cycle(creqs), k):
            is_authorized(creq, ps, entities)
        return k

    return run


def cedar_batch(ps: Any, entities: Any, reqs: Sequence[Req], size: int) -> Runner:
    batch = list(islice(cycle([cedar_request(r) for r in reqs]), size))
    is_authorized_batch = cedarpy.is_authorized_batch

    def run(k: int) -> int:
        for _ in range(k):
            is_authorized_batch(batch, ps, entities)
        return k * size

    return run


# --- one scenario, all engines -------------------------------------------------------------------


@dataclass
class Row:
    scenario: Scenario
    hatchway: float = 0.0
    prebuilt: float = 0.0
    moto: float | None = None
    cedar: float | None = None
    cedar_batch: float | None = None
    policy_set: PolicySet | None = None
    setup: dict[str, float] = field(default_factory=dict)  # one-off costs, seconds
    agreement: list[str] = field(default_factory=list)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _mismatches(name: str, got: list[bool], sc: Scenario, reference: list[bool]) -> str:
    diff = [
        f"{r.action} {r.resource.rsplit(':', 1)[-1]} {sorted(r.context)} -> "
        f"{'allow' if g else 'deny'}"
        for r, g, ref in zip(sc.requests, got, reference, strict=True)
        if g != ref
    ]
    agree = len(got) - len(diff)
    line = f"{name}: {agree}/{len(got)} agree"
    if diff:
        line += "; differs on " + "; ".join(diff)
    return line


def run_scenario(sc: Scenario, s: Settings) -> Row:
    row = Row(sc)
    ps, row.setup["hatchway compile"] = _timed(lambda: hatchway_policy_set(sc.documents))
    row.policy_set = ps
    first = make_request(sc.requests[0].action, sc.requests[0].resource, ALICE)
    _, row.setup["hatchway first decision"] = _timed(lambda: ps.evaluate(first))
    ours = [ps.evaluate(make_request(r.action, r.resource, r.principal, r.context)).allowed
            for r in sc.requests]  # fmt: skip
    expected = [r.expect for r in sc.requests]
    row.agreement.append(_mismatches("hatchway vs expected IAM decisions", ours, sc, expected))
    row.hatchway = rate(hatchway_built(ps, sc.requests), s)
    row.prebuilt = rate(hatchway_prebuilt(ps, sc.requests), s)

    if HAVE_MOTO:
        mp, row.setup["moto IAMPolicy"] = _timed(lambda: moto_policies(sc.documents))
        got = [moto_allowed(mp, r.action, r.resource) for r in sc.requests]
        row.agreement.append(_mismatches("moto vs hatchway", got, sc, ours))
        row.moto = rate(moto_runner(mp, sc.requests), s)

    if cedarpy is not None:
        try:
            sc.cedar_text = cedar_policies(sc.documents)
        except Untranslatable as e:
            sc.cedar_note = str(e)
        if sc.cedar_text is not None:
            text = sc.cedar_text
            cps, row.setup["cedarpy PolicySet"] = _timed(lambda: cedarpy.PolicySet.from_str(text))
            ents = cedarpy.Entities.from_json_str("[]")
            results = [cedarpy.is_authorized(cedar_request(r), cps, ents) for r in sc.requests]
            errors = [e for res in results for e in res.diagnostics.errors]
            got = [res.allowed for res in results]
            line = _mismatches("cedarpy vs hatchway", got, sc, ours)
            row.agreement.append(line + (f" (cedar errors: {errors[:2]})" if errors else ""))
            row.cedar = rate(cedar_single(cps, ents, sc.requests), s)
            # Up to 1,000 requests per call; fewer where one call would take seconds.
            size = max(len(sc.requests), min(1000, int(row.cedar * s.seconds / 4)))
            row.cedar_batch = rate(cedar_batch(cps, ents, sc.requests, size), s)
        else:
            row.agreement.append(f"cedarpy: not translated ({sc.cedar_note})")
    return row


# --- the StartSession flow ----------------------------------------------------------------------

_START_CALLS: tuple[tuple[str, str | None], ...] = (
    (INSTANCE, None),  # no document: target with the key "false" -> denied, plus the retry
    (INSTANCE, "SSM-SessionManagerRunShell"),  # target + document, allowed
    (INSTANCE, "AWS-StartSSHSession"),  # the document is denied
    (OTHER_INSTANCE, "SSM-SessionManagerRunShell"),  # the target is denied
)


def start_session_runner(ps: PolicySet) -> Runner:
    def run(k: int) -> int:
        for target, document in islice(cycle(_START_CALLS), k):
            authorize_start_session(
                ps,
                Principal.from_arn(ALICE),
                target_arn=target,
                region=REGION,
                account=ACCOUNT,
                document_name=document,
            )
        return k

    return run


def evaluations_per_call() -> float:
    """How many PolicySet.evaluate calls one authorize_start_session call makes, on average."""
    ps = hatchway_policy_set([SEED_POLICY])
    inner = ps.evaluate
    count = 0

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal count
        count += 1
        return inner(*args, **kwargs)

    ps.evaluate = counting  # type: ignore[method-assign]
    start_session_runner(ps)(len(_START_CALLS))
    return count / len(_START_CALLS)


# --- output --------------------------------------------------------------------------------------


def _n(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:,.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    r = a / b
    return f"{r:,.0f}×" if r >= 100 else f"{r:,.1f}×" if r >= 10 else f"{r:,.2f}×"


def print_table(rows: Sequence[Row]) -> None:
    head = (
        "| scenario | statements | hatchway/s | prebuilt/s | moto/s | cedarpy/s "
        "| cedarpy batch/s | hatchway ÷ moto | hatchway ÷ cedarpy |"
    )
    print(head)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row.scenario.title} | {row.scenario.statements:,} | {_n(row.hatchway)} "
            f"| {_n(row.prebuilt)} | {_n(row.moto)} | {_n(row.cedar)} | {_n(row.cedar_batch)} "
            f"| {_ratio(row.hatchway, row.moto)} | {_ratio(row.hatchway, row.cedar)} |"
        )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "not installed"


def _revision() -> str:
    """The commit measured, and whether the engine's sources differ from it."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "hatchway"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"commit {head}" + (" + uncommitted changes under hatchway/" if dirty else "")


def pin_one_cpu() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})
    return f"pinned to CPU {cpus[-1]} of {len(cpus)} available"


def check_validator(scenarios: Iterable[Scenario]) -> str:
    """Whether ``parse_policy`` (the validator) accepts the hand-written documents."""
    try:
        from hatchway.iam import parse_policy

        for sc in scenarios:
            for doc in sc.documents:
                parse_policy(json.dumps(doc))
    except Exception as e:
        return f"parse_policy rejected or failed: {type(e).__name__}: {e}"
    return "parse_policy accepts the seed and quickstart documents"


# --- main ----------------------------------------------------------------------------------------


def scenarios() -> list[Scenario]:
    return [
        seed_scenario(),
        end_user_scenario(),
        admin_scenario(),
        synthetic_scenario(10),
        synthetic_scenario(1_000),
        synthetic_scenario(10_000),
        synthetic_scenario(10_000, wildcards=True),
    ]


def profile(key: str, s: Settings) -> None:
    if key == "startsession":
        run = start_session_runner(hatchway_policy_set([SEED_POLICY]))
    else:
        sc = next(x for x in scenarios() if x.key == key)
        run = hatchway_built(hatchway_policy_set(sc.documents), sc.requests)
    run(1000)
    prof = cProfile.Profile()
    prof.enable()
    run(max(1, int(rate(run, Settings(1, s.seconds)) * s.seconds * 5)))
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per figure (median)")
    parser.add_argument("--seconds", type=float, default=0.2, help="length of one timed run")
    parser.add_argument(
        "--profile",
        metavar="SCENARIO",
        help="cProfile hatchway on one scenario (seed, enduser, admin, syn10, syn1000, "
        "syn10000, wild10000, startsession) and exit",
    )
    args = parser.parse_args(argv)
    s = Settings(args.repeats, args.seconds)
    pinned = pin_one_cpu()
    if args.profile:
        profile(args.profile, s)
        return 0

    started = time.perf_counter()
    print("# IAM policy decisions per second")
    print(f"date:    {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}")
    print(f"machine: {_cpu_model()}, nproc {os.cpu_count()}, {pinned}")
    print(
        f"python:  {platform.python_implementation()} {platform.python_version()}; "
        f"hatchway {_version('hatchway')}, moto {_version('moto')}, "
        f"cedarpy {_version('cedarpy')}"
    )
    print(f"source:  {_revision()}")
    print(f"method:  median of {s.repeats} runs of ~{s.seconds}s, single-threaded")
    all_scenarios = scenarios()
    print(f"validator: {check_validator(all_scenarios[:3])}")
    print()

    rows: list[Row] = []
    for sc in all_scenarios:
        print(f"running {sc.key} ({sc.statements:,} statements)…", file=sys.stderr, flush=True)
        rows.append(run_scenario(sc, s))

    seed_ps = hatchway_policy_set([SEED_POLICY])
    calls = rate(start_session_runner(seed_ps), s)
    evals = evaluations_per_call()

    print("## Decisions per second (higher is better)")
    print()
    print_table(rows)
    print()
    print(
        f"authorize_start_session on the seed policy (principal parsed per call, mix of 4 "
        f"calls, {evals:.2f} evaluations per call): {_n(calls)} calls/s = "
        f"{_n(calls * evals)} evaluations/s"
    )
    print()

    by_key = {r.scenario.key: r for r in rows}
    seed = by_key["seed"]
    small, big, wild = by_key["syn10"], by_key["syn10000"], by_key["wild10000"]
    print("## Goals")
    print()
    ok = "met" if seed.hatchway >= 100_000 else "MISSED"
    print(
        f"- seed policy ≥ 100,000 decisions/s on one core: {_n(seed.hatchway)}/s with the "
        f"request built per decision, {_n(seed.prebuilt)}/s prebuilt — {ok}"
    )

    def runners(row: Row) -> tuple[Runner, Runner]:
        assert row.policy_set is not None
        reqs = row.scenario.requests
        return hatchway_built(row.policy_set, reqs), hatchway_prebuilt(row.policy_set, reqs)

    (small_b, small_p), (big_b, big_p), (wild_b, wild_p) = map(runners, (small, big, wild))
    slow, slow_pre = slowdown(small_b, big_b, s), slowdown(small_p, big_p, s)
    ok = "met" if slow <= 2 else "MISSED"
    print(
        f"- 10,000 statements ≤ 2× slower than 10: {slow:.2f}× ({slow_pre:.2f}× prebuilt; "
        f"median of interleaved rounds) — {ok}"
    )
    print(
        f"- worst case, 10,000 statements with SSM wildcard actions vs 10: "
        f"{slowdown(small_b, wild_b, s):.0f}× slower ({slowdown(small_p, wild_p, s):.0f}× "
        "prebuilt) — not a goal, shown for scale"
    )
    for name, a, b in (
        ("moto", small.moto, big.moto),
        ("cedarpy", small.cedar, big.cedar),
        ("cedarpy batch", small.cedar_batch, big.cedar_batch),
    ):
        if a is not None and b is not None:
            print(f"- {name} 10,000 / 10 statements slowdown: {a / b:,.1f}×")
    print()

    print("## Setup (one-off, milliseconds)")
    print()
    print(
        "| scenario | hatchway compile | hatchway first decision | moto IAMPolicy | cedarpy parse |"
    )
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        st = row.setup

        def ms(key: str, st: dict[str, float] = st) -> str:
            return f"{st[key] * 1000:,.2f}" if key in st else "n/a"

        print(
            f"| {row.scenario.title} | {ms('hatchway compile')} | "
            f"{ms('hatchway first decision')} | {ms('moto IAMPolicy')} | "
            f"{ms('cedarpy PolicySet')} |"
        )
    print()

    print("## Do the engines agree?")
    print()
    for row in rows:
        print(f"- {row.scenario.key}:")
        for line in row.agreement:
            print(f"  - {line}")
    print()
    print(f"total time: {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
