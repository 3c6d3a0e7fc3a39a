"""Backup, restore and master.key rotation (docs/backup.md): a backup taken while the broker
runs, restored into a fresh data dir, gives a broker that serves the same users, keys,
documents, KMS keys and recordings; a key rotation re-seals every secret while the broker
keeps serving."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from click.testing import CliRunner
from harness import REGION, Broker, start_agent, start_broker, stop_broker, user_with_policy
from harness.wsclient import Client

from hatchway.cli.main import cli
from hatchway.server.awswire.models import MODELS_DIR
from hatchway.server.base.crypto import SecretBox
from hatchway.server.store import Store
from hatchway.server.store import schema as t

BIN = Path(sys.executable).parent
TARGET = "i-0ba5eba11c0ffee00"
DOC = json.dumps(
    {
        "schemaVersion": "1.0",
        "description": "kept across a restore",
        "sessionType": "Standard_Stream",
        "inputs": {"idleSessionTimeout": "7"},
    }
)
EVERYTHING = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


def hatchway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "hatchway"), *args], capture_output=True, text=True, timeout=120
    )


def recording(broker: Broker, key: str, secret: str, sid: str) -> list[str]:
    session = botocore.session.get_session()
    session.get_component("data_loader").search_paths.append(str(MODELS_DIR))
    api = session.create_client(
        "hatchway",
        endpoint_url=broker.url,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )
    return list(api.get_session_recording(SessionId=sid)["Lines"])


def record_a_session(broker: Broker) -> str:
    s = broker.client("ssm").start_session(Target=TARGET)

    async def go() -> None:
        c = Client(s["StreamUrl"], s["TokenValue"])
        await c.open()
        await c.send(b"echo backup-$((40+2))\r")
        await c.read_until(b"backup-42")
        await c.send(b"exit\r")
        await c.read_until(None)
        await c.close()

    asyncio.run(go())
    return str(s["SessionId"])


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Broker]:
    b = start_broker(tmp_path / "source")
    yield b
    stop_broker(b)


def test_a_restored_broker_serves_the_same_users_documents_keys_and_recordings(
    source: Broker, tmp_path: Path
) -> None:
    key, secret = user_with_policy(source, "kept", EVERYTHING)
    source.client("ssm").create_document(Name="Kept-Doc", Content=DOC, DocumentType="Session")
    kms = source.client("kms")
    kms_key = kms.create_key(Description="kept")["KeyMetadata"]["KeyId"]
    sealed = kms.encrypt(KeyId=kms_key, Plaintext=b"kept secret")["CiphertextBlob"]
    agent = start_agent(source, tmp_path / "agent", TARGET)
    try:
        sid = record_a_session(source)
        deadline = time.monotonic() + 20
        while True:
            lines = recording(source, key, secret, sid)
            if any('"m"' in line and "exit" in line for line in lines):
                break
            assert time.monotonic() < deadline, lines
            time.sleep(0.1)
    finally:
        agent.stop()

    # Taken while the broker runs and keeps writing (every call adds audit rows).
    out = tmp_path / "backups" / "hatchway.tar.gz"
    taken = hatchway("backup", "--data-dir", str(source.data_dir), "--output", str(out))
    assert taken.returncode == 0, taken.stderr
    assert out.stat().st_mode & 0o777 == 0o600  # it holds master.key
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == ["hatchway.db", "manifest.json", "master.key"]
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest["store"] == "sqlite" and manifest["schemaVersion"] >= 6
    stop_broker(source)

    fresh = tmp_path / "restored"
    restored = hatchway("restore", str(out), "--data-dir", str(fresh))
    assert restored.returncode == 0, restored.stderr
    assert (fresh / "master.key").read_bytes() == (source.data_dir / "master.key").read_bytes()
    b = start_broker(fresh)
    try:
        who = b.client("sts", key, secret).get_caller_identity()
        assert who["Arn"] == "arn:aws:iam::123456789012:user/kept"  # its secret unsealed
        doc = b.client("ssm", key, secret).get_document(Name="Kept-Doc")
        assert json.loads(doc["Content"]) == json.loads(DOC)
        plain = b.client("kms", key, secret).decrypt(CiphertextBlob=sealed)["Plaintext"]
        assert plain == b"kept secret"
        assert recording(b, key, secret, sid) == lines
    finally:
        stop_broker(b)


def test_restore_refuses_what_it_should(tmp_path: Path) -> None:
    data = tmp_path / "data"
    b = start_broker(data)
    stop_broker(b)
    out = tmp_path / "b.tar.gz"
    runner = CliRunner()
    done = runner.invoke(cli, ["backup", "--data-dir", str(data), "-o", str(out)])
    assert done.exit_code == 0, done.output

    busy = runner.invoke(cli, ["restore", str(out), "--data-dir", str(data)])
    assert busy.exit_code == 1
    assert "already has hatchway.db, master.key" in busy.output
    assert (
        runner.invoke(cli, ["restore", str(out), "--data-dir", str(data), "--force"]).exit_code == 0
    )

    def rewrite(name: str, change: Any) -> Path:
        with tarfile.open(out) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        files = change(files)
        bad = tmp_path / name
        with tarfile.open(bad, "w:gz") as tar:
            for member, blob in files.items():
                info = tarfile.TarInfo(member)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        return bad

    damaged = rewrite("damaged.tar.gz", lambda f: {**f, "master.key": b"x" * 32})
    result = runner.invoke(cli, ["restore", str(damaged), "--data-dir", str(tmp_path / "d1")])
    assert result.exit_code == 1 and "master.key is damaged (checksum mismatch)" in result.output
    assert not (tmp_path / "d1" / "master.key").exists()

    def newer(files: dict[str, bytes]) -> dict[str, bytes]:
        manifest = json.loads(files["manifest.json"])
        manifest["schemaVersion"] = 999
        return {**files, "manifest.json": json.dumps(manifest).encode()}

    future = rewrite("future.tar.gz", newer)
    result = runner.invoke(cli, ["restore", str(future), "--data-dir", str(tmp_path / "d2")])
    assert result.exit_code == 1 and "schema version 999, newer than this Hatchway" in result.output
    sneaky = rewrite("sneaky.tar.gz", lambda f: {**f, "../escape": b"x"})
    result = runner.invoke(cli, ["restore", str(sneaky), "--data-dir", str(tmp_path / "d3")])
    assert result.exit_code == 1 and "unexpected entry '../escape'" in result.output
    assert not (tmp_path / "escape").exists()


def sealed_values(data_dir: Path) -> list[tuple[str, str]]:
    store = Store(f"sqlite:///{data_dir / 'hatchway.db'}")
    try:
        out = [(r["secret"], r["access_key_id"]) for r in store.select(t.access_keys)]
        out += [
            (r["data"]["session_token"], r["access_key_id"])
            for r in store.select(t.access_keys)
            if r["data"].get("session_token")
        ]
        out += [(r["material"], r["key_id"]) for r in store.select(t.kms_keys)]
    finally:
        store.close()
    return out


def test_key_rotation_reseals_every_secret_while_the_broker_serves(
    source: Broker, tmp_path: Path
) -> None:
    key, secret = user_with_policy(source, "steady", EVERYTHING)
    kms = source.client("kms", key, secret)
    kms_key = kms.create_key()["KeyMetadata"]["KeyId"]
    sealed = kms.encrypt(KeyId=kms_key, Plaintext=b"before rotation")["CiphertextBlob"]
    temp = source.client("sts", key, secret).get_session_token()["Credentials"]
    old_key = (source.data_dir / "master.key").read_bytes()

    failures: list[str] = []
    calls = [0]
    stop = threading.Event()

    def keep_calling() -> None:  # the broker must answer throughout
        sts = source.client("sts", key, secret)
        iam = source.client("iam")
        n = 0
        while not stop.is_set():
            try:
                sts.get_caller_identity()
                if n % 5 == 0:  # new sealed secrets while the rotation runs
                    iam.create_access_key(UserName=f"during-{n // 5 % 2}")
                    keys = iam.list_access_keys(UserName=f"during-{n // 5 % 2}")
                    if len(keys["AccessKeyMetadata"]) > 1:
                        iam.delete_access_key(
                            UserName=f"during-{n // 5 % 2}",
                            AccessKeyId=keys["AccessKeyMetadata"][0]["AccessKeyId"],
                        )
                calls[0] += 1
            except Exception as exc:
                failures.append(repr(exc))
            n += 1

    for name in ("during-0", "during-1"):
        source.client("iam").create_user(UserName=name)
    worker = threading.Thread(target=keep_calling)
    worker.start()
    try:
        rotated = hatchway("key", "rotate", "--data-dir", str(source.data_dir))
    finally:
        stop.set()
        worker.join()
    assert rotated.returncode == 0, rotated.stderr
    assert "re-sealed" in rotated.stderr and "the old key is retired" in rotated.stderr
    assert failures == [] and calls[0] > 0
    new_key = (source.data_dir / "master.key").read_bytes()
    assert new_key != old_key and not (source.data_dir / "master.key.previous").exists()

    values = sealed_values(source.data_dir)
    assert len(values) >= 4
    only_new, only_old = SecretBox(new_key), SecretBox(old_key)
    assert all(only_new.is_current(v, ctx) for v, ctx in values)
    assert not any(only_old.is_current(v, ctx) for v, ctx in values)

    # The running broker, and one started afresh on the new key, serve everything.
    temp_sts = source.client(
        "sts", temp["AccessKeyId"], temp["SecretAccessKey"], temp["SessionToken"]
    )
    assert temp_sts.get_caller_identity()["Arn"].endswith(":user/steady")
    stop_broker(source)
    again = start_broker(source.data_dir)
    try:
        assert again.client("sts", key, secret).get_caller_identity()["Arn"].endswith("/steady")
        plain = again.client("kms", key, secret).decrypt(CiphertextBlob=sealed)["Plaintext"]
        assert plain == b"before rotation"
    finally:
        stop_broker(again)


def test_a_second_rotation_waits_for_the_first_to_finish(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    SecretBox.from_dir(data)
    runner = CliRunner()
    assert runner.invoke(cli, ["key", "new", "--data-dir", str(data)]).exit_code == 0
    assert (data / "master.key.previous").exists()
    again = runner.invoke(cli, ["key", "new", "--data-dir", str(data)])
    assert again.exit_code == 1 and "a rotation is not finished" in again.output
    box = SecretBox.from_dir(data)
    old = SecretBox((data / "master.key.previous").read_bytes())
    assert box.open(old.seal("sealed before", "ctx"), "ctx") == "sealed before"
    assert base64.b64decode(box.seal("x"))  # new values: the new key
    assert not old.is_current(box.seal("x"))


def test_a_postgresql_backup_holds_the_keys_and_says_where_the_database_goes(
    tmp_path: Path,
) -> None:
    """With --database-url the archive holds master.key only (the database is pg_dump's);
    restoring it puts the key back and says so."""
    data = tmp_path / "data"
    data.mkdir()
    SecretBox.from_dir(data)
    out = tmp_path / "keys.tar.gz"
    runner = CliRunner()
    url = "postgresql://hatchway:secret@db.internal/hatchway"
    done = runner.invoke(
        cli, ["backup", "--data-dir", str(data), "--database-url", url, "-o", str(out)]
    )
    assert done.exit_code == 0, done.output
    assert "pg_dump --format=custom" in done.output and "secret" not in done.output
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == ["manifest.json", "master.key"]
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest["store"] == "postgresql" and "pg_dump" in manifest["database"]
    target = tmp_path / "elsewhere"
    restored = runner.invoke(cli, ["restore", str(out), "--data-dir", str(target)])
    assert restored.exit_code == 0, restored.output
    assert "pg_restore" in restored.output
    assert (target / "master.key").read_bytes() == (data / "master.key").read_bytes()
    assert (target / "master.key").stat().st_mode & 0o777 == 0o600
    assert not (target / "hatchway.db").exists()
