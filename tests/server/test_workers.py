"""``hatchway server --workers 2``: API workers beside the broker's own process.

Real clients throughout (boto3, raw sockets); the data channel and the real plugin under tmux
run against a broker with workers in their own modules (test_data_channel, test_client_tmux).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from harness import ACCOUNT, Broker, start_agent, start_broker, stop_broker

ALLOW_STS = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "ssm:DescribeSessions", "Resource": "*"}],
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = start_broker(tmp_path_factory.mktemp("workers") / "data", "--workers", "2")
    yield b
    stop_broker(b)


def _workers(broker: Broker) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(broker.proc.pid), "-f", "hatchway.server.process.workers"],
        capture_output=True,
        text=True,
        check=False,
    )
    return [int(x) for x in out.stdout.split()]


def _wait_workers(broker: Broker, count: int, timeout: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        found = _workers(broker)
        if len(found) == count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(found)} workers, not {count}")
        time.sleep(0.1)


def _served_by(broker: Broker) -> set[int]:
    """Which processes hold established connections to the broker's port (by /proc)."""
    port = int(broker.url.rsplit(":", 1)[1])
    inodes: set[str] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state == "01" and int(local.split(":")[1], 16) == port:
            inodes.add(fields[9])
    holders = set()
    for pid in [broker.proc.pid, *_workers(broker)]:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    holders.add(pid)
        except OSError:
            continue
    return holders


def test_api_connections_are_served_by_the_workers(broker: Broker) -> None:
    workers = _wait_workers(broker, 2)
    clients = [broker.client("sts") for _ in range(6)]
    for c in clients:
        assert c.get_caller_identity()["Account"] == ACCOUNT
    # Each boto3 client keeps its connection open; they are spread over both workers and none
    # is served by the broker's own process.
    holders = _served_by(broker)
    assert holders == set(workers)


def test_an_iam_change_in_one_worker_applies_at_once_in_the_other(broker: Broker) -> None:
    iam = broker.client("iam")
    iam.create_user(UserName="wanda")
    key = iam.create_access_key(UserName="wanda")["AccessKey"]
    # Six clients, six connections: both workers serve some of them.
    users = [broker.client("ssm", key["AccessKeyId"], key["SecretAccessKey"]) for _ in range(6)]
    for ssm in users:
        with pytest.raises(ClientError) as denied:
            ssm.describe_sessions(State="Active")
        assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    iam.put_user_policy(UserName="wanda", PolicyName="p", PolicyDocument=json.dumps(ALLOW_STS))
    for ssm in users:  # the very next call, whichever worker serves it
        assert ssm.describe_sessions(State="Active")["Sessions"] == []
    iam.delete_user_policy(UserName="wanda", PolicyName="p")
    for ssm in users:
        with pytest.raises(ClientError) as denied:
            ssm.describe_sessions(State="Active")
        assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    # A deleted key stops working everywhere at once too.
    iam.put_user_policy(UserName="wanda", PolicyName="p", PolicyDocument=json.dumps(ALLOW_STS))
    iam.delete_access_key(UserName="wanda", AccessKeyId=key["AccessKeyId"])
    for ssm in users:
        with pytest.raises(ClientError) as gone:
            ssm.describe_sessions(State="Active")
        assert gone.value.response["Error"]["Code"] == "UnrecognizedClientException"


def _http(sock: socket.socket, request: bytes) -> tuple[int, bytes]:
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(head.split()[1]), body


