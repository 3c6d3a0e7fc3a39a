"""The broker's shared state and its session records are typed (issue 10, item 3).

``ServerState`` declares every attribute with a type that holds no ``Any`` (resolved as Python
resolves it, with ``typing.get_type_hints``), so mypy sees what the nodes, relays, link and
caches hold. Session rows are :class:`~hatchway.server.store.SessionRow` values: the rows a
running broker writes, through the real AWS CLI and boto3, have exactly its columns, and their
``data`` only keys :class:`~hatchway.server.store.SessionData` declares, of the declared types.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

import pytest
from harness import Agent, Broker, allow_instance_id, start_agent, start_broker, stop_broker

from hatchway.server.base.crypto import SecretBox
from hatchway.server.runtime.state import ServerConfig, ServerState
from hatchway.server.store import NodeRow, SessionData, SessionRow, Store
from hatchway.server.store import schema as t

TARGET = "i-0a7e5c0ffee123456"


def _anys(hint: object, where: str) -> list[str]:
    """Where ``Any`` occurs in a resolved annotation (inside unions, generics, aliases)."""
    if hint is Any:
        return [where]
    found: list[str] = []
    for arg in get_args(hint):
        if isinstance(arg, list):  # Callable's parameter list
            for a in arg:
                found += _anys(a, where)
        else:
            found += _anys(arg, where)
    return found


def test_server_state_declares_every_attribute_and_no_any(tmp_path: Path) -> None:
    hints = get_type_hints(ServerState)
    anys = [w for name, hint in hints.items() for w in _anys(hint, name)]
    assert anys == [], f"ServerState attributes typed with Any: {anys}"
    for name in ("nodes", "relays", "link", "policy_cache", "key_cache", "doc_cache"):
        assert name in hints, name
    store = Store("sqlite://")
    try:
        state = ServerState(
            ServerConfig(data_dir=tmp_path), store, SecretBox.from_dir(tmp_path), []
        )
        undeclared = set(vars(state)) - set(hints)
        assert not undeclared, f"ServerState attributes without a declared type: {undeclared}"
        state.audit_log.close()
    finally:
        store.close()


def test_the_any_finder_finds_any() -> None:
    """The check above is not vacuous: it sees ``Any`` however deep it sits."""
    assert _anys(dict[str, Any], "x") == ["x"]
    assert _anys(dict[str, tuple[tuple[int, int], Any | None]], "x") == ["x"]
    assert _anys(typing.Callable[[Any], int], "x") == ["x"]
    assert _anys(dict[str, list[int]] | None, "x") == []


def test_typed_rows_have_their_table_columns() -> None:
    assert set(get_type_hints(SessionRow)) == set(t.sessions.c.keys())
    assert set(get_type_hints(NodeRow)) == set(t.instances.c.keys())


def _conforms(value: object, hint: object, where: str) -> list[str]:
    """Where ``value`` does not match ``hint`` (the forms the session records use)."""
    if hint is Any or hint is object:
        return []
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [_conforms(value, h, where) for h in get_args(hint)]
        return [] if any(not o for o in options) else [f"{where}: {value!r} is not {hint}"]
    if origin is Literal:
        return [] if value in get_args(hint) else [f"{where}: {value!r} not in {hint}"]
    if hint is type(None):
        return [] if value is None else [f"{where}: {value!r} is not None"]
    if is_typeddict(hint):
        if not isinstance(value, dict):
            return [f"{where}: {value!r} is not a dict"]
        fields = get_type_hints(hint)
        required: frozenset[str] = getattr(hint, "__required_keys__", frozenset())
        out = [f"{where}: {k} is not declared" for k in value if k not in fields]
        out += [f"{where}: {k} is missing" for k in required if k not in value]
        for k, v in value.items():
            if k in fields:
                out += _conforms(v, fields[k], f"{where}.{k}")
        return out
    if origin is dict:
        key, val = get_args(hint)
        if not isinstance(value, dict):
            return [f"{where}: {value!r} is not a dict"]
        out = []
        for k, v in value.items():
            out += _conforms(k, key, f"{where}[key]") + _conforms(v, val, f"{where}[{k!r}]")
        return out
    if origin is list:
        (item,) = get_args(hint)
        if not isinstance(value, list):
            return [f"{where}: {value!r} is not a list"]
        return [e for i, v in enumerate(value) for e in _conforms(v, item, f"{where}[{i}]")]
    assert isinstance(hint, type), hint
    if hint is int and isinstance(value, bool):
        return [f"{where}: {value!r} is a bool"]
    return [] if isinstance(value, hint) else [f"{where}: {value!r} is not {hint.__name__}"]


def test_the_conformance_check_is_not_vacuous() -> None:
    ok: dict[str, Any] = {
        "session_id": "s",
        "target": TARGET,
        "status": "Connected",
        "owner": "arn",
        "start_date": datetime.now(),
        "end_date": None,
        "document_name": "d",
        "data": {"tags": {"a": "b"}, "exit_code": 3},
    }
    assert _conforms(ok, SessionRow, "row") == []
    assert _conforms({**ok, "status": "Lost"}, SessionRow, "row")
    assert _conforms({**ok, "data": {"surprise": 1}}, SessionRow, "row")
    assert _conforms({**ok, "data": {"tags": {"a": 1}}}, SessionRow, "row")
    assert _conforms({k: v for k, v in ok.items() if k != "owner"}, SessionRow, "row")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("broker") / "data")
    yield b
    stop_broker(b)


@pytest.fixture(scope="module")
def node(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    activation = broker.client("ssm").create_activation(
        IamRole="SSMServiceRole", Tags=[{"Key": "team", "Value": "a"}]
    )
    allow_instance_id(broker, activation["ActivationId"], TARGET)
    a = start_agent(broker, tmp_path_factory.mktemp("node") / "state", TARGET, activation)
    yield a
    a.stop()


def test_session_rows_a_broker_writes_are_session_records(broker: Broker, node: Agent) -> None:
    """A command run through the AWS CLI and our plugin (it ends with the command's exit code
    in the record) and a shell session started and terminated with boto3."""
    ran = broker.aws(
        "ssm",
        "start-session",
        "--target",
        TARGET,
        "--document-name",
        "AWS-StartNonInteractiveCommand",
        "--parameters",
        "command=exit 3",
        "--reason",
        "typed records",
    )
    # The AWS CLI answers 255 when its plugin (ours, exiting with the command's code) fails.
    assert ran.returncode == 255 and "returned non-zero exit status 3" in ran.stderr, ran
    ssm = broker.client("ssm")
    shell = ssm.start_session(Target=TARGET)["SessionId"]
    ssm.terminate_session(SessionId=shell)
    store = Store(f"sqlite:///{broker.data_dir / 'hatchway.db'}")
    try:
        rows = store.sessions()
        assert len(rows) == 2 and shell in {r["session_id"] for r in rows}
        for row in rows:
            assert set(row) == set(get_type_hints(SessionRow))
            assert _conforms(row, SessionRow, row["session_id"]) == []
        (command,) = (r for r in rows if r["session_id"] != shell)
        data: SessionData = command["data"]
        assert data["exit_code"] == 3 and data["reason"] == "typed records"
        assert data["session_type"] == "NonInteractiveCommands"
        assert store.session(shell) == next(r for r in rows if r["session_id"] == shell)
    finally:
        store.close()


def test_node_rows_a_broker_writes_are_node_records(broker: Broker, node: Agent) -> None:
    """The node registered with a tagged activation (boto3) and connected."""
    store = Store(f"sqlite:///{broker.data_dir / 'hatchway.db'}")
    try:
        (row,) = store.nodes()
        assert set(row) == set(get_type_hints(NodeRow))
        assert _conforms(row, NodeRow, TARGET) == []
        assert row["data"]["connected"] is True
        assert row["data"]["tags"] == [{"Key": "team", "Value": "a"}]
        assert store.node(TARGET) == row
    finally:
        store.close()
