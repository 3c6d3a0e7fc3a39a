"""Command sessions: the document's ``properties.<platform>.commands`` instead of a shell.

* ``InteractiveCommands`` (:class:`InteractiveCommandsPlugin`): the command on a PTY, exactly
  like a shell session otherwise (keystrokes, resize, Ctrl-C through the terminal); the
  session ends when the command does. ``shellProfile`` does not apply (AWS runs it for
  ``Standard_Stream`` only).
* ``NonInteractiveCommands`` (:class:`NonInteractiveCommandsPlugin`): the command on pipes,
  stdin ``/dev/null``. With ``separateOutputStream`` stdout goes out as Output (PayloadType 1)
  and stderr as StdErr (11), every line prefixed with ``stdOutSeparatorPrefix`` /
  ``stdErrSeparatorPrefix``, then the exit code as ExitCode (12, ``EXIT_CODE: <n>``);
  otherwise both share one pipe and go out as Output and no ExitCode is sent, as AWS's agent
  does (the code goes to the broker with ``Terminating``, which passes it on to Hatchway's
  plugin in ``channel_closed``). Then the session ends. Client input is only
  scanned for Ctrl-C / Ctrl-\\ / Ctrl-Z, which signal the command's process group; Size is
  ignored.

Both run ``<user's shell> -c <commands>`` (a list of commands is joined with newlines) as the
session's OS user (Run As, or ``ssm-user``) with a clean login environment in the user's home;
``runAsElevated`` runs as root only where the node allows root sessions, and fails the session
otherwise. Closing the session kills the command's process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from hatchway.agent.plugin import PluginError, SessionIO, SessionPlugin
from hatchway.agent.shell import (
    KILL_GRACE,
    READ_BATCH,
    OsUser,
    ShellPlugin,
    as_user,
    end_process_group,
    login_env,
    reset_signals,
    session_user,
)
from hatchway.protocol import PayloadType, build_exit_code
from hatchway.ssm.documents import is_true, parameter_environment

__all__ = [
    "CONTROL_SIGNALS",
    "InteractiveCommandsPlugin",
    "NonInteractiveCommandsPlugin",
    "command_config",
    "command_text",
    "prefix_lines",
]

log = logging.getLogger("hatchway.agent.command")

CONTROL_SIGNALS = {
    0x03: signal.SIGINT,
    0x1C: signal.SIGQUIT,
    0x1A: signal.SIGTSTP,
}
"""Control bytes a NonInteractiveCommands client sends for Ctrl-C, Ctrl-\\ and Ctrl-Z."""

PLATFORM = "macos" if sys.platform == "darwin" else "linux"
_SEPARATOR = re.compile(r"[0-9a-zA-Z\r\n_:-]{0,30}")


def command_config(document: dict[str, Any]) -> dict[str, Any]:
    """``properties.<this platform>`` of a command document, or :class:`PluginError`."""
    props = document.get("properties")
    cfg = props.get(PLATFORM) if isinstance(props, dict) else None
    if not isinstance(cfg, dict):
        raise PluginError(f"The session document defines no commands for {PLATFORM}.")
    return cfg


def command_text(cfg: dict[str, Any]) -> str:
    """The script ``commands`` stands for: a string, or a list joined with newlines.

    Empty commands fail the session (AWS's agent starts a plain ``sh`` then, which would hand
    a shell to someone allowed one command only).
    """
    commands = cfg.get("commands")
    if isinstance(commands, list) and all(isinstance(c, str) for c in commands):
        commands = "\n".join(commands)
    if not isinstance(commands, str):
        raise PluginError("The session document's commands must be a string or a list of strings.")
    if not commands.strip():
        raise PluginError("The session document's commands are empty: there is nothing to run.")
    return commands


def prefix_lines(data: bytes, prefix: bytes, at_line_start: bool) -> tuple[bytes, bool]:
    """``data`` with ``prefix`` at the start of every line; returns the bytes and whether the
    next chunk starts a line. A chunk ending inside a line continues it, unprefixed."""
    if not prefix or not data:
        return data, at_line_start if not data else data.endswith(b"\n")
    lines = data.split(b"\n")
    out = bytearray()
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if last and not line:
            break  # data ended with a newline: the next line is the next chunk's
        if at_line_start or i > 0:
            out += prefix
        out += line
        if not last:
            out += b"\n"
    return bytes(out), data.endswith(b"\n")


def _exit_status(code: int) -> int:
    """Popen's return code as a shell reports it: 128 + n for death by signal n."""
    return 128 - code if code < 0 else code


class InteractiveCommandsPlugin(ShellPlugin):
    """``InteractiveCommands``: the document's command on a PTY as the session's user."""

    session_types = ("InteractiveCommands",)

    def __init__(self, io: SessionIO) -> None:
        super().__init__(io)
        self.command = ""
        self.elevated = False

    async def start(self) -> None:
        cfg = command_config(self.io.document)
        self.command = command_text(cfg)
        self.elevated = is_true(cfg.get("runAsElevated"))
        await super().start()

    def _user(self) -> OsUser:
        return session_user(self.io, elevated=self.elevated)

    def _profile(self) -> str | None:
        return None

    def _argv(self, user: OsUser) -> list[str] | None:
        return [user.shell, "-c", self.command]


@dataclass
class _Pipe:
    """One output pipe of the command and how its bytes go out."""

    fd: int
    payload_type: int
    prefix: bytes
    at_line_start: bool = True
    eof: bool = False
    watched: bool = False


