"""A login shell in a pseudo-terminal, as the session's OS user.

The shell gets a PTY (window size from the client's Size messages), the environment a login
shell expects (HOME, SHELL, USER, LOGNAME, PATH, TERM) and the user's home as working
directory; it runs as that user's uid, gid and supplementary groups. It never runs as root
unless root was configured explicitly. On close, the whole process group is hung up and,
if it lingers, killed, so no child outlives the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pwd
import re
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hatchway.agent.plugin import PluginError, SessionIO, SessionPlugin
from hatchway.protocol import PayloadError, PayloadType, parse_size
from hatchway.ssm.documents import is_true, parameter_environment

log = logging.getLogger("hatchway.agent.shell")

DEFAULT_USER = "ssm-user"
READ_BATCH = 64 * 1024
INPUT_HIGH_WATER = 256 * 1024
"""Bytes of client input a session buffers for a process that does not read it; above this
the session stops taking (and acknowledging) client input, so the client stops at its window
(``SessionPlugin.accepting``)."""
INPUT_LOW_WATER = 64 * 1024
"""…and takes input again once the buffer has drained below this."""
_RESET_SIGNALS = (
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGTSTP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGPIPE,
    signal.SIGCHLD,
)


_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")  # what useradd accepts everywhere
NO_RUN_AS_USER = (
    "please set the RunAs default user: Run As is enabled, but neither an SSMSessionRunAs "
    "tag on the IAM user or role nor runAsDefaultUser in the session preferences names an "
    "OS user"
)
ROOT_NOT_SUPPORTED = (
    "Session Manager does not support using an operating system's root user account "
    "(RunAs user {name})"
)
ELEVATED_NOT_ALLOWED = (
    "The document asks for runAsElevated, but this node does not allow sessions to run as "
    "root (hatchway agent --allow-root-sessions)."
)


class RunAsError(Exception):
    """The session's OS user cannot be used (AWS's agent: 'RunAs user … does not exist')."""


@dataclass(frozen=True)
class OsUser:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


SUDOERS_DIR = "/etc/sudoers.d"
SUDOERS_FILE = "ssm-agent-users"


def sudoers_path(name: str, directory: str = SUDOERS_DIR) -> str:
    """AWS's file for ``ssm-user``; ``ssm-agent-users-<name>`` for another ``--session-user``
    (a name useradd accepts has no ``.``, so sudo reads the file)."""
    base = SUDOERS_FILE if name == DEFAULT_USER else f"{SUDOERS_FILE}-{name}"
    return os.path.join(directory, base)


def grant_sudo(name: str, directory: str = SUDOERS_DIR) -> bool:
    """Passwordless sudo for ``name``, which the agent has just created, as AWS's agent does
    for ``ssm-user`` (docs/nodes.md, "ssm-user and sudo"). The file is written under a name
    sudo ignores (it has a ``.``), created ``0440`` from the start, then linked into place:
    never a moment where it exists with looser permissions (AWS's agent had that window,
    CVE-2022-29527). An existing file is left alone; without ``/etc/sudoers.d`` (no sudo)
    there is nothing to do. Returns whether the file was written."""
    if not os.path.isdir(directory):
        return False
    final = sudoers_path(name, directory)
    if os.path.lexists(final):
        return False
    tmp = os.path.join(directory, f".{os.path.basename(final)}.{os.getpid()}.tmp")
    text = f"# User rules for {name}\n{name} ALL=(ALL) NOPASSWD:ALL\n"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o440)
        try:
            os.fchmod(fd, 0o440)  # whatever the umask
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, final)  # atomic, and never replaces a file that appeared meanwhile
        return True
    except OSError as exc:
        log.warning("could not grant sudo to %s in %s: %s", name, final, exc)
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def resolve_user(name: str, *, allow_root: bool = False, create: bool = False) -> OsUser:
    """The OS account a session runs as; ``create`` makes ``ssm-user``-style accounts on
    demand (needs root). Root only when ``allow_root``: never a silent fallback."""
    try:
        pw = pwd.getpwnam(name)
    except (KeyError, ValueError):
        if not create or os.geteuid() != 0 or not _USER_NAME.fullmatch(name):
            raise RunAsError(
                f"failed to start pty since RunAs user {name} does not exist"
            ) from None
        try:
            subprocess.run(
                ["useradd", "--create-home", "--shell", "/bin/bash", "--", name],
                check=True,
                capture_output=True,
            )
            pw = pwd.getpwnam(name)
        except (subprocess.CalledProcessError, OSError, KeyError) as exc:
            raise RunAsError(f"could not create the session user {name}: {exc}") from None
        grant_sudo(name)  # only for the user the agent just created, as AWS's agent does
    if pw.pw_uid == 0 and not allow_root:
        raise RunAsError("sessions do not run as root unless the agent is configured to")
    if os.geteuid() != 0 and pw.pw_uid != os.geteuid():
        raise RunAsError(f"the agent runs unprivileged and cannot start a shell as {name}")
    shell = (
        pw.pw_shell
        if pw.pw_shell
        and os.path.exists(pw.pw_shell)
        and not pw.pw_shell.endswith(("nologin", "false"))
        else "/bin/sh"
    )
    return OsUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, shell)


def session_user(io: SessionIO, *, elevated: bool = False) -> OsUser:
    """The OS user a session runs as (docs/reference/session-manager.md#run-as), or
    :class:`PluginError` saying why none.

    * ``elevated`` (the document's ``runAsElevated``): root, only if the node allows root
      sessions; otherwise the session fails (never silently as someone else).
    * Run As enabled in the session's preferences: the broker's ``runAsUser`` (the caller's
      ``SSMSessionRunAs`` tag) else ``runAsDefaultUser``. That user must exist: it is never
      created, never root, and there is no fallback to ``ssm-user``.
    * Otherwise the node's default user (``ssm-user``, created on first use).
    """
    settings = io.settings
    inputs = io.document.get("inputs") or {}
    try:
        if elevated:
            if not settings.allow_root:
                raise PluginError(ELEVATED_NOT_ALLOWED)
            return resolve_user("root", allow_root=True)
        if is_true(inputs.get("runAsEnabled")):
            name = str(io.task.get("runAsUser") or inputs.get("runAsDefaultUser") or "").strip()
            if not name:
                raise PluginError(NO_RUN_AS_USER)
            if os.geteuid() != 0:
                raise PluginError("the agent must run as root to use RunAs")
            user = resolve_user(name, allow_root=True, create=False)
            if user.uid == 0:
                raise PluginError(ROOT_NOT_SUPPORTED.format(name=name))
            return user
        return resolve_user(
            settings.default_user,
            allow_root=settings.allow_root,
            create=settings.create_default_user,
        )
    except RunAsError as exc:
        raise PluginError(str(exc)) from None


def login_env(user: OsUser, term: str | None = None) -> dict[str, str]:
    """The clean environment of a login: nothing of the agent's own leaks into a session."""
    env = {
        "HOME": user.home,
        "SHELL": user.shell,
        "USER": user.name,
        "LOGNAME": user.name,
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    if term:
        env["TERM"] = term
    return env


def as_user(user: OsUser) -> dict[str, Any]:
    """``subprocess.Popen`` arguments that run a child as ``user``: uid, gid, supplementary
    groups (when the agent is root) and the home directory as working directory."""
    as_other = os.geteuid() == 0 and user.uid != 0
    return {
        "cwd": user.home if os.path.isdir(user.home) else "/",
        "user": user.uid if as_other else None,
        "group": user.gid if as_other else None,
        "extra_groups": os.getgrouplist(user.name, user.gid) if as_other else None,
    }


def reset_signals() -> None:
    """In a child before exec: default signal dispositions, nothing blocked. An agent started
    with ``&`` or nohup ignores SIGINT/SIGQUIT/SIGHUP; a session must not inherit that, or
    Ctrl-C stops working in it."""
    for sig in _RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PtyShell:
    """One shell process on a PTY; output is pushed to ``on_output`` from the event loop."""

    def __init__(
        self,
        user: OsUser,
        on_output: Callable[[bytes], None],
        on_exit: Callable[[int], None],
        *,
        cols: int = 80,
        rows: int = 24,
        term: str = "xterm-256color",
        profile: str | None = None,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.user = user
        self.argv = argv
        self.extra_env = env or {}
        """Added to the login environment (the document's parameters for its shell text)."""
        self.on_output = on_output
        self.on_exit = on_exit
        self.cols, self.rows = cols, rows
        self.term = term
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self.master = -1
        self.exit_code: int | None = None
        self._paused = False
        self._input = bytearray()
        """Client input the PTY has not taken yet (written when the master is writable)."""
        self._writing = False
        self._was_full = False  # the buffer reached the high water since the last on_drained
        self.on_drained: Callable[[], None] | None = None
        """Called when a full input buffer has drained below :data:`INPUT_LOW_WATER`."""

    def start(self) -> None:
        master, slave = os.openpty()
        _set_size(master, self.cols, self.rows)
        argv = [self.user.shell, "-l"]
        if self.argv is not None:
            argv = self.argv
        elif self.profile:
            # shellProfile.linux runs first, then the interactive shell (AWS's semantics).
            argv = [self.user.shell, "-l", "-c", f"{self.profile}\nexec {self.user.shell} -l"]

        def child_setup() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            reset_signals()

        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**login_env(self.user, self.term), **self.extra_env},
            start_new_session=True,
            preexec_fn=child_setup,
            close_fds=True,
            **as_user(self.user),
        )
        os.close(slave)
        self.master = master
        os.set_blocking(master, False)
        loop = asyncio.get_running_loop()
        loop.add_reader(master, self._readable)

    def _readable(self) -> None:
        # A PTY read returns at most a few KiB: gather what is already there (up to 64 KiB) so
        # that bulk output travels in large frames, while a lone keystroke echo goes at once.
        parts: list[bytes] = []
        size = 0
        eof = False
        while size < READ_BATCH:
            try:
                chunk = os.read(self.master, READ_BATCH - size)
            except BlockingIOError:
                break
            except OSError:
                eof = True  # EIO: the shell and every holder of the slave side are gone
                break
            if not chunk:
                eof = True
                break
            parts.append(chunk)
            size += len(chunk)
        if parts:
            self.on_output(b"".join(parts))
        if not eof:
            return
        asyncio.get_running_loop().remove_reader(self.master)
        asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        assert self.proc is not None
        code = await asyncio.get_running_loop().run_in_executor(None, self.proc.wait)
        self.exit_code = code
        self._stop_writing()
        self._input.clear()
        with contextlib.suppress(OSError):
            os.close(self.master)
        self.on_exit(code)

    def pause_reading(self) -> None:
        """Stop reading output (backpressure): the shell blocks once the PTY buffer fills."""
        if self.master >= 0 and not self._paused:
            self._paused = True
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.master)

    def resume_reading(self) -> None:
        if self._paused and self.exit_code is None:
            self._paused = False
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().add_reader(self.master, self._readable)

    @property
    def input_full(self) -> bool:
        """True while more client input is buffered than :data:`INPUT_HIGH_WATER`."""
        return len(self._input) >= INPUT_HIGH_WATER

    def write(self, data: bytes) -> None:
        """Give ``data`` to the PTY without ever blocking the event loop: what its input queue
        cannot take now waits in a buffer, written as the PTY becomes writable. The caller
        stops delivering input while :attr:`input_full` (back-pressure to the client)."""
        if self.master < 0 or self.exit_code is not None or not data:
            return
        self._input += data
        self._flush_input()

    def _flush_input(self) -> None:
        self._was_full = self._was_full or self.input_full
        while self._input:
            try:
                n = os.write(self.master, self._input[:READ_BATCH])
            except BlockingIOError:
                break  # the PTY's input queue is full: wait until it is writable
            except OSError:
                self._input.clear()  # the terminal is gone; the session is ending
                break
            del self._input[:n]
        if self._input and not self._writing:
            self._writing = True
            asyncio.get_running_loop().add_writer(self.master, self._flush_input)
        elif not self._input:
            self._stop_writing()
        if self._was_full and len(self._input) < INPUT_LOW_WATER:
            self._was_full = False
            if self.on_drained is not None:
                asyncio.get_running_loop().call_soon(self.on_drained)  # not inside a write

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_writer(self.master)

    def resize(self, cols: int, rows: int) -> None:
        if self.master >= 0 and cols > 0 and rows > 0:
            self.cols, self.rows = cols, rows
            with contextlib.suppress(OSError):
                _set_size(self.master, cols, rows)

    def close(self) -> None:
        """Hang up the shell's process group; kill what is left after a moment."""
        if self.proc is None or self.proc.poll() is not None:
            return
        end_process_group(self.proc, signal.SIGHUP)


KILL_GRACE = 1.0
"""Seconds a session's processes get to exit after SIGHUP/SIGTERM before SIGKILL."""


def _exited(pid: int) -> bool:
    """Whether ``pid`` (our child) has exited, without reaping it: an unreaped leader keeps
    its pid, so the process group id stays ours to signal."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
    except ChildProcessError:
        return True
    return info is not None


def end_process_group(
    proc: subprocess.Popen[bytes], first: signal.Signals, grace: float = KILL_GRACE
) -> threading.Thread:
    """Send ``first`` to the process group led by ``proc``, then — in a thread, so the event
    loop and the node's other sessions never wait — SIGKILL what is left after ``grace`` and
    reap the leader."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, first)

    def finish() -> None:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not _exited(pgid):
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            log.warning("process %d did not die", pgid)

    thread = threading.Thread(target=finish, name=f"end-{pgid}", daemon=True)
    thread.start()
    return thread


class ShellPlugin(SessionPlugin):
    """``Standard_Stream``: a login shell on a PTY as the session's OS user."""

    session_types = ("Standard_Stream",)

    def __init__(self, io: SessionIO) -> None:
        super().__init__(io)
        self.shell: PtyShell | None = None

    def _user(self) -> OsUser:
        return session_user(self.io)

    def _profile(self) -> str | None:
        """``shellProfile.linux``: run at the start of a Standard_Stream shell."""
        inputs = self.io.document.get("inputs") or {}
        profile = (inputs.get("shellProfile") or {}).get("linux")
        return profile if isinstance(profile, str) and profile.strip() else None

    def _argv(self, user: OsUser) -> list[str] | None:
        """The command to run instead of a plain login shell (None: the login shell)."""
        return None

    async def start(self) -> None:
        user = self._user()
        self.shell = PtyShell(
            user,
            self._output,
            self.io.exited,
            profile=self._profile(),
            argv=self._argv(user),
            env=parameter_environment(self.io.parameters),
        )
        self.shell.on_drained = self.io.resume_input
        self.shell.start()

    def _output(self, data: bytes) -> None:
        self.io.output(data)
        self.io.record("o", data)
        if not self.io.writable and self.shell is not None:
            self.shell.pause_reading()  # resumed when acks free the window

    def on_writable(self) -> None:
        if self.shell is not None:
            self.shell.resume_reading()

    def accepting(self) -> bool:
        """False while the process leaves its input unread and the buffer is full: client
        keystrokes then wait unacknowledged (the client stops at its window) instead of
        filling the node's memory; :meth:`PtyShell.write` never blocks the agent's loop."""
        shell = self.shell
        return shell is None or shell.exit_code is not None or not shell.input_full

    def on_input(self, payload_type: int, payload: bytes) -> None:
        shell = self.shell
        if shell is None:
            return
        if payload_type == PayloadType.OUTPUT:
            shell.write(payload)
            self.io.record("i", payload)
        elif payload_type == PayloadType.SIZE:
            with contextlib.suppress(PayloadError):
                size = parse_size(payload)
                shell.resize(size.cols, size.rows)
                self.io.record("r", (size.cols, size.rows))

    def close(self) -> None:
        if self.shell is not None:
            self.shell.close()
