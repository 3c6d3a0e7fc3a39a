"""One request pipeline (hatchway/server/front/pipeline.py) that no endpoint can skip.

Every route of every application the broker builds (the primary's, the ``--metrics-listen``
one, an API worker's) is requested over HTTP while the store cannot commit: each answer must
be the pipeline's (commit before answering), an AWS-shaped server error with its request id,
and audited under that id. The API is then driven with boto3: an operation that raises is
answered with AWS's InternalServerError and audited with the caller, and a write whose commit
fails is not answered as done.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from botocore.config import Config
from botocore.exceptions import ClientError

from hatchway.server.accounts.bootstrap import bootstrap
from hatchway.server.app import create_app, create_metrics_app, open_state
from hatchway.server.base.crypto import SecretBox
from hatchway.server.front import pipeline
from hatchway.server.front.call import OPERATIONS, Call
from hatchway.server.ops import seed_account
from hatchway.server.process.workers import worker_app
from hatchway.server.runtime.state import ServerConfig, ServerState
from hatchway.server.store import Store

SAMPLES = {"instance_id": "mi-0123456789abcdef0", "session_id": "admin-0123456789abcdef0"}
SERVER_ERRORS = {"InternalFailure", "InternalServerError"}


ADMIN_KEYS: dict[Path, tuple[str, str]] = {}  # data dir -> the admin's generated key


@pytest.fixture
def state(tmp_path: Path) -> Iterator[ServerState]:
    config = ServerConfig(data_dir=tmp_path)
    store = Store(config.store_url)
    st = open_state(config, store, SecretBox.from_dir(tmp_path), [])
    keys = bootstrap(st, seed_account)
    assert keys is not None
    ADMIN_KEYS[tmp_path] = keys
    yield st
    st.audit_log.close()
    store.close()


def _audit_events(state: ServerState) -> list[dict[str, Any]]:
    lines = state.audit_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line]


def _event(state: ServerState, request_id: str) -> dict[str, Any]:
    found = [e for e in _audit_events(state) if e["requestID"] == request_id]
    assert len(found) == 1, f"{len(found)} audit events for {request_id}"
    return found[0]


async def _hand_back(request: web.Request) -> web.StreamResponse:
    return web.Response(text="handed back")


APPS: dict[str, Callable[[ServerState], web.Application]] = {
    "primary": create_app,
    "metrics": create_metrics_app,
    "worker": lambda state: worker_app(state, _hand_back),
}


def _requests(app: web.Application) -> list[tuple[str, str, str]]:
    """(method, path, route name) for each route of ``app``, placeholders filled in."""
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        pattern = info.get("path") or info.get("formatter") or "/"
        path = re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: SAMPLES.get(m.group(1), "x"), pattern)
        method = "PUT" if route.method == "*" else route.method
        out.append((method, path, route.name or ""))
    return out


async def _serve(app: web.Application, test: Callable[[str], Awaitable[None]]) -> None:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        await test(str(server.make_url("")))
    finally:
        await server.close()


@pytest.mark.parametrize("which", sorted(APPS))
def test_every_route_commits_before_answering_shapes_and_audits(
    which: str, state: ServerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def cannot_commit() -> None:
        raise OSError("disk full")

    monkeypatch.setattr(state.store, "settled", cannot_commit)
    app = APPS[which](state)
    assert pipeline.call_middleware in app.middlewares
    requests = _requests(app)
    assert requests, "no routes"

    async def test(base: str) -> None:
        async with ClientSession() as http:
            for method, path, name in requests:
                async with http.request(method, base + path) as response:
                    body = await response.read()
                    where = f"{which}: {method} {path} ({name})"
                    assert response.status == 500, f"{where}: {response.status} {body[:200]!r}"
                    request_id = response.headers.get("x-amzn-RequestId", "")
                    assert request_id, where
                    if method != "HEAD":
                        assert json.loads(body)["__type"] in SERVER_ERRORS, where
                    event = _event(state, request_id)
                    assert event["errorCode"] in SERVER_ERRORS, where
                    if name and name != "hatchway:Api":
                        assert event["eventName"] == name.partition(":")[2], where

    asyncio.run(_serve(app, test))


def test_every_route_is_named_for_its_audit_events(state: ServerState) -> None:
    for which, build in APPS.items():
        for method, path, name in _requests(build(state)):
            assert re.fullmatch(r"[a-z0-9]+:[A-Z]\w+", name), f"{which}: {method} {path}"


def _ssm(base: str, state: ServerState) -> Any:
    akid, secret = ADMIN_KEYS[state.config.data_dir]
    return boto3.client(
        "ssm",
        endpoint_url=base,
        region_name=state.config.region,
        aws_access_key_id=akid,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


def test_an_operation_that_fails_is_shaped_and_audited_with_its_caller(
    state: ServerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(call: Call, params: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("a bug")

    monkeypatch.setitem(OPERATIONS, ("ssm", "DescribeSessions"), broken)

    async def test(base: str) -> None:
        ssm = _ssm(base, state)
        with pytest.raises(ClientError) as caught:
            await asyncio.to_thread(ssm.describe_sessions, State="Active")
        err = caught.value.response
        assert err["Error"]["Code"] == "InternalServerError"
        assert err["ResponseMetadata"]["HTTPStatusCode"] == 500
        event = _event(state, err["ResponseMetadata"]["RequestId"])
        assert event["eventName"] == "DescribeSessions"
        assert event["userIdentity"]["arn"].endswith(":user/admin")
        assert event["errorCode"] == "InternalServerError"
        assert event["requestParameters"] == {"State": "Active"}
        # the broker goes on serving
        assert (await asyncio.to_thread(ssm.describe_instance_information))[
            "InstanceInformationList"
        ] == []

    asyncio.run(_serve(create_app(state), test))


def test_a_write_whose_commit_fails_is_not_answered_as_done(
    state: ServerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def cannot_commit() -> None:
        raise OSError("disk full")

    async def test(base: str) -> None:
        ssm = _ssm(base, state)
        monkeypatch.setattr(state.store, "settled", cannot_commit)
        with pytest.raises(ClientError) as caught:
            await asyncio.to_thread(
                ssm.create_activation, IamRole="SSMServiceRole", RegistrationLimit=1
            )
        err = caught.value.response
        assert err["Error"]["Code"] == "InternalServerError"
        event = _event(state, err["ResponseMetadata"]["RequestId"])
        assert (event["eventName"], event["errorCode"]) == (
            "CreateActivation",
            "InternalServerError",
        )
        assert event["userIdentity"]["arn"].endswith(":user/admin")

    asyncio.run(_serve(create_app(state), test))
