"""Parameters in bash arithmetic (issue 16, item 19): bash evaluates the *value* of a variable
used in arithmetic (``$(( ))``, ``(( ))``, ``let``, ``[[ … -gt … ]]``, array subscripts) or as a
variable name (``read``, ``printf -v``, ``[[ -v ]]``, namerefs: a name's subscript is
arithmetic), and that evaluation runs ``$(…)`` inside it. A parameter referenced there must be
a plain integer: a real AgentSession refuses the session before anything runs (the broker
refuses it at StartSession too: tests/server/test_session_limits.py)."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from agentpeer import Peer, run_session

from hatchway.agent.session import AgentSession
from hatchway.protocol import PayloadType
from hatchway.ssm.documents import DocumentError, arithmetic_spans, interpolate_shell

CONTEXTS = {
    "test": "[[ {{n}} -gt 1 ]] && echo big",
    "expansion": "echo $(( {{n}} + 1 ))",
    "command": "(( {{n}} > 1 )) && echo big",
    "let": "let x={{n}}; echo $x",
    "subscript": "a[{{n}}]=1; echo ${#a[@]}",
    "integer variable": "declare -i x\nx={{n}}\necho $x",
    "read into a name": "read {{n}} <<< 1",
    "printf -v": "printf -v {{n}} %s 1",
    "[[ -v ]]": "[[ -v {{n}} ]] || echo unset",
    "nameref": "declare -n r={{n}}; echo $r",
}


def _document(commands: str) -> dict[str, Any]:
    return {
        "schemaVersion": "1.0",
        "sessionType": "NonInteractiveCommands",
        "parameters": {"n": {"type": "String"}},
        "properties": {"linux": {"commands": commands}},
    }


def _run(commands: str, value: str) -> tuple[Peer, AgentSession]:
    async def go() -> tuple[Peer, AgentSession]:
        async with Peer() as peer:
            session = await run_session(peer, _document(commands), {"n": [value]})
            await asyncio.wait_for(peer.ended.wait(), 10)
            return peer, session

    return asyncio.run(go())


@pytest.mark.parametrize("context", sorted(CONTEXTS))
def test_a_command_substitution_in_an_arithmetic_parameter_never_runs(context: str) -> None:
    pwned = Path(f"/tmp/hatchway-pwned-{uuid.uuid4().hex}")  # writable by the session user
    try:
        peer, session = _run(CONTEXTS[context], f"a[$(touch {pwned})]")
        assert not pwned.exists(), f"{context}: the value ran as code"
        failure = peer.transcript.failure or ""
        assert "Parameter n is used where bash evaluates it" in failure, peer.transcript
        assert "must be an integer" in failure
        assert session.exit_code is None  # nothing was started
    finally:
        if pwned.exists():
            os.unlink(pwned)


def test_integers_still_work_in_arithmetic() -> None:
    peer, session = _run("echo $(( {{n}} + 1 )); [[ {{n}} -gt 1 ]] && echo big", "41")
    assert peer.transcript.failure is None, peer.transcript
    assert peer.transcript.data(PayloadType.OUTPUT).split() == [b"42", b"big"]
    assert session.exit_code == 0


def test_strings_outside_arithmetic_are_still_data() -> None:
    peer, _session = _run("echo {{n}} ${x:-{{n}}} [{{n}}]", "$(id)")
    assert peer.transcript.failure is None, peer.transcript
    assert peer.transcript.data(PayloadType.OUTPUT).split() == [b"$(id)", b"$(id)", b"[$(id)]"]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("echo $[ {{n}} * 2 ]", "$[ ]"),
        ("for (( i=0; i<{{n}}; i++ )); do :; done", "(( ))"),
        ("echo ${s:{{n}}:2}", "a substring expansion"),
        ("echo ${a[{{n}}]}", "an array subscript"),
        ("local -ri x={{n}}", "integer or reference variable"),
        ("printf -v {{n}} %s 1", "a variable name after -v"),
        ("test -v {{n}}", "a variable name after -v"),
        ("read -r {{n}}", "a variable name of read"),
        ("export {{n}}=1", "a variable name of export"),
        ("printf '%s' {{n}}", None),
        ("grep -v {{n}} /etc/hosts", None),
        ("export X={{n}}", None),
        ('export MSG="a -n"; echo {{n}}', None),
        ('echo "$(( {{n}} ))"', "(( ))"),
        ("if [[ x{{n}} == y ]]; then let y=1; fi", None),
        ("echo {{n}} -gt 1", None),
        ("echo ${x:-{{n}}}", None),
    ],
)
def test_arithmetic_contexts_are_found(text: str, found: str | None) -> None:
    params = {"n": ["not-a-number"]}
    spans = arithmetic_spans(text)
    ref = text.index("{{n}}")
    where = next((w for s, e, w in spans if s <= ref < e), None)
    if found is None:
        assert where is None, spans
        interpolate_shell(text, params)
    else:
        assert where is not None and found in where, spans
        with pytest.raises(DocumentError) as exc:
            interpolate_shell(text, params)
        assert exc.value.code == "InvalidParameters"
