"""Run Command's rules, shared by the broker and the agent (no I/O).

* :func:`plugins_of`: the steps a Command document runs (schema 2.2 ``mainSteps`` of
  ``aws:runShellScript``, schema 1.2 ``runtimeConfig``), rendered with the command's parameters.
* :func:`string_prefix` and :func:`plugin_output`: output truncation exactly as AWS's agent does
  it (``agent/plugins/pluginutil.StringPrefix`` and ``iohandler.TruncateOutput``): the first
  24,000 characters of stdout, 8,000 of stderr, and the 2,500-character ``Output`` of
  ``CommandPlugins``.
* :func:`invocation_outcome` and :func:`command_outcome`: the Status and StatusDetails of an
  invocation from its plugins, and of a command from its invocations and MaxErrors (AWS's API
  reference, ``Command.StatusDetails`` / ``CommandInvocation.StatusDetails``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hatchway.ssm.documents import DocumentError, interpolate, interpolate_shell

STDOUT_LIMIT = 24_000
"""Characters of a plugin's stdout kept (``StandardOutputContent``)."""
STDERR_LIMIT = 8_000
"""Characters of a plugin's stderr kept (``StandardErrorContent``)."""
OUTPUT_LIMIT = 2_500
"""Characters of ``CommandPlugins[].Output`` (AWS's agent: ``MaximumPluginOutputSize``)."""
TRUNCATED_SUFFIX = "--output truncated--"
"""What AWS's agent puts at the end of a truncated stdout or stderr."""
_TRUNCATE_OUT = "\n---Output truncated---"
_TRUNCATE_ERR = "\n---Error truncated----"
_ERROR_TITLE = "\n----------ERROR-------\n"

STOPPED_EXIT_CODE = 137
"""The response code of a plugin killed on timeout or cancel (128 + SIGKILL), as AWS's agent."""
NOT_RUN_CODE = -1
"""The response code of a plugin that did not run (AWS: "-1 … it wasn't received")."""

DEFAULT_EXECUTION_TIMEOUT = 3600
MAX_EXECUTION_TIMEOUT = 172_800
RUN_SHELL_SCRIPT = "aws:runShellScript"
SUPPORTED_ACTIONS = (RUN_SHELL_SCRIPT,)

# Statuses (botocore's CommandStatus / CommandInvocationStatus / CommandPluginStatus) and the
# StatusDetails texts of AWS's API reference.
PENDING = ("Pending", "Pending")
IN_PROGRESS = ("InProgress", "In Progress")
DELAYED = ("Delayed", "Delayed")
SUCCESS = ("Success", "Success")
FAILED = ("Failed", "Failed")
EXECUTION_TIMED_OUT = ("TimedOut", "Execution Timed Out")
DELIVERY_TIMED_OUT = ("TimedOut", "Delivery Timed Out")
CANCELLING = ("Cancelling", "Cancelling")
CANCELLED = ("Cancelled", "Cancelled")
UNDELIVERABLE = ("Failed", "Undeliverable")
TERMINATED = ("Cancelled", "Terminated")
INCOMPLETE = ("Failed", "Incomplete")
NO_INSTANCES_IN_TAG = ("Failed", "No Instances In Tag")

WAITING = frozenset({"Pending", "Delayed"})
"""Invocation statuses of a command not yet delivered."""
ACTIVE = frozenset({"Pending", "Delayed", "InProgress", "Cancelling"})
"""Invocation statuses that are not terminal."""


@dataclass(frozen=True)
class Plugin:
    """One step to run: its name (the step name, or the plugin name in schema 1.2), the shell
    lines, the working directory and the execution timeout in seconds."""

    name: str
    action: str
    commands: list[str]
    working_directory: str
    timeout: int

    def message(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": self.action,
            "commands": self.commands,
            "workingDirectory": self.working_directory,
            "timeoutSeconds": self.timeout,
        }


def _invalid(message: str) -> DocumentError:
    return DocumentError("InvalidParameters", message)


def _timeout(value: Any) -> int:
    if value in (None, ""):
        return DEFAULT_EXECUTION_TIMEOUT
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]{1,6}", text) or not 1 <= int(text) <= MAX_EXECUTION_TIMEOUT:
        raise _invalid(
            f"executionTimeout {text} is not valid: it must be 1 to {MAX_EXECUTION_TIMEOUT} "
            "seconds."
        )
    return int(text)