def test_a_worker_hands_back_a_request_it_does_not_serve(broker: Broker) -> None:
    """A keep-alive connection that began with an API call and then asks for something only
    the broker's own process serves (here node registration) still gets its answer."""
    host, port = broker.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        body = b"{}"
        status, answer = _http(
            sock,
            b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: AmazonSSM.DescribeSessions\r\n"
            b"Content-Type: application/x-amz-json-1.1\r\nContent-Length: 2\r\n\r\n" + body,
        )
        assert status == 400 and b"MissingAuthenticationToken" in answer  # a worker's answer
        status, answer = _http(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200
        bad = b"not json"
        status, answer = _http(
            sock,
            b"POST /hatchway/v1/register HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 8\r\n\r\n" + bad,
        )
        assert status == 400
        assert json.loads(answer) == {
            "__type": "SerializationException",
            "message": "Invalid JSON body.",
        }
        # The connection now belongs to the broker's process and keeps working.
        status, answer = _http(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200


def test_deregister_closes_the_control_channel_in_the_brokers_process(
    broker: Broker, tmp_path: Path
) -> None:
    """(TerminateSession closing a live data channel is in test_data_channel[api-workers].)"""
    node = start_agent(broker, tmp_path / "node")
    try:
        ssm = broker.client("ssm")
        ssm.deregister_managed_instance(InstanceId=node.instance_id)  # served by a worker
        info = ssm.describe_instance_information()["InstanceInformationList"]
        assert node.instance_id not in [i["InstanceId"] for i in info]
        # The node's control channel, held by the broker's own process, is closed at once.
        deadline = time.monotonic() + 10
        while "closed by the broker (code 4001)" not in node.log.read_text():
            assert time.monotonic() < deadline, node.log.read_text()
            time.sleep(0.1)
    finally:
        node.stop()


def test_a_worker_that_dies_is_started_again(broker: Broker) -> None:
    before = _wait_workers(broker, 2)
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = _workers(broker)
        if len(now) == 2 and before[0] not in now:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the killed worker was not replaced")
    for _ in range(6):  # new connections all get served
        assert broker.client("sts").get_caller_identity()["Account"] == ACCOUNT
    log = broker.log.read_text()
    assert "starting it again" in log


def test_stopping_the_broker_stops_its_workers(tmp_path: Path) -> None:
    b = start_broker(tmp_path / "data", "--workers", "2")
    workers = _wait_workers(b, 2)
    assert b.client("sts").get_caller_identity()["Account"] == ACCOUNT
    stop_broker(b)
    assert b.proc.returncode == 0
    for pid in workers:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )


def _read_all(sock: socket.socket, quiet: float = 1.0) -> bytes:
    """Everything the server sends until it has been quiet for ``quiet`` seconds."""
    sock.settimeout(quiet)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return data


def test_a_chunked_request_handed_back_is_one_request(broker: Broker) -> None:
    """The worker has read (and de-chunked) the body; the primary must see the same one
    request, not the chunk framing parsed again (which let a body smuggle a second request)."""
    host, port = broker.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        status, _ = _http(
            sock,
            b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: AmazonSSM.DescribeSessions\r\n"
            b"Content-Type: application/x-amz-json-1.1\r\nContent-Length: 2\r\n\r\n{}",
        )
        assert status == 400
        inner = b"0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n"  # the decoded body
        sock.sendall(
            b"POST /hatchway/v1/register HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(inner):x}\r\n".encode()
            + inner
            + b"\r\n0\r\n\r\n"
        )
        answer = _read_all(sock)
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert answer.startswith(b"HTTP/1.1 400") and b"SerializationException" in answer


def test_a_first_request_that_arrives_in_pieces_is_served(broker: Broker) -> None:
    host, port = broker.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POS")  # too little to tell an API call from anything else
        time.sleep(0.3)
        status, answer = _http(
            sock,
            b"T / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: AmazonSSM.DescribeSessions\r\n"
            b"Content-Type: application/x-amz-json-1.1\r\nContent-Length: 2\r\n\r\n{}",
        )
    assert status == 400 and b"MissingAuthenticationToken" in answer


def test_the_primary_does_not_spin_on_a_first_request_in_pieces() -> None:
    """Peeking leaves the bytes readable: waiting for the rest must not call the peek again
    and again (it did, about 180,000 times a second, on a full core; then every 10 ms, which
    thousands of such connections turned into a full core again). The bytes are read now, so
    the connection is looked at when more arrive: once for "PO", once for the close."""
    from hatchway.server.front import limits
    from hatchway.server.process import workers
    from hatchway.server.runtime.state import ServerConfig

    async def scenario() -> int:
        listen = socket.create_server(("127.0.0.1", 0))
        guard = limits.ConnectionGuard(ServerConfig())
        listener = workers.Listener(listen, None, None, guard)  # type: ignore[arg-type]
        calls = 0
        sniff = listener._sniff

        def counting(fd: int) -> None:
            nonlocal calls
            calls += 1
            sniff(fd)

        listener._sniff = counting  # type: ignore[method-assign]
        listener.start()
        loop = asyncio.get_running_loop()
        client = socket.create_connection(listen.getsockname())
        client.sendall(b"PO")
        await asyncio.sleep(0.5)
        client.close()
        await asyncio.sleep(0.05)
        listener.close()
        del loop
        return calls

    calls = asyncio.run(scenario())
    assert 1 <= calls <= 3


def test_metrics_sum_every_process(broker: Broker) -> None:
    """/metrics (served by the primary) counts the calls the workers served: every process
    keeps its counters in DATA_DIR/metrics (prometheus_client's multiprocess mode)."""
    from prometheus_client.parser import text_string_to_metric_families

    def calls() -> float:
        with urllib.request.urlopen(f"{broker.url}/metrics", timeout=30) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "hatchway_api_calls_total" and s.labels == {
                    "service": "ssm",
                    "operation": "DescribeInstanceInformation",
                    "status": "200",
                }:
                    return float(s.value)
        return 0.0

    before = calls()
    ssm = broker.client("ssm")
    for _ in range(6):
        ssm.describe_instance_information()
    assert calls() - before == 6
