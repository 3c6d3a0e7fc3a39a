"""Installing Hatchway from its wheel (issue 14, item 1).

The wheel is built from the tracked sources copied into a temporary directory (so that nothing
of the working tree but what git tracks can reach it) and installed, with the runtime
dependencies only, into a fresh virtual environment, from PyPI or pip's cache and the pins of
constraints.txt. From there: the commands, package data, the version reported everywhere, and
the broker without PostgreSQL's driver.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hatchway import __version__

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(*args: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=600,
        **kw,  # type: ignore[call-overload]
    )


def _tracked(prefix: str = "") -> list[str]:
    out = _run("git", "-C", ROOT, "ls-files", "--cached", "--others", "--exclude-standard")
    assert out.returncode == 0, out.stderr
    return [p for p in out.stdout.splitlines() if p.startswith(prefix) and (ROOT / p).exists()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for rel in _tracked():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    dist = tmp_path_factory.mktemp("dist")
    built = _run(BIN / "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", dist, src)
    assert built.returncode == 0, built.stdout + built.stderr
    (whl,) = dist.glob("hatchway-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel (and its runtime dependencies only); its bin directory."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=False)  # this pip installs into it: no ensurepip, faster
    target = env_dir / "bin" / "python"
    out = _run(
        BIN / "pip",
        *("--python", target, "install", "--quiet", "--no-compile"),
        *("-c", ROOT / "constraints.txt", wheel),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    yield env_dir / "bin"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HATCHWAY_", "PYTHON"))}
    env["HATCHWAY_CONFIG"] = os.devnull
    env.update(extra)
    return env


def test_wheel_holds_every_package_file(wheel: Path) -> None:
    """Package data: every file under hatchway/ that git tracks (not only .py) is in the
    wheel, and its version is the package's one source of truth."""
    assert wheel.name.startswith(f"hatchway-{__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {p for p in _tracked("hatchway/") if "__pycache__" not in p}
    assert "hatchway/py.typed" in wanted
    assert wanted <= names, sorted(wanted - names)
    meta = zipfile.ZipFile(wheel).read(f"hatchway-{__version__}.dist-info/METADATA").decode()
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    runtime = [r for r in requires if "extra ==" not in r]
    assert runtime and all(re.search(r"[<>]=?|~=", r) for r in runtime), runtime  # ranges
    assert not any("==" in r for r in runtime), runtime  # no exact pins
    assert not any("psycopg" in r for r in runtime), runtime  # PostgreSQL is an extra
    assert any(re.search(r"psycopg.*extra == ['\"]postgresql", r) for r in requires), requires


def test_wheel_carries_the_aws_documents(wheel: Path, installed: Path, tmp_path: Path) -> None:
    """AWS-owned documents are package data: the wheel holds their files, and the installed
    package (not this source tree) loads every one and validates it."""
    names = set(zipfile.ZipFile(wheel).namelist())
    folder = ROOT / "hatchway" / "ssm" / "data" / "documents"
    wanted = {f"hatchway/ssm/data/documents/{p.name}" for p in folder.glob("*.json")}
    assert "hatchway/ssm/data/documents/AWS-StartSSHSession.json" in wanted
    assert wanted <= names, sorted(wanted - names)
    script = (
        "import json, hatchway.ssm.documents as sd\n"
        "docs = sd.aws_documents()\n"
        "for d in docs.values(): sd.validate_document(d.document, d.document_type)\n"
        "sd.validate_document(sd.default_preferences(), 'Session')\n"
        "print(json.dumps({'file': sd.__file__, 'names': sorted(docs)}))\n"
    )
    out = _run(installed / "python", "-c", script, cwd=tmp_path, env=_clean_env())
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["file"].startswith(str(installed.parent)), found["file"]
    assert len(found["names"]) == len(wanted) - 2  # index.json, SSM-SessionManagerRunShell.json
    assert "AWS-StartPortForwardingSession" in found["names"]


def test_installed_commands(installed: Path) -> None:
    env = _clean_env()
    version = _run(installed / "hatchway", "--version", env=env)
    assert version.returncode == 0 and __version__ in version.stdout, version
    plugin = _run(installed / "session-manager-plugin", "--version", env=env)
    assert plugin.returncode == 0 and re.fullmatch(r"\d+\.\d+\.\d+\.\d+\n", plugin.stdout)
    policy = installed.parent / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "ssm:StartSession", "Resource": "*"}],
            }
        )
    )
    lint = _run(installed / "hatchway", "policy", "lint", policy, env=env)
    assert lint.returncode in (0, 1) and lint.stdout.strip(), lint  # ran: findings or clean
    assert "Traceback" not in lint.stderr
    # PostgreSQL's driver is an extra: not installed, and not needed to import the broker
    probe = "import importlib.util, hatchway.server.process.main, hatchway.cli.main; "
    probe += "print(importlib.util.find_spec('psycopg') is None)"
    imported = _run(installed / "python", "-c", probe, env=env)
    assert imported.returncode == 0 and imported.stdout.strip() == "True", imported


