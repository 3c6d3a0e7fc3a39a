"""A real broker: ``hatchway server`` as a subprocess on an ephemeral port.

Clients are the real ones: boto3 (:meth:`Broker.client`) and the ``aws`` CLI
(:meth:`Broker.aws`), pointed at the broker with ``--endpoint-url`` and the admin credentials
the test chose. ``start_broker(..., clock=MovableClock(dir))`` runs the broker with session
timers on a clock the test moves (:mod:`harness.clock`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from harness.clock import MovableClock

BIN = Path(sys.executable).parent
ADMIN_KEY = "AKIAHATCHWAYADMIN001"
ADMIN_SECRET = "hatchway-admin-secret-for-tests-0000000000"
ACCOUNT = "123456789012"
REGION = "us-east-1"


@dataclass
class Broker:
    url: str
    data_dir: Path
    proc: subprocess.Popen[str]
    log: Path
    ca: str | None = None  # the CA bundle clients trust (a broker on TLS)

    def client(
        self,
        service: str,
        key: str = ADMIN_KEY,
        secret: str = ADMIN_SECRET,
        token: str | None = None,
    ) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            aws_session_token=token,
            config=Config(retries={"max_attempts": 1}),
            verify=self.ca,
        )

    def aws(
        self,
        *args: str,
        key: str = ADMIN_KEY,
        secret: str = ADMIN_SECRET,
        token: str | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real ``aws`` CLI against the broker; JSON output."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ACCESS_KEY_ID=key,
            AWS_SECRET_ACCESS_KEY=secret,
            AWS_DEFAULT_REGION=REGION,
            AWS_CONFIG_FILE="/dev/null",
            AWS_SHARED_CREDENTIALS_FILE="/dev/null",
            AWS_MAX_ATTEMPTS="1",
            PATH=f"{BIN}:{env.get('PATH', '')}",
        )
        if token:
            env["AWS_SESSION_TOKEN"] = token
        trust = ["--ca-bundle", self.ca] if self.ca else []
        return subprocess.run(
            [str(BIN / "aws"), "--endpoint-url", self.url, *trust, "--output", "json", *args],
            env=env,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=60,
            check=check,
        )

    def aws_json(self, *args: str, **kw: Any) -> Any:
        proc = self.aws(*args, **kw)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout) if proc.stdout.strip() else {}


def start_broker(
    data_dir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    port: int = 0,
    ca: str | None = None,
    clock: MovableClock | None = None,
) -> Broker:
    """Start ``hatchway server`` on ``data_dir`` (any ``extra`` options) and wait until it
    listens. With ``clock``, its session timers read that clock (:mod:`harness.clock`)."""
    log = data_dir.parent / f"{data_dir.name}.log"
    environ = {
        **os.environ,
        "HATCHWAY_ADMIN_ACCESS_KEY_ID": ADMIN_KEY,
        "HATCHWAY_ADMIN_SECRET_ACCESS_KEY": ADMIN_SECRET,
        **(env or {}),
    }
    out = open(log, "w")  # noqa: SIM115 - lives as long as the broker
    command = [str(BIN / "hatchway")] if clock is None else clock.launcher()
    proc = subprocess.Popen(
        [
            *command,
            "server",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(data_dir),
            "--region",
            REGION,
            "--account-id",
            ACCOUNT,
            *extra,
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        env=environ,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text()
        m = re.search(r"listening on (https?://[\d.]+:\d+)", text)
        if m:
            return Broker(m.group(1), data_dir, proc, log, ca)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"broker did not start:\n{log.read_text()}")


def stop_broker(b: Broker) -> None:
    b.proc.send_signal(signal.SIGTERM)
    try:
        b.proc.wait(10)
    except subprocess.TimeoutExpired:
        b.proc.kill()


def store_args(broker: Broker) -> list[str]:
    """The options that name a broker's store (for ``hatchway audit``, ``activation`` …)."""
    args = list(broker.proc.args)  # type: ignore[arg-type]
    if "--database-url" in args:
        return ["--database-url", str(args[args.index("--database-url") + 1])]
    return ["--data-dir", str(broker.data_dir)]


def user_with_policy(
    broker: Broker, name: str, policy: dict[str, Any], tags: dict[str, str] | None = None
) -> tuple[str, str]:
    """An IAM user with one inline policy and an access key: (key id, secret)."""
    iam = broker.client("iam")
    iam.create_user(UserName=name, Tags=[{"Key": k, "Value": v} for k, v in (tags or {}).items()])
    iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]