def _lines(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise DocumentError("InvalidDocumentContent", "runCommand must be a String or StringList.")


def _render(
    name: str, action: str, inputs: Mapping[str, Any], params: Mapping[str, list[str]]
) -> Plugin:
    if action not in SUPPORTED_ACTIONS:
        raise DocumentError(
            "InvalidDocument",
            f"Hatchway's agent runs the plugin {RUN_SHELL_SCRIPT} only, not {action}.",
        )
    commands = interpolate_shell(_lines(inputs.get("runCommand", [])), params)
    wd = interpolate(inputs.get("workingDirectory") or "", params)
    return Plugin(
        name=name,
        action=action,
        commands=_lines(commands),
        working_directory=wd if isinstance(wd, str) else ",".join(wd),
        timeout=_timeout(interpolate(inputs.get("timeoutSeconds"), params)),
    )


def plugins_of(document: Mapping[str, Any], params: Mapping[str, list[str]]) -> list[Plugin]:
    """The steps of a Command document (schema 2.x ``mainSteps``, 1.2 ``runtimeConfig``),
    parameters put in as for sessions (:func:`interpolate_shell`: a line that is one reference
    is the caller's script; a reference inside a line expands ``HATCHWAY_PARAM_<name>``)."""
    steps = document.get("mainSteps")
    if isinstance(steps, list):
        return [
            _render(str(s.get("name")), str(s.get("action")), s.get("inputs") or {}, params)
            for s in steps
            if isinstance(s, dict)
        ]
    runtime = document.get("runtimeConfig")
    if isinstance(runtime, dict):
        out: list[Plugin] = []
        for action, config in runtime.items():
            props = (config or {}).get("properties") if isinstance(config, dict) else None
            for item in props if isinstance(props, list) else [props or {}]:
                out.append(_render(str(action), str(action), item or {}, params))
        return out
    raise DocumentError("InvalidDocument", "The document has no steps to run.")


# -- truncation ------------------------------------------------------------------------------


def string_prefix(text: str, limit: int, suffix: str = TRUNCATED_SUFFIX) -> str:
    """``text`` if shorter than ``limit``; else its start and ``suffix``, ``limit`` in all."""
    if len(text) < limit:
        return text
    if limit > len(suffix):
        return text[: limit - len(suffix)] + suffix
    return suffix[:limit]


def plugin_output(stdout: str, stderr: str, capacity: int = OUTPUT_LIMIT) -> str:
    """``CommandPlugins[].Output``: stdout, then an error title and stderr, in ``capacity``
    characters, each part cut with its marker as AWS's agent does."""
    title = _ERROR_TITLE if stderr else ""
    space = capacity - len(title)
    if len(stdout) + len(stderr) < space:
        return stdout + title + stderr
    if len(stdout) > space // 2 and len(stderr) > space // 2:
        cut = (space - len(_TRUNCATE_ERR) - len(_TRUNCATE_OUT)) // 2
        return stdout[:cut] + _TRUNCATE_OUT + title + stderr[:cut] + _TRUNCATE_ERR
    if len(stdout) <= space // 2:
        cut = space - len(_TRUNCATE_ERR) - len(stdout)
        return stdout + title + stderr[:cut] + _TRUNCATE_ERR
    cut = space - len(_TRUNCATE_OUT) - len(stderr)
    return stdout[:cut] + _TRUNCATE_OUT + title + stderr


# -- statuses -------------------------------------------------------------------------------


def plugin_outcome(exit_code: int, *, timed_out: bool, cancelled: bool) -> tuple[str, str]:
    """A finished plugin's (Status, StatusDetails) from how it ended."""
    if cancelled:
        return CANCELLED
    if timed_out:
        return EXECUTION_TIMED_OUT
    return SUCCESS if exit_code == 0 else FAILED


def invocation_outcome(plugin_statuses: Iterable[tuple[str, str]]) -> tuple[str, str]:
    """A finished invocation's (Status, StatusDetails) from its plugins': the first of
    Cancelled, Execution Timed Out, Failed that any plugin has, else Success."""
    seen = list(plugin_statuses)
    for outcome in (CANCELLED, EXECUTION_TIMED_OUT, FAILED):
        if outcome in seen:
            return outcome
    return SUCCESS


def max_count(value: str, targets: int) -> int:
    """MaxConcurrency / MaxErrors (``"10"`` or ``"10%"``) as a number of targets; a
    percentage of at least one target is at least 1 (AWS: "rounded up")."""
    text = value.strip()
    if text.endswith("%"):
        pct = int(text[:-1])
        return -(-pct * targets // 100) if pct else 0
    return int(text)


def command_outcome(
    invocations: Iterable[tuple[str, str]], max_errors: int, *, cancelled: bool = False
) -> tuple[str, str]:
    """A command's (Status, StatusDetails) from its invocations' (AWS's API reference):
    Pending until one is delivered, In Progress until all are terminal; then Cancelled if
    cancelled; Failed / Execution Timed Out / Delivery Timed Out when more than MaxErrors
    invocations ended so; Success when all succeeded (Undeliverable ones not counted);
    Incomplete otherwise."""
    seen = list(invocations)
    if not seen:
        return NO_INSTANCES_IN_TAG
    statuses = [s for s, _ in seen]
    if any(s in ACTIVE for s in statuses):
        if cancelled:
            return CANCELLING
        if all(s in WAITING for s in statuses):
            return PENDING
        return IN_PROGRESS
    if cancelled:
        return CANCELLED
    failed = seen.count(FAILED)
    timed_out = seen.count(EXECUTION_TIMED_OUT)
    if failed + timed_out > max_errors:
        return FAILED if failed >= timed_out else EXECUTION_TIMED_OUT
    if seen.count(DELIVERY_TIMED_OUT) > max_errors:
        return DELIVERY_TIMED_OUT
    counted = [o for o in seen if o != UNDELIVERABLE]
    if all(o == SUCCESS for o in counted):
        return SUCCESS
    return INCOMPLETE