class NonInteractiveCommandsPlugin(SessionPlugin):
    """``NonInteractiveCommands``: the document's command on pipes, then its exit code."""

    session_types = ("NonInteractiveCommands",)

    def __init__(self, io: SessionIO) -> None:
        super().__init__(io)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pipes: list[_Pipe] = []
        self.exit_code: int | None = None
        self._separate = False
        self._paused = False
        self._closed = False
        self._reaper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        cfg = command_config(self.io.document)
        command = command_text(cfg)
        separate = self._separate = is_true(cfg.get("separateOutputStream"))
        prefixes = {"stdOutSeparatorPrefix": "", "stdErrSeparatorPrefix": ""}
        if separate:
            for key in prefixes:
                value = cfg.get(key, "")
                if not isinstance(value, str) or _SEPARATOR.fullmatch(value) is None:
                    # AWS's agent's texts for a bad prefix.
                    name = "stdoutSeparatorPrefix" if "Out" in key else "stderrSeparatorPrefix"
                    raise PluginError(f"invalid {name} {value}")
                prefixes[key] = value
        user = session_user(self.io, elevated=is_true(cfg.get("runAsElevated")))
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe() if separate else (-1, out_w)
        try:
            self.proc = subprocess.Popen(
                [user.shell, "-c", command],
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                env={**login_env(user), **parameter_environment(self.io.parameters)},
                start_new_session=True,  # its own process group: signals and cleanup
                preexec_fn=reset_signals,
                close_fds=True,
                **as_user(user),
            )
        except OSError as exc:
            for fd in {out_r, out_w, err_r, err_w} - {-1}:
                os.close(fd)
            raise PluginError(f"Error occurred starting the command: {exc}") from None
        for fd in {out_w, err_w}:
            os.close(fd)
        self.pipes.append(
            _Pipe(out_r, PayloadType.OUTPUT, prefixes["stdOutSeparatorPrefix"].encode())
        )
        if separate:
            self.pipes.append(
                _Pipe(err_r, PayloadType.STDERR, prefixes["stdErrSeparatorPrefix"].encode())
            )
        for pipe in self.pipes:
            os.set_blocking(pipe.fd, False)
            self._watch(pipe)

    # -- output ---------------------------------------------------------------------------

    def _watch(self, pipe: _Pipe) -> None:
        if not pipe.eof and not pipe.watched:
            asyncio.get_running_loop().add_reader(pipe.fd, self._readable, pipe)
            pipe.watched = True

    def _unwatch(self, pipe: _Pipe) -> None:
        if pipe.watched:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(pipe.fd)
            pipe.watched = False

    def _readable(self, pipe: _Pipe) -> None:
        parts: list[bytes] = []
        size = 0
        while size < READ_BATCH:
            try:
                chunk = os.read(pipe.fd, READ_BATCH - size)
            except BlockingIOError:
                break
            except OSError as exc:
                log.warning("session %s: reading command output: %s", self.io.session_id, exc)
                chunk = b""
            if not chunk:
                pipe.eof = True
                break
            parts.append(chunk)
            size += len(chunk)
        if parts:
            data, pipe.at_line_start = prefix_lines(
                b"".join(parts), pipe.prefix, pipe.at_line_start
            )
            self.io.output(data, pipe.payload_type)
            self.io.record("o", data)
            if not self.io.writable:
                self._paused = True
                for p in self.pipes:
                    self._unwatch(p)
        if pipe.eof:
            self._unwatch(pipe)
            os.close(pipe.fd)
            if all(p.eof for p in self.pipes) and self._reaper is None:
                self._reaper = asyncio.get_running_loop().create_task(self._reap())

    def on_writable(self) -> None:
        if self._paused and not self._closed:
            self._paused = False
            for pipe in self.pipes:
                self._watch(pipe)

    async def _reap(self) -> None:
        """Both pipes ended: wait for the command (without reaping it, so that its pid keeps
        naming the process group until :meth:`close`), send the exit code, end the session."""
        proc = self.proc
        assert proc is not None
        try:
            info = await asyncio.get_running_loop().run_in_executor(
                None, os.waitid, os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT
            )
        except ChildProcessError:
            info = None
        if self._closed:
            return
        if info is None:
            code = 1
        elif info.si_code == os.CLD_EXITED:
            code = info.si_status
        else:
            code = 128 + info.si_status
        self.exit_code = code
        if self._separate:
            # As AWS's agent: ExitCode (12) only with separateOutputStream; otherwise the code
            # reaches the broker in the session state and Hatchway's plugin in channel_closed.
            self.io.output(build_exit_code(code), PayloadType.EXIT_CODE)
        self.io.exited(code)

    # -- input ----------------------------------------------------------------------------

    def on_input(self, payload_type: int, payload: bytes) -> None:
        if payload_type != PayloadType.OUTPUT:
            return  # Size and anything else: there is no terminal
        self.io.record("i", payload)
        proc = self.proc
        if proc is None:
            return
        for byte in payload:
            sig = CONTROL_SIGNALS.get(byte)
            if sig is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
                return

    # -- the end --------------------------------------------------------------------------

    def close(self) -> None:
        """Kill the command's process group (also what it left running in the background),
        then reap the command."""
        self._closed = True
        for pipe in self.pipes:
            self._unwatch(pipe)
            if not pipe.eof:
                pipe.eof = True
                with contextlib.suppress(OSError):
                    os.close(pipe.fd)
        proc = self.proc
        if proc is None:
            return
        # The command is not reaped yet (see _reap), so its pid still names its group.
        end_process_group(proc, signal.SIGTERM, KILL_GRACE)
