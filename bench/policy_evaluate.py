"""``hatchway policy evaluate`` on a batch: decisions per second, against the engine alone.

The batch (issue 15, item 11): ``--lines`` JSON lines (default 30,000) over six policy sets,
each line carrying its documents inline as AWS users' scripts write them. The sets are the
scenarios of ``iam_decisions.py`` (the seed policy, AWS's quickstart end-user and admin
policies, synthetic sets of 10 and 100 statements) and a cross-account set (identity policy,
permissions boundary and a resource policy naming the caller). Lines cycle through the sets in
a shuffled order, so consecutive lines rarely share their policies.

Figures are decisions per CPU second (``time.process_time``; the subprocess's from
``getrusage``), so that other load on a shared machine does not count; the process is pinned
to one CPU where the OS allows it, and each figure is the median of ``--repeats`` runs over the
whole batch:

* "policy evaluate, in process": ``hatchway.cli.policy.evaluate_stream`` over the batch, output
  to a string buffer: JSON parsing, policy-set lookup (or compilation), the decision and the
  output line.
* "policy evaluate, no cache": the same with the compiled-set cache off (``--no-cache`` of the
  command), i.e. every line's documents parsed and compiled again: the behaviour before the
  cache, kept as the baseline.
* "engine alone": ``PolicySet.evaluate`` on prebuilt requests and prebuilt sets (what a
  decision costs once everything is compiled).
* "console script": ``hatchway policy evaluate FILE`` as a subprocess, CPU time including
  interpreter start-up and reading the file, one run.

Nothing is asserted; the output is Markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import iam_decisions as scen

from hatchway.cli import policybatch as cli
from hatchway.iam import PolicyKind, PolicySet, compile_policy, make_request

CROSS_ACCOUNT = "444455556666"
CROSS_BUCKET = "arn:aws:s3:::shared-reports"
CROSS_QUEUE = f"arn:aws:sqs:us-west-2:{CROSS_ACCOUNT}:shared-queue"
CROSS_IDENTITY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["sqs:SendMessage", "sqs:ReceiveMessage"], "Resource": "*"},
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{CROSS_BUCKET}/*"},
    ],
}
CROSS_BOUNDARY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["sqs:*", "s3:Get*"], "Resource": "*"}],
}
CROSS_RESOURCE = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{scen.ACCOUNT}:user/alice"},
            "Action": "sqs:SendMessage",
            "Resource": CROSS_QUEUE,
        }
    ],
}


def policy_sets() -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """(title, the line's policy fields, request fields) per set."""
    out: list[tuple[str, dict[str, Any], list[dict[str, Any]]]] = []
    for sc in (
        scen.seed_scenario(),
        scen.end_user_scenario(),
        scen.admin_scenario(),
        scen.synthetic_scenario(10),
        scen.synthetic_scenario(100),
    ):
        reqs = [
            {
                "action": r.action,
                "resource": r.resource,
                "principal": r.principal,
                "context": r.context,
            }
            for r in sc.requests
        ]
        out.append((sc.title, {"policies": sc.documents}, reqs))
    alice = f"arn:aws:iam::{scen.ACCOUNT}:user/alice"
    bob = f"arn:aws:iam::{scen.ACCOUNT}:user/bob"
    cross = [
        {"action": "sqs:SendMessage", "resource": CROSS_QUEUE, "principal": alice},
        {"action": "sqs:SendMessage", "resource": CROSS_QUEUE, "principal": bob},
        {"action": "sqs:ReceiveMessage", "resource": CROSS_QUEUE, "principal": alice},
        {"action": "s3:GetObject", "resource": f"{CROSS_BUCKET}/q3.csv", "principal": alice},
    ]
    fields = {
        "policies": [CROSS_IDENTITY],
        "permissionBoundaries": [CROSS_BOUNDARY],
        "resourcePolicy": CROSS_RESOURCE,
    }
    out.append(("cross-account: identity + boundary + resource policy", fields, cross))
    return out


def batch(lines: int, seed: int = 15) -> list[str]:
    rng = random.Random(seed)
    sets = policy_sets()
    out: list[str] = []
    for i in range(lines):
        _, fields, reqs = sets[rng.randrange(len(sets))]
        out.append(json.dumps({"id": i, **fields, **rng.choice(reqs)}) + "\n")
    return out


def pin_one_cpu() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})
    return f"pinned to CPU {cpus[-1]} of {len(cpus)} available"


