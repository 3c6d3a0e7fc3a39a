"""Run Command on the node: the ``send_command`` and ``cancel_command`` control messages.

Each plugin (step) of a command runs as a shell script (``sh <script>``, as AWS's agent runs
``aws:runShellScript``) in its own process group, one step after the other, as the configured
user (default: the agent's own user, root for an agent run as root, as AWS's agent does). The
execution timeout and a cancel kill the process group (response code 137, as AWS's agent).
stdout and stderr are kept up to AWS's limits only (the rest is read and dropped). The node
reports ``command_started`` and then ``command_result`` with every step's outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from hatchway.agent.shell import RunAsError, as_user, login_env, reset_signals, resolve_user
from hatchway.ssm import runcommand as rc

log = logging.getLogger("hatchway.agent.runcommand")

Notify = Callable[[dict[str, Any]], Awaitable[None]]

READ_CHUNK = 65536


def _now() -> str:
    return datetime.now(UTC).isoformat()


class _Capped:
    """The first ``limit`` characters' worth of a stream (a little more, so that the
    truncation marker is put as AWS's agent puts it); the rest is read and dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        keep = self.limit * 4 + 4  # UTF-8: at most 4 bytes a character
        while chunk := await stream.read(READ_CHUNK):
            room = keep - len(self.data)
            if room > 0:
                self.data += chunk[:room]

    def text(self) -> str:
        decoded = self.data.decode("utf-8", "replace")
        return rc.string_prefix(decoded, self.limit)


class CommandRunner:
    """The node's running commands (one task per command)."""

    def __init__(self, notify: Notify, user: str | None = None) -> None:
        self.notify = notify
        self.user = user or None
        """OS user commands run as (None: the agent's own user)."""
        self.running: dict[str, asyncio.Task[None]] = {}
        self.cancelled: set[str] = set()
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    async def handle(self, message: dict[str, Any]) -> bool:
        """Take a Run Command message; False if it is not one."""
        kind = message.get("type")
        if kind == "send_command":
            cid = str(message.get("commandId", ""))
            if not cid or cid in self.running:
                return True
            task = asyncio.create_task(self._run(cid, message))
            self.running[cid] = task
            task.add_done_callback(lambda _t: self.running.pop(cid, None))
            return True
        if kind == "cancel_command":
            cid = str(message.get("commandId", ""))
            if cid in self.running:
                self.cancelled.add(cid)
                proc = self._procs.get(cid)
                if proc is not None:
                    _kill_group(proc)
            return True
        return False

    async def _run(self, cid: str, message: dict[str, Any]) -> None:
        results: list[dict[str, Any]] = []
        try:
            await self.notify({"type": "command_started", "commandId": cid})
            env_extra = message.get("environment")
            env_extra = env_extra if isinstance(env_extra, dict) else {}
            for plugin in message.get("plugins") or []:
                if cid in self.cancelled:
                    break
                results.append(await self._plugin(cid, plugin, env_extra))
        except Exception as exc:  # a node must answer whatever happened
            log.exception("command %s failed", cid)
            results.append(
                {
                    "status": "Failed",
                    "responseCode": 1,
                    "stdout": "",
                    "stderr": f"failed to run commands: {exc}",
                    "start": _now(),
                    "end": _now(),
                }
            )
        finally:
            self.cancelled.discard(cid)
            self._procs.pop(cid, None)
        with contextlib.suppress(Exception):
            await self.notify({"type": "command_result", "commandId": cid, "plugins": results})

    async def _plugin(
        self, cid: str, plugin: dict[str, Any], env_extra: dict[str, Any]
    ) -> dict[str, Any]:
        start = _now()
        commands = plugin.get("commands") or []
        timeout = float(plugin.get("timeoutSeconds") or rc.DEFAULT_EXECUTION_TIMEOUT)
        try:
            user = resolve_user(self.user, allow_root=True) if self.user else None
        except RunAsError as exc:
            return {
                "status": "Failed",
                "responseCode": 1,
                "stdout": "",
                "stderr": str(exc),
                "start": start,
                "end": _now(),
            }
        workdir = tempfile.mkdtemp(prefix="hatchway-command-")
        try:
            script = os.path.join(workdir, "_script.sh")
            with open(script, "w") as f:
                f.write("\n".join(str(c) for c in commands) + "\n")
            kwargs: dict[str, Any] = {}
            env = dict(os.environ)
            if user is not None:
                kwargs = as_user(user)
                env = login_env(user)
                os.chown(workdir, user.uid, user.gid)
                os.chown(script, user.uid, user.gid)
            env.update({str(k): str(v) for k, v in env_extra.items()})
            wd = str(plugin.get("workingDirectory") or "")
            kwargs["cwd"] = wd if os.path.isabs(wd) and os.path.isdir(wd) else workdir
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh",
                script,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
                preexec_fn=reset_signals,
                **kwargs,
            )
            self._procs[cid] = proc
            if cid in self.cancelled:  # cancelled while it was starting
                _kill_group(proc)
            out, err = _Capped(rc.STDOUT_LIMIT), _Capped(rc.STDERR_LIMIT)
            readers = asyncio.gather(out.drain(proc.stdout), err.drain(proc.stderr))
            timed_out = False
            try:
                async with asyncio.timeout(timeout):
                    await proc.wait()
            except TimeoutError:
                timed_out = True
                _kill_group(proc)
                await proc.wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):  # a background child may hold the pipes
                    await readers
            if not readers.done():
                readers.cancel()
            cancelled = cid in self.cancelled
            code = rc.STOPPED_EXIT_CODE if timed_out or cancelled else proc.returncode
            status = rc.plugin_outcome(
                code if code is not None else 1, timed_out=timed_out, cancelled=cancelled
            )[0]
            return {
                "status": status,
                "responseCode": code,
                "stdout": out.text(),
                "stderr": err.text(),
                "start": start,
                "end": _now(),
            }
        finally:
            self._procs.pop(cid, None)
            shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
