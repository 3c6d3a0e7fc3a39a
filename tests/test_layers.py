"""The import rules of docs/architecture.md: cores never import shells, shells never each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "hatchway"
ALLOWED = {
    "iam": set(),
    "ssm": {"iam"},
    "protocol": set(),
    "server": {"iam", "ssm", "protocol"},
    "agent": {"iam", "ssm", "protocol"},
    "client": {"iam", "ssm", "protocol"},
    "cli": {"iam", "ssm", "protocol", "server", "agent", "client"},
}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "hatchway" and len(parts) > 1:
                found.add(parts[1])
    return found


PRESENT = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists())


def test_every_package_has_a_layer() -> None:
    assert set(PRESENT) <= set(ALLOWED), set(PRESENT) - set(ALLOWED)


@pytest.mark.parametrize("package", PRESENT)
def test_package_imports_only_what_its_layer_may(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        bad = _imports(path) - ALLOWED[package] - {package}
        assert not bad, f"{path.relative_to(ROOT)} imports hatchway.{sorted(bad)}"
