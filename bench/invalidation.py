"""How long a change through one broker takes to reach another broker's caches.

Starts a throwaway PostgreSQL cluster (as the tests do) and two brokers on one database, B with
``--workers 1`` unless ``--workers 0`` is given. Each round changes something through broker A
and then asks broker B, as fast as one client can, until B's answer reflects the change:

* ``policy``: detach (and attach again) a managed policy; B's answer turns AccessDenied (and
  back to allowed);
* ``key``: delete an access key B has just served; B's answer turns InvalidClientTokenId.

The delay is from A's response to B's first answer that reflects the change, so it includes
one request to B (a few milliseconds). Prints p50 / p90 / p99 / max per kind. Needs root (or the
postgres user) and PostgreSQL 15, like the tests.

    .venv/bin/python bench/invalidation.py [--rounds 100] [--workers 1]
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from benchlib import ROOT, machine, server_conftest
from botocore.exceptions import ClientError

sys.path.insert(0, str(ROOT / "tests"))
from harness.postgres import postgres_cluster, why_unavailable

LIST_USERS = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "iam:ListUsers", "Resource": "*"}],
}


def _refused(sts: Any) -> bool:
    """True once ``sts`` (signed with a deleted key) is refused."""
    return code(sts.get_caller_identity) is not None


def code(call: Callable[[], object]) -> str | None:
    try:
        call()
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return None


def until(check: Callable[[], bool], limit: float = 30.0) -> float:
    """Seconds until ``check`` first holds (polled back to back)."""
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > limit:
            raise RuntimeError("the change never reached broker B")
    return time.perf_counter() - start


def quantiles(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return (
        f"n={len(ms)}  p50 {q[49]:.1f} ms  p90 {q[89]:.1f} ms  p99 {q[98]:.1f} ms  "
        f"max {ms[-1]:.1f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--workers", type=int, default=1, help="API workers of broker B")
    args = ap.parse_args()
    reason = why_unavailable()
    if reason is not None:
        sys.exit(f"cannot run: {reason}")
    cf = server_conftest()
    root = Path(tempfile.mkdtemp(prefix="hatchway-inval-bench-"))
    with postgres_cluster() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE hatchway_bench")
        db = url.rsplit("/", 1)[0] + "/hatchway_bench"
        a = cf.start_broker(root / "a", "--database-url", db)
        (root / "b").mkdir(mode=0o700)
        shutil.copy(root / "a" / "master.key", root / "b" / "master.key")
        b = cf.start_broker(root / "b", "--database-url", db, "--workers", str(args.workers))
        try:
            iam_a = a.client("iam")
            arn = iam_a.create_policy(PolicyName="bench", PolicyDocument=json.dumps(LIST_USERS))[
                "Policy"
            ]["Arn"]
            iam_a.create_user(UserName="bench")
            iam_a.attach_user_policy(UserName="bench", PolicyArn=arn)
            k = iam_a.create_access_key(UserName="bench")["AccessKey"]
            iam_b = b.client("iam", k["AccessKeyId"], k["SecretAccessKey"])
            until(lambda: code(iam_b.list_users) is None)
            policy: list[float] = []
            for _ in range(args.rounds):
                iam_a.detach_user_policy(UserName="bench", PolicyArn=arn)
                policy.append(until(lambda: code(iam_b.list_users) == "AccessDenied"))
                iam_a.attach_user_policy(UserName="bench", PolicyArn=arn)
                policy.append(until(lambda: code(iam_b.list_users) is None))
            keys: list[float] = []
            iam_a.create_user(UserName="keys")
            for _ in range(args.rounds):
                key = iam_a.create_access_key(UserName="keys")["AccessKey"]
                sts_b = b.client("sts", key["AccessKeyId"], key["SecretAccessKey"])
                sts_b.get_caller_identity()  # B has the key in its cache
                iam_a.delete_access_key(UserName="keys", AccessKeyId=key["AccessKeyId"])
                keys.append(until(functools.partial(_refused, sts_b)))
        finally:
            cf.stop_broker(b)
            cf.stop_broker(a)
            shutil.rmtree(root, ignore_errors=True)
    print(f"# Invalidation across brokers ({machine()}; broker B --workers {args.workers})")
    print(f"policy detached/attached on A, seen on B: {quantiles(policy)}")
    print(f"access key deleted on A, refused by B:    {quantiles(keys)}")


if __name__ == "__main__":
    main()