def test_postgresql_url_without_the_extra(installed: Path, tmp_path: Path) -> None:
    out = _run(
        installed / "hatchway",
        "server",
        "--data-dir",
        tmp_path / "data",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        "postgresql://hatchway:pw@127.0.0.1:1/hatchway",
        env=_clean_env(),
    )
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'hatchway[postgresql]'" in lines[0], lines
    assert "pw" not in out.stderr


def test_installed_broker_reports_its_version(installed: Path, tmp_path: Path) -> None:
    """The broker from the wheel runs on SQLite without psycopg; /health has the version."""
    log = tmp_path / "broker.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(installed / "hatchway"), "server", "--listen", "127.0.0.1:0"],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_clean_env(HATCHWAY_SERVER_DATA_DIR=str(tmp_path / "data")),
        )
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and proc.poll() is None and time.monotonic() < deadline:
            m = re.search(r"listening on (http://[\d.]+:\d+)", log.read_text())
            url = m.group(1) if m else None
            time.sleep(0.05)
        assert url, log.read_text()
        with urllib.request.urlopen(url + "/health", timeout=10) as resp:
            health = json.load(resp)
            assert (health["status"], health["version"]) == ("ok", __version__)
        assert (tmp_path / "data" / "hatchway.db").exists()  # HATCHWAY_SERVER_DATA_DIR
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_the_wheel_runs_as_the_unit_says(installed: Path, tmp_path: Path) -> None:
    """docs/deploy.md's path: the wheel in a fresh venv, started the way
    packaging/systemd/hatchway-server.service starts it (its ExecStart and Environment=
    lines, the settings file it names, a notify socket standing in for systemd), tells the
    supervisor it is ready, serves, and says it stops on SIGTERM."""
    import socket

    import boto3

    unit = (ROOT / "packaging" / "systemd" / "hatchway-server.service").read_text()
    state_dir = tmp_path / "var-lib-hatchway"  # StateDirectory=hatchway
    state_dir.mkdir(mode=0o700)
    config = tmp_path / "hatchway.toml"
    config.write_text('[server]\nlisten = "127.0.0.1:0"\nregion = "eu-west-1"\n')

    def installed_path(text: str) -> str:
        return (
            text.replace("/opt/hatchway/bin/hatchway", str(installed / "hatchway"))
            .replace("/etc/hatchway/hatchway.toml", str(config))
            .replace("/var/lib/hatchway", str(state_dir))
        )

    lines = unit.splitlines()
    (exec_start,) = [line.split("=", 1)[1] for line in lines if line.startswith("ExecStart=")]
    env = _clean_env()
    env.pop("HATCHWAY_CONFIG")  # the unit names its file with --config
    for line in lines:
        if line.startswith("Environment="):
            key, _, value = line.split("=", 1)[1].partition("=")
            env[key] = installed_path(value)
    notify_path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(60)
    env["NOTIFY_SOCKET"] = notify_path
    log = tmp_path / "journal.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            installed_path(exec_start).split(),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        try:
            ready = notify.recv(4096).decode()
        except TimeoutError:
            raise AssertionError(log.read_text()) from None
        m = re.fullmatch(r"READY=1\nSTATUS=listening on (http://127\.0\.0\.1:\d+)", ready)
        assert m, ready
        url = m.group(1)
        with urllib.request.urlopen(url + "/readyz", timeout=10) as resp:
            assert json.load(resp) == {"status": "ready"}
        creds = (state_dir / "admin-credentials").read_text()  # the first administrator
        key_id = re.search(r"aws_access_key_id\s*=\s*(\S+)", creds)
        secret = re.search(r"aws_secret_access_key\s*=\s*(\S+)", creds)
        assert key_id and secret, creds
        sts = boto3.client(
            "sts",
            endpoint_url=url,
            region_name="eu-west-1",
            aws_access_key_id=key_id.group(1),
            aws_secret_access_key=secret.group(1),
        )
        assert sts.get_caller_identity()["Arn"].endswith(":user/admin")
        proc.send_signal(signal.SIGTERM)
        assert notify.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
        assert proc.wait(30) == 0
    finally:
        notify.close()
        if proc.poll() is None:
            proc.kill()
