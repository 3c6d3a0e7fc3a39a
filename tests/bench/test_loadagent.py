"""bench/loadagent.py against a real broker: simulated nodes register through an activation,
hold their control channels (Online in DescribeInstanceInformation), and serve sessions that
Hatchway's own plugin (``hatchway.client.session.Session``) and the lean load client open:
the handshake when the session type needs one, acknowledgements, input echoed as output, and
TerminateSession ending them."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "client"))

import harness  # noqa: E402
from harness.client import PipeClient, wait_for  # noqa: E402
from loadagent import LoadAgent, LoadClient  # noqa: E402

srv = harness
NODES = 3


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    b = srv.start_broker(tmp_path_factory.mktemp("loadagent") / "data")
    yield b
    srv.stop_broker(b)


def _statuses(ssm: Any, ids: list[str]) -> dict[str, str]:
    found = ssm.describe_sessions(State="History")["Sessions"]
    return {s["SessionId"]: s["Status"] for s in found if s["SessionId"] in ids}


def test_simulated_nodes_serve_the_plugin_and_the_load_client(
    broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", srv.ADMIN_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", srv.ADMIN_SECRET)
    ssm = broker.client("ssm")
    act = ssm.create_activation(IamRole="SSMServiceRole", RegistrationLimit=NODES)

    async def go() -> None:
        agent = LoadAgent([broker.url], srv.REGION)
        await agent.register([(act["ActivationId"], act["ActivationCode"], NODES)])
        await asyncio.wait_for(agent.connect_all(), 30)
        ids = [n.instance_id for n in agent.nodes]
        assert len(ids) == NODES and all(i.startswith("mi-") for i in ids)
        info = await asyncio.to_thread(
            ssm.describe_instance_information,
            Filters=[{"Key": "InstanceIds", "Values": ids}],
        )
        listed = {i["InstanceId"]: i for i in info["InstanceInformationList"]}
        assert {i: listed[i]["PingStatus"] for i in ids} == dict.fromkeys(ids, "Online")
        assert listed[ids[0]]["PlatformName"] == "Hatchway Load"

        # Hatchway's plugin: the prompt, then what it types comes back.
        response = await asyncio.to_thread(ssm.start_session, Target=ids[0])
        client = PipeClient(response, broker.url)
        task = asyncio.create_task(client.session.run())
        try:
            await wait_for(lambda: b"$ " in client.output, 15)
            client.type(b"ping-load-1")
            await wait_for(lambda: b"ping-load-1" in client.output, 15)
            assert agent.stats["echoed"] >= 1
            await asyncio.to_thread(ssm.terminate_session, SessionId=response["SessionId"])
            await asyncio.wait_for(task, 20)
        finally:
            client.close()

        # The lean client: a shell on each node, and a Port session (which handshakes).
        lean = LoadClient(srv.ADMIN_KEY, srv.ADMIN_SECRET, srv.REGION)
        await asyncio.wait_for(lean.start_many([(i, broker.url) for i in ids], 2), 30)
        assert lean.errors == {}
        assert [bytes(s.output) for s in lean.sessions] == [b"$ "] * NODES
        for side in lean.sessions:
            assert await asyncio.wait_for(lean.echo(side, b"hello"), 15) > 0
        port = await asyncio.wait_for(
            lean.start_one(
                await _conn(broker.url),
                broker.url,
                ids[1],
                "AWS-StartPortForwardingSession",
                {"portNumber": ["22"]},
            ),
            15,
        )
        assert port.handshake.done
        await asyncio.wait_for(lean.terminate_all(2), 60)
        assert lean.errors == {}
        assert all(s.closed.is_set() for s in lean.sessions)
        ended = [response["SessionId"], *(s.session_id for s in lean.sessions)]
        statuses = await asyncio.to_thread(_statuses, ssm, ended)
        assert statuses == dict.fromkeys(ended, "Terminated")

    asyncio.run(go())


async def _conn(url: str) -> Any:
    from leanhttp import Connection

    return await Connection.open(url.split("://", 1)[1])
