"""Operator errors at start (issue 11, item 7): the real ``hatchway server`` prints one line
saying what is wrong and exits with status 2, never a traceback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run_server(
    data_dir: Path, *extra: str, listen: str = "127.0.0.1:0"
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HATCHWAY_ADMIN_ACCESS_KEY_ID": "AKIAHATCHWAYADMIN001",
        "HATCHWAY_ADMIN_SECRET_ACCESS_KEY": "hatchway-admin-secret-for-tests-0000000000",
    }
    return subprocess.run(
        [str(BIN / "hatchway"), "server", "--listen", listen, "--data-dir", str(data_dir), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The process exited with status 2 and said why in one line of standard error."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: "), lines
    return lines[0]


def test_an_address_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_server(tmp_path / "data", listen=f"127.0.0.1:{port}")
    line = one_line_error(proc)
    assert line == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_an_address_in_use_with_workers(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_server(tmp_path / "data", "--workers", "1", listen=f"127.0.0.1:{port}")
    line = one_line_error(proc)
    assert line == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_a_bogus_log_level(tmp_path: Path) -> None:
    line = one_line_error(run_server(tmp_path / "data", "--log-level", "bogus"))
    assert line == (
        "Error: --log-level 'bogus' is not a log level "
        "(one of DEBUG, INFO, WARNING, ERROR, CRITICAL)"
    )
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_a_data_directory_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    line = one_line_error(run_server(tmp_path / "data"))
    assert line.startswith(f"Error: cannot use the data directory {tmp_path / 'data'}: "), line


@contextlib.contextmanager
def read_only_copy(source: Path, target: Path) -> Iterator[Path]:
    """``source`` seen read-only at ``target`` (a read-only bind mount; root only)."""
    target.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False)


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="a read-only mount needs root (permissions do not stop root)"
)


@needs_root
def test_an_unwritable_data_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with read_only_copy(tmp_path / "empty", tmp_path / "ro") as ro:
        line = one_line_error(run_server(ro / "data"))
    assert line == (
        f"Error: cannot use the data directory {tmp_path / 'ro' / 'data'}: Read-only file system"
    )
