"""Session-document ``allowedPattern`` checked as AWS's agent does, with RE2 (issue 16, item 2).

Through boto3 against a running broker and node: ``$`` does not match before a trailing
newline, ``\\d`` is ASCII, matching is linear in the value (a pattern that backtracks in
Python's ``re`` answers at once) and a pattern RE2 cannot compile is refused at
CreateDocument and UpdateDocument with InvalidDocumentContent, changing nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from harness import ADMIN_KEY, ADMIN_SECRET, REGION, Agent, Broker, start_agent


@pytest.fixture(scope="module")
def node(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = start_agent(broker, tmp_path_factory.mktemp("node") / "state")
    yield a
    a.stop()


@pytest.fixture(scope="module")
def ssm(broker: Broker) -> Any:
    # A generous read timeout, only so that a broker that never answers fails the test.
    return boto3.client(
        "ssm",
        endpoint_url=broker.url,
        region_name=REGION,
        aws_access_key_id=ADMIN_KEY,
        aws_secret_access_key=ADMIN_SECRET,
        config=Config(retries={"max_attempts": 1}, read_timeout=60),
    )


def port_doc(pattern: str, default: str = "22") -> str:
    return json.dumps(
        {
            "schemaVersion": "1.0",
            "description": "port forwarding with a custom pattern",
            "sessionType": "Port",
            "parameters": {
                "portNumber": {"type": "String", "allowedPattern": pattern, "default": default}
            },
            "properties": {"portNumber": "{{ portNumber }}", "type": "LocalPortForwarding"},
        }
    )


def refused(ssm: Any, target: str, document: str, value: str) -> tuple[str, str]:
    with pytest.raises(ClientError) as exc:
        ssm.start_session(Target=target, DocumentName=document, Parameters={"portNumber": [value]})
    err = exc.value.response["Error"]
    return err["Code"], err["Message"]


def accepted(ssm: Any, target: str, document: str, value: str) -> None:
    out = ssm.start_session(
        Target=target, DocumentName=document, Parameters={"portNumber": [value]}
    )
    ssm.terminate_session(SessionId=out["SessionId"])


def test_trailing_newline_and_unicode_digits_refused(ssm: Any, node: Agent) -> None:
    code, message = refused(ssm, node.instance_id, "AWS-StartPortForwardingSession", "22\n")
    assert code == "InvalidParameters"
    assert "failed to satisfy constraint" in message
    accepted(ssm, node.instance_id, "AWS-StartPortForwardingSession", "22")
    ssm.create_document(Name="Pattern-digits", DocumentType="Session", Content=port_doc(r"^\d+$"))
    assert refused(ssm, node.instance_id, "Pattern-digits", "٢٢")[0] == "InvalidParameters"
    assert refused(ssm, node.instance_id, "Pattern-digits", "22\n")[0] == "InvalidParameters"
    accepted(ssm, node.instance_id, "Pattern-digits", "22")


def test_matching_is_linear(ssm: Any, node: Agent) -> None:
    """``^(a+)+$`` on 5,000 a's and a '!' took Python's re exponential time; RE2 is linear."""
    ssm.create_document(
        Name="Pattern-nested", DocumentType="Session", Content=port_doc("^(a+)+$", "aaa")
    )
    code, _ = refused(ssm, node.instance_id, "Pattern-nested", "a" * 5000 + "!")
    assert code == "InvalidParameters"


UNCOMPILABLE = [
    r"^(?=.*[0-9])[a-z0-9]+$",  # lookahead
    r"^(?<!x)[0-9]+$",  # lookbehind
    r"^([0-9])\1$",  # backreference
    r"^[0-9]*+$",  # possessive quantifier
    r"^(?>[0-9]+)$",  # atomic group
    r"^[0-9]+\Z",  # \Z
    r"^[0-9]{1,1001}$",  # repetition over 1,000
]


@pytest.mark.parametrize("pattern", UNCOMPILABLE)
def test_pattern_re2_cannot_compile_is_refused(ssm: Any, pattern: str) -> None:
    with pytest.raises(ClientError) as exc:
        ssm.create_document(
            Name="Pattern-refused", DocumentType="Session", Content=port_doc(pattern)
        )
    err = exc.value.response["Error"]
    assert err["Code"] == "InvalidDocumentContent"
    assert "allowedPattern is not a valid regular expression" in err["Message"]
    with pytest.raises(ClientError) as missing:
        ssm.describe_document(Name="Pattern-refused")
    assert missing.value.response["Error"]["Code"] == "InvalidDocument"


def test_update_with_uncompilable_pattern_refused(ssm: Any) -> None:
    ssm.create_document(Name="Pattern-update", DocumentType="Session", Content=port_doc("^[0-9]+$"))
    with pytest.raises(ClientError) as exc:
        ssm.update_document(
            Name="Pattern-update", Content=port_doc(UNCOMPILABLE[0]), DocumentVersion="$LATEST"
        )
    assert exc.value.response["Error"]["Code"] == "InvalidDocumentContent"
    desc = ssm.describe_document(Name="Pattern-update")["Document"]
    assert desc["LatestVersion"] == "1"
    assert json.loads(ssm.get_document(Name="Pattern-update")["Content"]) == json.loads(
        port_doc("^[0-9]+$")
    )
