"""The import rules of docs/architecture.md.

* Cores never import shells, shells never each other (``ALLOWED``).
* Inside the broker, ``hatchway/server``'s parts form layers (``SERVER_LAYERS``, lowest first):
  a module imports only from its own layer or those below, whether the import is at the top of
  the module, inside a function, or under ``if TYPE_CHECKING:``.
* No import cycle between hatchway's modules, imports inside functions included (they are how
  cycles hid). Only imports under ``if TYPE_CHECKING:`` are left out of this check: they never
  run, and let a module name the type of the state it is handed (``runtime/audit.py`` and
  ``runtime/state.py``). They still obey the layers.
* No module takes another module's ``_private`` name (``from m import _x`` or ``m._x``).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
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

SERVER_LAYERS: list[set[str]] = [
    {"base"},  # errors, crypto, log lines, metrics counters, CPU pool, TLS
    {"store"},  # the database
    {"awswire"},  # AWS JSON 1.1 and Query: parse, validate, render
    {"runtime"},  # config and ServerState, the audit trail, throttling
    {"accounts"},  # IAM entities in the store, AWS-managed policies, first start
    {"keyring"},  # the built-in KMS's keys and ciphertext blobs
    {"recordings"},  # session recordings: ingest, formats, delivery
    {"front"},  # the AWS front door: limits, SigV4, identity, the call and its pipeline
    {"control"},  # node registration and control channels
    {"ops"},  # the SSM, IAM, STS and KMS operations
    {"relay"},  # the data channel between client and node
    {"app", "gauges"},  # the aiohttp applications; the state's Prometheus gauges
    {"process"},  # the primary process and its API workers
]


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module (or package), dotted
    name: str | None  # the name taken from it (``from target import name``), if any
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``
    attribute: bool = False  # ``module.name`` where ``module`` was imported, not an import


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module and package under ``root`` (a package dir)."""
    found: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, type_only: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        inner = type_only or (isinstance(child, ast.If) and _type_checking(child))
        yield child, inner
        yield from _walk(child, inner)


@functools.cache
def imports(root: Path) -> list[Import]:
    """Every import of a hatchway module by a hatchway module, wherever it is written."""
    mods = modules(root)
    top = root.name
    found: list[Import] = []
    for module, path in mods.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        bound: dict[str, str] = {}  # local name -> hatchway module it names
        for node, type_only in _walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == top:
                        found.append(Import(module, alias.name, None, node.lineno, type_only))
                        if alias.asname:
                            bound[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != top:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in mods:  # ``from package import module``
                        found.append(Import(module, sub, None, node.lineno, type_only))
                        bound[alias.asname or alias.name] = sub
                    else:
                        found.append(Import(module, target, alias.name, node.lineno, type_only))
        for node, type_only in _walk(tree):  # ``module._private``
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
            ):
                found.append(
                    Import(module, bound[node.value.id], node.attr, node.lineno, type_only, True)
                )
    return found


def _private(name: str | None) -> bool:
    return name is not None and name.startswith("_") and not name.startswith("__")


def private_names(root: Path) -> list[str]:
    """``module:line takes target._name`` for each private name taken across modules."""
    return sorted(
        {
            f"{i.source}:{i.line} takes {i.target}.{i.name}"
            for i in imports(root)
            if _private(i.name) and i.target != i.source
        }
    )


def cycles(root: Path) -> list[list[str]]:
    """The import cycles between modules (strongly connected components of more than one
    module, or a module importing itself), ``TYPE_CHECKING`` imports left out."""
    mods = modules(root)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for i in imports(root):
        if not i.type_only and not i.attribute and i.target in mods:
            graph[i.source].add(i.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str, server: str) -> int | None:
    """The index in ``SERVER_LAYERS`` of a module under the broker package ``server``."""
    if not module.startswith(server + "."):
        return None
    part = module[len(server) + 1 :].split(".")[0]
    for n, layer in enumerate(SERVER_LAYERS):
        if part in layer:
            return n
    raise AssertionError(f"{server}.{part} is in no layer of SERVER_LAYERS")


def upward_imports(root: Path) -> list[str]:
    """Imports from a broker layer to one above it."""
    server = f"{root.name}.server"
    bad = []
    for i in imports(root):
        if i.attribute:
            continue
        mine, theirs = layer_of(i.source, server), layer_of(i.target, server)
        if mine is not None and theirs is not None and theirs > mine:
            bad.append(f"{i.source}:{i.line} imports {i.target} (a layer above)")
    return sorted(set(bad))


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


def test_every_part_of_the_broker_has_a_layer() -> None:
    parts = {
        p.stem
        for p in (ROOT / "server").iterdir()
        if p.name != "__init__.py" and (p.suffix == ".py" or (p / "__init__.py").exists())
    }
    listed = set().union(*SERVER_LAYERS)
    assert parts == listed, f"unlisted: {parts - listed}, gone: {listed - parts}"


def test_broker_imports_run_down_the_layers() -> None:
    assert upward_imports(ROOT) == []


def test_no_import_cycle() -> None:
    assert cycles(ROOT) == []


def test_no_module_takes_another_modules_private_name() -> None:
    assert private_names(ROOT) == []


# -- the checks themselves, on a small tree made for them ------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checks_see_cycles_through_functions_private_names_and_upward_imports(
    tmp_path: Path,
) -> None:
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "server/__init__.py": "",
            "server/base/__init__.py": "",
            "server/base/low.py": (
                "def f() -> None:\n    from pkg.server.ops import high\n    high.g()\n"
            ),
            "server/ops/__init__.py": "",
            "server/ops/high.py": (
                "from pkg.server.base import low\nfrom pkg.server.base.low import _hidden\n"
                "from . import other\n\ndef g() -> None:\n    other._secret()\n"
            ),
            "server/ops/other.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                "    from pkg.server.ops.high import g\n"
            ),
        },
    )
    assert cycles(root) == [["pkg.server.base.low", "pkg.server.ops.high"]]
    assert private_names(root) == [
        "pkg.server.ops.high:2 takes pkg.server.base.low._hidden",
        "pkg.server.ops.high:6 takes pkg.server.ops.other._secret",
    ]
    assert upward_imports(root) == [
        "pkg.server.base.low:2 imports pkg.server.ops.high (a layer above)"
    ]
