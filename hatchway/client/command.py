"""``NonInteractiveCommands`` sessions: a command's output, and its exit code as ours.

The command runs without a terminal and with stdin ``/dev/null`` on the node, so there is
nothing to type: the terminal stays as it is (no raw mode, no Size messages) and stdin is not
read. Ctrl-C, Ctrl-\\ and Ctrl-Z reach the plugin as signals and are forwarded as the bytes
``0x03``/``0x1c``/``0x1a``, which the agent turns into signals to the command. Output
(PayloadType 1) goes to stdout and StdErr (11) to stderr, byte for byte. The command's exit
code becomes the plugin's exit status when the channel closes: from ExitCode (12,
``EXIT_CODE: <n>``, sent only with ``separateOutputStream``) or else from the ``ExitCode``
member Hatchway's broker adds to ``channel_closed``. AWS's plugin prints an ExitCode payload on
stdout, ignores the extra member, and exits 0 (docs/client.md).
"""

from __future__ import annotations

from hatchway.client.shell import ShellHandler

__all__ = ["NO_EXIT_CODE", "CommandHandler"]

NO_EXIT_CODE = 1
"""Exit status when the session ended without the command's exit code (failed to start,
terminated, timed out)."""


class CommandHandler(ShellHandler):
    """Output to stdout/stderr; the command's exit code is the session's."""

    async def start(self) -> None:
        """Nothing to set up: no raw mode, no Size, no stdin (see the module docstring)."""

    def on_reported_exit_code(self, code: int) -> None:
        """Without ``separateOutputStream`` the agent sends no ExitCode payload (as AWS's);
        Hatchway's broker reports the code in ``channel_closed`` instead."""
        if self.exit_code is None:
            self.exit_code = code

    def exit_status(self) -> int:
        code = self.exit_code
        if code is None:
            return NO_EXIT_CODE
        return code if 0 <= code <= 255 else NO_EXIT_CODE
