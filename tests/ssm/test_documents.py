"""Session-document schema, formats and StartSession parameters (hatchway.ssm.documents)."""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

import pytest

from hatchway.ssm import documents as sd

SHELL: dict[str, Any] = {
    "schemaVersion": "1.0",
    "description": "shell",
    "sessionType": "Standard_Stream",
    "inputs": {"idleSessionTimeout": "30", "runAsEnabled": True, "runAsDefaultUser": "ec2-user"},
}
PORT: dict[str, Any] = sd.aws_documents()["AWS-StartPortForwardingSession"].document


def with_(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``base`` with ``path`` (dotted) set to ``value`` (or removed when value is ...)."""
    doc = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node.setdefault(p, {})
    if value is ...:
        node.pop(last, None)
    else:
        node[last] = value
    return doc


VALID = [
    SHELL,
    sd.default_preferences(),
    *(d.document for d in sd.aws_documents().values() if d.document_type == "Session"),
    with_(SHELL, "inputs.idleSessionTimeout", "1"),
    with_(SHELL, "inputs.idleSessionTimeout", "60"),
    with_(SHELL, "inputs.maxSessionDuration", "1440"),
    with_(SHELL, "inputs.maxSessionDuration", ""),
    with_(SHELL, "inputs.s3EncryptionEnabled", "false"),
    with_(SHELL, "inputs.shellProfile", {"linux": "exec bash", "windows": "date"}),
    with_(SHELL, "inputs", ...),
    {
        "schemaVersion": "1.0",
        "sessionType": "Standard_Stream",
        "parameters": {"bucket": {"type": "String", "default": ""}},
        "inputs": {"s3BucketName": "{{ bucket }}", "s3EncryptionEnabled": "{{ bucket }}"},
    },
    with_(PORT, "properties.host", "db.internal"),
    {
        "schemaVersion": "1.0",
        "sessionType": "NonInteractiveCommands",
        "properties": {
            "linux": {
                "commands": ["id", "uptime"],
                "separateOutputStream": "true",
                "stdOutSeparatorPrefix": "OUT:",
            }
        },
    },
]


@pytest.mark.parametrize("doc", VALID)
def test_valid_session_documents(doc: dict[str, Any]) -> None:
    sd.validate_document(doc, "Session")


INVALID = [
    # (document, error code, fragment of the message)
    (
        with_(SHELL, "schemaVersion", "2.2"),
        "InvalidDocumentSchemaVersion",
        "2.2 is not a valid schema version for Session document type",
    ),
    (with_(SHELL, "schemaVersion", ...), "InvalidDocumentContent", "schemaVersion is required"),
    (with_(SHELL, "sessionType", ...), "InvalidDocumentContent", "sessionType is required"),
    (with_(SHELL, "sessionType", "Shell"), "InvalidDocumentContent", 'Invalid sessionType "Shell"'),
    (
        with_(SHELL, "inputs.idleSessionTimeout", "0"),
        "InvalidDocumentContent",
        "idleSessionTimeout",
    ),
    (with_(SHELL, "inputs.idleSessionTimeout", "61"), "InvalidDocumentContent", "between 1 and 60"),
    (with_(SHELL, "inputs.idleSessionTimeout", 20), "InvalidDocumentContent", "idleSessionTimeout"),
    (with_(SHELL, "inputs.idleSessionTimeout", "020"), "InvalidDocumentContent", "between 1"),
    (with_(SHELL, "inputs.maxSessionDuration", "1441"), "InvalidDocumentContent", "1440"),
    (with_(SHELL, "inputs.runAsEnabled", "yes"), "InvalidDocumentContent", "runAsEnabled"),
    (
        with_(SHELL, "inputs.cloudWatchStreamingEnabled", "true"),
        "InvalidDocumentContent",
        "cloudWatchStreamingEnabled",
    ),
    (with_(SHELL, "inputs.s3BucketName", 5), "InvalidDocumentContent", "s3BucketName"),
    (with_(SHELL, "inputs.idleTimeout", "5"), "InvalidDocumentContent", "Unsupported input"),
    (with_(SHELL, "inputs.shellProfile", {"mac": "x"}), "InvalidDocumentContent", "shellProfile"),
    (with_(SHELL, "inputs", []), "InvalidDocumentContent", "inputs must be a map"),
    (with_(SHELL, "extra", 1), "InvalidDocumentContent", "Unsupported property 'extra'"),
    (with_(SHELL, "properties", {"portNumber": "22"}), "InvalidDocumentContent", "Standard_Stream"),
    (
        with_(SHELL, "inputs.s3BucketName", "{{ nope }}"),
        "InvalidDocumentContent",
        "Parameter nope is referenced but not defined",
    ),
    (with_(PORT, "properties.portNumber", ...), "InvalidDocumentContent", "portNumber is required"),
    (with_(PORT, "properties.portNumber", "70000"), "InvalidDocumentContent", "1-65535"),
    (with_(PORT, "properties.type", "Remote"), "InvalidDocumentContent", "LocalPortForwarding"),
    (with_(PORT, "properties.bogus", "1"), "InvalidDocumentContent", "Unsupported property"),
    (with_(PORT, "properties", ...), "InvalidDocumentContent", "properties are required"),
    (with_(PORT, "parameters.portNumber.type", "Text"), "InvalidDocumentContent", ".type must"),
    (with_(PORT, "parameters.portNumber.type", ...), "InvalidDocumentContent", ".type must"),
    (
        with_(PORT, "parameters.portNumber.default", "x"),
        "InvalidDocumentContent",
        "Default value of parameter portNumber",
    ),
    (
        with_(PORT, "parameters.portNumber.allowedPattern", "(["),
        "InvalidDocumentContent",
        "not a valid regular expression",
    ),
    (with_(PORT, "parameters.portNumber.color", "red"), "InvalidDocumentContent", "Unsupported"),
    (
        with_(PORT, "parameters.bad-name", {"type": "String"}),
        "InvalidDocumentContent",
        "Invalid parameter name",
    ),
    (
        {"schemaVersion": "1.0", "sessionType": "InteractiveCommands", "properties": {}},
        "InvalidDocumentContent",
        "at least one",
    ),
    (
        {
            "schemaVersion": "1.0",
            "sessionType": "InteractiveCommands",
            "properties": {"linux": {"runAsElevated": True}},
        },
        "InvalidDocumentContent",
        "commands is required",
    ),
    (
        {
            "schemaVersion": "1.0",
            "sessionType": "InteractiveCommands",
            "properties": {"solaris": {"commands": "id"}},
        },
        "InvalidDocumentContent",
        "platform",
    ),
    (
        {
            "schemaVersion": "1.0",
            "sessionType": "NonInteractiveCommands",
            "properties": {"linux": {"commands": "id", "stdOutSeparatorPrefix": "bad prefix!"}},
        },
        "InvalidDocumentContent",
        "stdOutSeparatorPrefix",
    ),
]


@pytest.mark.parametrize(("doc", "code", "fragment"), INVALID)
def test_invalid_session_documents(doc: dict[str, Any], code: str, fragment: str) -> None:
    with pytest.raises(sd.DocumentError) as err:
        sd.validate_document(doc, "Session")
    assert err.value.code == code
    assert fragment in err.value.message


def test_other_document_types_need_only_a_schema_version() -> None:
    sd.validate_document({"schemaVersion": "2.2", "mainSteps": []}, "Command")
    with pytest.raises(sd.DocumentError) as err:
        sd.validate_document({"mainSteps": []}, "Command")
    assert err.value.code == "InvalidDocumentContent"


@pytest.mark.parametrize(
    ("content", "fmt", "fragment"),
    [
        ('{"schemaVersion": "1.0",', "JSON", "JSON not well-formed. at Line: 1, Column: 25"),
        ("[1, 2]", "JSON", "must be a JSON object"),
        ("schemaVersion: '1.0'\nsessionType: [Port\n", "YAML", "YAML not well-formed. at Line:"),
        ("just a string", "YAML", "must be a YAML object"),
        ("{}", "TEXT", "TEXT"),
    ],
)
def test_unparseable_content(content: str, fmt: str, fragment: str) -> None:
    with pytest.raises(sd.DocumentError) as err:
        sd.parse_content(content, fmt)
    assert err.value.code == "InvalidDocumentContent"
    assert fragment in err.value.message


def test_yaml_and_json_round_trip() -> None:
    yaml_text = sd.render_content(sd.default_preferences(), "YAML")
    assert "sessionType: Standard_Stream" in yaml_text
    assert sd.parse_content(yaml_text, "YAML") == sd.default_preferences()
    json_text = sd.convert_content(yaml_text, "YAML", "JSON")
    assert json.loads(json_text) == sd.default_preferences()
    assert sd.convert_content(json_text, "JSON", "JSON") is json_text
    # YAML keeps a float schemaVersion and unquoted dates readable
    doc = sd.parse_content(
        "schemaVersion: 1.0\nsessionType: Port\ndescription: 2024-01-01\n"
        "properties: {portNumber: '22'}\n",
        "YAML",
    )
    assert sd.schema_version(doc) == "1.0" and doc["description"] == "2024-01-01"
    sd.validate_document(doc, "Session")


def test_text_format_only_for_text_types() -> None:
    sd.check_format("ChangeCalendar", "TEXT")
    with pytest.raises(sd.DocumentError):
        sd.check_format("Session", "TEXT")


def test_hash_is_sha256_of_content() -> None:
    assert sd.content_hash("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_summaries() -> None:
    assert sd.parameter_summary(PORT) == [
        {
            "Name": "portNumber",
            "Type": "String",
            "Description": "(Optional) Port number of the server on the instance",
            "DefaultValue": "80",
        },
        {
            "Name": "localPortNumber",
            "Type": "String",
            "Description": "(Optional) Port number on local machine to forward traffic to. An open "
            "port is chosen at run-time if not provided",
            "DefaultValue": "0",
        },
    ]
    assert sd.platform_types(PORT, "Session") == ["Windows", "Linux", "MacOS"]
    linux_only = {"sessionType": "InteractiveCommands", "properties": {"linux": {}}}
    assert sd.platform_types(linux_only, "Session") == ["Linux"]


def test_aws_documents_and_default_preferences() -> None:
    assert set(sd.aws_documents()) == {
        "AWS-StartSSHSession",
        "AWS-StartPortForwardingSession",
        "AWS-StartPortForwardingSessionToRemoteHost",
        "AWS-StartInteractiveCommand",
        "AWS-StartNonInteractiveCommand",
        "AWS-StartPortForwardingSessionToSocket",
        "AWS-PasswordReset",
        "AWS-RunShellScript",
    }
    assert {n for n, d in sd.aws_documents().items() if d.document_type != "Session"} == {
        "AWS-RunShellScript"
    }
    ssh = sd.aws_documents()["AWS-StartSSHSession"].document
    assert ssh["sessionType"] == "Port" and ssh["parameters"]["portNumber"]["default"] == "22"
    prefs = sd.default_preferences()
    assert prefs["sessionType"] == "Standard_Stream"
    assert prefs["inputs"]["idleSessionTimeout"] == "20"
    assert prefs["inputs"]["runAsEnabled"] is False
    assert prefs["inputs"]["s3BucketName"] == "" and prefs["inputs"]["cloudWatchLogGroupName"] == ""


def test_aws_documents_are_package_data_that_validate() -> None:
    """Each AWS-owned document is a data file (hatchway/ssm/data/documents/<Name>.json) that
    parses and validates for its type; its stored content is the file's text, in the
    canonical form brokers seeded (two-space JSON), so seeded copies stay byte for byte."""
    folder = resources.files("hatchway.ssm").joinpath("data", "documents")
    files = {p.name for p in folder.iterdir() if p.name.endswith(".json")}
    assert files == {f"{n}.json" for n in sd.aws_documents()} | {
        "index.json",
        "SSM-SessionManagerRunShell.json",
    }
    for name, aws in sd.aws_documents().items():
        text = folder.joinpath(f"{name}.json").read_text(encoding="utf-8")
        assert aws.content == text.removesuffix("\n")
        assert aws.content == json.dumps(json.loads(text), indent=2)
        assert aws.created.tzinfo is not None and aws.created.year >= 2017
        sd.validate_document(aws.document, aws.document_type)
    prefs = sd.default_preferences()
    sd.validate_document(prefs, "Session")
    assert prefs["description"] == sd.DEFAULT_PREFERENCES_DESCRIPTION
    prefs["inputs"]["idleSessionTimeout"] = "5"  # a copy: the next caller gets the defaults
    assert sd.default_preferences()["inputs"]["idleSessionTimeout"] == "20"


REMOTE = sd.aws_documents()["AWS-StartPortForwardingSessionToRemoteHost"].document
COMMAND = sd.aws_documents()["AWS-StartInteractiveCommand"].document
TYPED: dict[str, Any] = {
    "schemaVersion": "1.0",
    "sessionType": "Standard_Stream",
    "parameters": {
        "flag": {"type": "Boolean", "default": False},
        "count": {"type": "Integer", "default": 1},
        "env": {"type": "String", "allowedValues": ["dev", "prod"], "default": "dev"},
        "users": {"type": "StringList", "default": ["a"], "minItems": 1, "maxItems": 2},
        "name": {"type": "String", "default": "xyz", "minChars": 2, "maxChars": 4},
    },
}


@pytest.mark.parametrize(
    ("doc", "given", "expected"),
    [
        (PORT, {}, {"portNumber": ["80"], "localPortNumber": ["0"]}),
        (PORT, {"portNumber": ["5432"]}, {"portNumber": ["5432"], "localPortNumber": ["0"]}),
        (
            REMOTE,
            {"host": ["db.example.com"], "portNumber": ["3306"]},
            {"host": ["db.example.com"], "portNumber": ["3306"], "localPortNumber": ["0"]},
        ),
        (COMMAND, {"command": ["sudo -i"]}, {"command": ["sudo -i"]}),
        (
            TYPED,
            {},
            {"flag": ["false"], "count": ["1"], "env": ["dev"], "users": ["a"], "name": ["xyz"]},
        ),
        (
            TYPED,
            {"flag": ["true"], "count": ["-3"], "env": ["prod"], "users": ["a", "b"]},
            {
                "flag": ["true"],
                "count": ["-3"],
                "env": ["prod"],
                "users": ["a", "b"],
                "name": ["xyz"],
            },
        ),
    ],
)
def test_parameters_accepted(
    doc: dict[str, Any], given: dict[str, list[str]], expected: dict[str, list[str]]
) -> None:
    assert sd.validate_parameters(doc, given) == expected


@pytest.mark.parametrize(
    ("doc", "given", "fragment"),
    [
        (PORT, {"portNumber": ["0"]}, 'Parameter "portNumber" "0" failed to satisfy constraint'),
        (PORT, {"portNumber": ["65536"]}, "regular expression pattern"),
        (PORT, {"portNumber": ["22", "80"]}, "exactly one value"),
        (PORT, {"nope": ["1"]}, "Parameter nope is not defined in the document"),
        (REMOTE, {"host": ["a;b"]}, 'Parameter "host"'),
        (COMMAND, {}, "Parameter command is required"),
        (TYPED, {"flag": ["maybe"]}, "true or false"),
        (TYPED, {"count": ["1.5"]}, "Integer"),
        (TYPED, {"env": ["test"]}, "not one of the allowed values: dev, prod"),
        (TYPED, {"users": []}, "at least 1"),
        (TYPED, {"users": ["a", "b", "c"]}, "at most 2"),
        (TYPED, {"name": ["x"]}, "at least 2 characters"),
        (TYPED, {"name": ["abcde"]}, "at most 4 characters"),
    ],
)
def test_parameters_refused(
    doc: dict[str, Any], given: dict[str, list[str]], fragment: str
) -> None:
    with pytest.raises(sd.DocumentError) as err:
        sd.validate_parameters(doc, given)
    assert err.value.code == "InvalidParameters"
    assert fragment in err.value.message


def test_interpolation() -> None:
    params = sd.validate_parameters(REMOTE, {"host": ["db1"], "portNumber": ["5432"]})
    assert sd.interpolate(REMOTE["properties"], params) == {
        "portNumber": "5432",
        "type": "LocalPortForwarding",
        "localPortNumber": "0",
        "host": "db1",
    }
    assert (
        sd.interpolate(
            "ssh -p {{portNumber}} {{ host }}:{{ssm:/x}}", {"portNumber": ["22"], "host": ["h"]}
        )
        == "ssh -p 22 h:{{ssm:/x}}"
    )
    assert sd.interpolate("{{ users }}", {"users": ["a", "b"]}) == ["a", "b"]
    assert sd.interpolate("{{ unknown }}", {}) == "{{ unknown }}"
    assert sd.references({"a": ["{{ x }}", "{{y}}-{{ssm:z}}"]}) == {"x", "y"}


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("Env", "prod", True),
        ("größe", "wert 1", True),
        ("a" * 128, "b" * 256, True),
        ("", "x", False),
        ("a" * 129, "x", False),
        ("k", "v" * 257, False),
        ("bad*key", "x", False),
        ("k", "bad#value", False),
        ("aws:reserved", "x", False),
    ],
)
def test_tag_rules(key: str, value: str, ok: bool) -> None:
    assert (sd.validate_tag(key, value) is None) is ok
