"""The agent's PTY shell: a real login shell as the session user, resized, exiting cleanly."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal

import pytest

from hatchway.agent.shell import PtyShell, RunAsError, resolve_user


def _session_user() -> str:
    """ssm-user when we may create it (root), else whoever runs the tests."""
    return "ssm-user" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


async def _run(script: bytes, resize: tuple[int, int] | None = None) -> tuple[str, int]:
    out: list[bytes] = []
    done = asyncio.Event()
    codes: list[int] = []
    user = resolve_user(_session_user(), create=True)

    def exited(code: int) -> None:
        codes.append(code)
        done.set()

    sh = PtyShell(user, out.append, exited)
    sh.start()
    if resize:
        sh.resize(*resize)
    sh.write(script)
    await asyncio.wait_for(done.wait(), 10)
    return b"".join(out).decode(errors="replace"), codes[0]


def test_shell_runs_as_the_session_user_with_a_login_environment() -> None:
    text, code = asyncio.run(_run(b"echo A=$((6*7)); id -un; echo H=$HOME; exit 3\n"))
    assert "A=42" in text
    assert _session_user() in text
    assert f"H={pwd.getpwnam(_session_user()).pw_dir}" in text
    assert code == 3


def test_resize_is_seen_by_the_shell() -> None:
    text, _ = asyncio.run(_run(b"echo C=$(tput cols) R=$(tput lines); exit\n", (132, 41)))
    assert "C=132 R=41" in text


def test_root_and_missing_users_are_refused() -> None:
    with pytest.raises(RunAsError, match="root"):
        resolve_user("root")
    with pytest.raises(RunAsError, match="RunAs user no-such-user-x does not exist"):
        resolve_user("no-such-user-x")


def test_close_kills_the_process_group() -> None:
    async def main() -> int:
        done = asyncio.Event()
        user = resolve_user(_session_user(), create=True)
        sh = PtyShell(user, lambda _: None, lambda _: done.set())
        sh.start()
        sh.write(b"sleep 1000 &\nsleep 1000\n")
        await asyncio.sleep(0.5)
        assert sh.proc is not None
        pid = sh.proc.pid
        sh.close()
        await asyncio.wait_for(done.wait(), 5)
        return pid

    pgid = asyncio.run(main())
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_ctrl_c_works_even_if_the_agent_ignores_sigint() -> None:
    # An agent started with `&` from a script ignores SIGINT; its shells must not.
    async def main() -> str:
        out: list[bytes] = []
        done = asyncio.Event()
        sh = PtyShell(resolve_user(_session_user(), create=True), out.append, lambda _: done.set())
        sh.start()
        await asyncio.sleep(0.5)  # the prompt
        sh.write(b"sleep 100\n")
        await asyncio.sleep(0.5)
        sh.write(b"\x03")
        await asyncio.sleep(0.3)
        sh.write(b"echo rc=$?\nexit\n")
        await asyncio.wait_for(done.wait(), 10)
        return b"".join(out).decode(errors="replace")

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        text = asyncio.run(main())
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "rc=130" in text
