"""``hatchway policy evaluate`` on the batch of ``policy_evaluate.py``: the current
``hatchway/cli/policybatch.py`` against another version of that file, in one process.

    git show <commit>:hatchway/cli/policybatch.py > /tmp/policybatch_before.py
    .venv/bin/python bench/policy_evaluate_ab.py /tmp/policybatch_before.py [--runs 9]

Runs alternate (before, now, before, now …) over the same lines, so that a shared machine's
load weighs on both alike; figures are decisions per CPU second of the process, pinned to one
CPU, the median of ``--runs`` runs each. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import policy_evaluate as pe

from hatchway.cli import policybatch as now


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("policybatch_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rate(module: Any, lines: list[str]) -> float:
    out = io.StringIO()
    start = time.process_time()
    module.evaluate_stream([iter(lines)], out)
    return len(lines) / (time.process_time() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("before", help="another version of hatchway/cli/policybatch.py")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--lines", type=int, default=30_000)
    args = ap.parse_args()
    before = load(args.before)
    print(pe.pin_one_cpu())
    lines = pe.batch(args.lines)
    a: list[float] = []
    b: list[float] = []
    for _ in range(args.runs):
        a.append(rate(before, lines))
        b.append(rate(now, lines))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"before: {ma:,.0f}/s  now: {mb:,.0f}/s  ratio {mb / ma:.2f}x  ({args.runs} runs each)")


if __name__ == "__main__":
    main()