def median_rate(fn: Callable[[], int], repeats: int) -> float:
    """Decisions per CPU second of this process (other load on the machine does not count)."""
    rates = []
    for _ in range(repeats):
        start = time.process_time()
        n = fn()
        rates.append(n / (time.process_time() - start))
    return statistics.median(rates)


def in_process(lines: Sequence[str], cache: bool) -> Callable[[], int]:
    def run() -> int:
        out = io.StringIO()
        cli.evaluate_stream([iter(lines)], out, cache=cache)
        return len(lines)

    return run


def engine_alone(lines: Sequence[str]) -> Callable[[], int]:
    """Every line's set compiled once (outside the timing) and its request prebuilt."""
    compiled: dict[str, PolicySet] = {}
    work = []
    for raw in lines:
        obj = json.loads(raw)
        key = json.dumps({k: obj.get(k) for k in cli.POLICY_FIELDS})
        ps = compiled.get(key)
        if ps is None:
            ps = compiled[key] = PolicySet(
                [compile_policy(d) for d in obj["policies"]],
                resource=compile_policy(obj["resourcePolicy"], PolicyKind.RESOURCE)
                if obj.get("resourcePolicy")
                else None,
                boundary=[
                    compile_policy(d, PolicyKind.BOUNDARY) for d in obj["permissionBoundaries"]
                ]
                if obj.get("permissionBoundaries")
                else None,
            )
        req = make_request(
            obj["action"],
            obj["resource"],
            obj["principal"],
            obj.get("context"),
            cli.resource_account_of(obj),
        )
        work.append((ps, req))

    def run() -> int:
        for ps, req in work:
            ps.evaluate(req)
        return len(work)

    return run


def console_script(lines: Sequence[str]) -> float:
    exe = Path(sys.executable).with_name("hatchway")
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.writelines(lines)
        path = f.name
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            [str(exe), "policy", "evaluate", path], check=True, stdout=subprocess.DEVNULL
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        return len(lines) / cpu
    finally:
        os.unlink(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=30_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    pinned = pin_one_cpu()
    lines = batch(args.lines)
    sets = policy_sets()
    print("# `hatchway policy evaluate` on a batch")
    print(f"date:    {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}")
    print(f"machine: {scen._cpu_model()}, nproc {os.cpu_count()}, {pinned}")
    print(f"python:  {sys.version.split()[0]}; {scen._revision()}")
    size = sum(len(x) for x in lines) / len(lines)
    print(f"batch:   {len(lines):,} lines over {len(sets)} policy sets, {size:,.0f} bytes a line")
    for title, _, reqs in sets:
        print(f"  - {title} ({len(reqs)} requests)")
    # Same answers with and without the cache (a changed result would be a bug, not a figure).
    cached, uncached = io.StringIO(), io.StringIO()
    cli.evaluate_stream([iter(lines)], cached, cache=True)
    cli.evaluate_stream([iter(lines)], uncached, cache=False)
    same = cached.getvalue() == uncached.getvalue()
    errors = cached.getvalue().count('"error"')
    print(f"check:   cached and uncached outputs identical: {same}; error lines: {errors}")
    print()
    engine = median_rate(engine_alone(lines), args.repeats)
    with_cache = median_rate(in_process(lines, True), args.repeats)
    without = median_rate(in_process(lines, False), max(1, args.repeats // 2))
    script = console_script(lines)
    print("| path | decisions/s | ÷ no cache | ÷ engine alone |")
    print("|---|---:|---:|---:|")
    for name, value in (
        ("policy evaluate, in process (cache)", with_cache),
        ("policy evaluate, no cache (baseline)", without),
        ("engine alone, prebuilt sets and requests", engine),
        ("console script `hatchway policy evaluate FILE`, 1 run", script),
    ):
        print(f"| {name} | {value:,.0f} | {value / without:,.2f}× | {value / engine:,.2f}× |")
    print()
    goal = "met" if with_cache >= 50_000 else "not met"
    print(f"goal ≥ 50,000 decisions/s in process on one core: {goal} ({with_cache:,.0f}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
