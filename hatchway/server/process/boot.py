"""What every broker process does as it starts, the primary (``main``) and each API worker
(``workers``) alike: read the SCP files, and settle the memory loaded so far."""

from __future__ import annotations

import gc
import json
from pathlib import Path

from hatchway.iam import PolicyKind, parse_policy


def load_scps(files: list[Path]) -> list[list[object]]:
    """Each SCP file is one level (root first); a file may hold one policy or a list."""
    levels: list[list[object]] = []
    for f in files:
        data = json.loads(f.read_text())
        docs = data if isinstance(data, list) else [data]
        levels.append(
            [
                parse_policy(json.dumps(d), PolicyKind.SCP, name=f"{f.name}#{i}")
                for i, d in enumerate(docs)
            ]
        )
    return levels


def settle_memory() -> None:
    """Once started: everything loaded so far (botocore's models, compiled policies, the app)
    lives as long as the process, so keep it out of the cyclic collector's scans, which
    otherwise walk it on every full collection; and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 50)
