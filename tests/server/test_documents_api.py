"""SSM document and tag operations against a real broker, with boto3 and the ``aws`` CLI."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError

from hatchway.ssm import documents as sd

Broker = Any  # harness.broker.Broker
ACCOUNT = "123456789012"  # the account the conftest broker runs with
AWS_OWNED = sorted(sd.aws_documents())
RUN_SHELL = "SSM-SessionManagerRunShell"


def session_doc(timeout: str = "15", **inputs: Any) -> str:
    return json.dumps(
        {
            "schemaVersion": "1.0",
            "description": "test shell",
            "sessionType": "Standard_Stream",
            "inputs": {"idleSessionTimeout": timeout, "runAsEnabled": False, **inputs},
        }
    )


PORT_YAML = """\
schemaVersion: '1.0'
description: Forward to a database
sessionType: Port
parameters:
  portNumber:
    type: String
    description: Remote port
    allowedPattern: ^[0-9]{1,5}$
    default: '5432'
properties:
  portNumber: '{{ portNumber }}'
  type: LocalPortForwarding
"""


@pytest.fixture(scope="module")
def ssm(broker: Broker) -> Any:
    return broker.client("ssm")


def state(ssm: Any) -> Any:
    """Everything a failed call must leave unchanged: documents, versions, contents, tags."""
    out = {}
    for page in ssm.get_paginator("list_documents").paginate(
        Filters=[{"Key": "Owner", "Values": ["All"]}]
    ):
        for d in page["DocumentIdentifiers"]:
            name = d["Name"]
            versions = ssm.list_document_versions(Name=name)["DocumentVersions"]
            desc = ssm.describe_document(Name=name)["Document"]
            out[name] = (
                d.get("Tags"),
                desc["DefaultVersion"],
                desc["LatestVersion"],
                [
                    (
                        v["DocumentVersion"],
                        v.get("VersionName"),
                        ssm.get_document(Name=name, DocumentVersion=v["DocumentVersion"])[
                            "Content"
                        ],
                    )
                    for v in versions
                ],
            )
    return out


@pytest.fixture
def unchanged(ssm: Any) -> Iterator[Callable[[], None]]:
    """Call the yielded check after a failing request: the store must be as before."""
    before = state(ssm)

    def check() -> None:
        assert state(ssm) == before

    yield check


def error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    err = exc.value.response["Error"]
    return err["Code"], err.get("Message", "")


# -- AWS-owned documents and the preferences document -----------------------------------


def test_aws_owned_documents_are_listed_with_owner_amazon(ssm: Any) -> None:
    got = ssm.list_documents(Filters=[{"Key": "Owner", "Values": ["Amazon"]}])
    names = [d["Name"] for d in got["DocumentIdentifiers"]]
    assert names == AWS_OWNED
    for d in got["DocumentIdentifiers"]:
        assert d["Owner"] == "Amazon"
        kind = sd.aws_documents()[d["Name"]].document_type
        assert d["DocumentType"] == kind
        assert d["SchemaVersion"] == ("1.0" if kind == "Session" else "1.2")
        assert d["DocumentFormat"] == "JSON"
        assert d["DocumentVersion"] == "1"
    ssh = ssm.describe_document(Name="AWS-StartSSHSession")["Document"]
    assert ssh["Owner"] == "Amazon" and ssh["HashType"] == "Sha256"
    assert ssh["Parameters"] == [
        {
            "Name": "portNumber",
            "Type": "String",
            "Description": "(Optional) Port number of SSH server on the instance",
            "DefaultValue": "22",
        }
    ]
    assert ssh["PlatformTypes"] == ["Windows", "Linux", "MacOS"]
    content = ssm.get_document(Name="AWS-StartPortForwardingSession")["Content"]
    assert json.loads(content) == sd.aws_documents()["AWS-StartPortForwardingSession"].document
    by_arn = ssm.get_document(Name="arn:aws:ssm:us-east-1::document/AWS-StartSSHSession")
    assert by_arn["Name"] == "AWS-StartSSHSession"


def test_aws_owned_documents_are_read_only(ssm: Any, unchanged: Callable[[], None]) -> None:
    for call in (
        lambda: ssm.update_document(
            Name="AWS-StartSSHSession", Content=session_doc(), DocumentVersion="$LATEST"
        ),
        lambda: ssm.delete_document(Name="AWS-StartSSHSession"),
        lambda: ssm.update_document_default_version(
            Name="AWS-StartSSHSession", DocumentVersion="1"
        ),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert error(exc)[0] == "InvalidDocumentOperation"
    with pytest.raises(ClientError) as exc:
        ssm.add_tags_to_resource(
            ResourceType="Document",
            ResourceId="AWS-StartSSHSession",
            Tags=[{"Key": "k", "Value": "v"}],
        )
    assert error(exc)[0] == "InvalidResourceId"
    with pytest.raises(ClientError) as exc:
        ssm.create_document(Name="AWS-Mine", Content=session_doc(), DocumentType="Session")
    assert error(exc)[0] == "ValidationException"
    for reserved in ("amazon-doc", "amzn-doc", "awsdoc", "AWSSupport-x"):
        with pytest.raises(ClientError) as exc:
            ssm.create_document(Name=reserved, Content=session_doc(), DocumentType="Session")
        assert error(exc)[0] == "ValidationException", reserved
    unchanged()


def test_preferences_document_absent_until_created_then_updatable(ssm: Any) -> None:
    """issue 15 item 2: on AWS ``SSM-SessionManagerRunShell`` does not exist until the
    documented ``create-document`` step (Terraform, CloudFormation do the same); it used to be
    seeded, and that step got DocumentAlreadyExists. Changed deliberately: it was asserted
    present here before."""
    with pytest.raises(ClientError) as exc:
        ssm.describe_document(Name=RUN_SHELL)
    assert error(exc) == ("InvalidDocument", "No matching value was found for Name.")
    mine = ssm.list_documents(Filters=[{"Key": "Owner", "Values": ["Self"]}])
    assert RUN_SHELL not in [x["Name"] for x in mine["DocumentIdentifiers"]]
    content = sd.render_content(sd.default_preferences(), "JSON")
    ssm.create_document(Name=RUN_SHELL, Content=content, DocumentType="Session")
    d = ssm.describe_document(Name=RUN_SHELL)["Document"]
    assert d["Owner"] == ACCOUNT and d["DocumentType"] == "Session"
    doc = json.loads(ssm.get_document(Name=RUN_SHELL)["Content"])
    assert doc["inputs"]["idleSessionTimeout"] == "20"
    mine = ssm.list_documents(Filters=[{"Key": "Owner", "Values": ["Self"]}])
    assert RUN_SHELL in [x["Name"] for x in mine["DocumentIdentifiers"]]
    latest = int(d["LatestVersion"])
    doc["inputs"]["idleSessionTimeout"] = "45"
    up = ssm.update_document(Name=RUN_SHELL, Content=json.dumps(doc), DocumentVersion="$LATEST")[
        "DocumentDescription"
    ]
    assert up["DocumentVersion"] == str(latest + 1)
    assert up["DefaultVersion"] == d["DefaultVersion"]  # unchanged until set
    ssm.update_document_default_version(Name=RUN_SHELL, DocumentVersion=str(latest + 1))
    now = json.loads(ssm.get_document(Name=RUN_SHELL)["Content"])
    assert now["inputs"]["idleSessionTimeout"] == "45"


# -- the document lifecycle via boto3 ---------------------------------------------------


def test_document_lifecycle(ssm: Any) -> None:
    name = "Team-Shell"
    created = ssm.create_document(
        Name=name,
        Content=session_doc(),
        DocumentType="Session",
        VersionName="v1",
        Tags=[{"Key": "team", "Value": "blue"}],
        TargetType="/AWS::EC2::Instance",
    )["DocumentDescription"]
    assert created["Status"] == "Creating"
    assert created["DocumentVersion"] == created["LatestVersion"] == "1"
    assert created["DefaultVersion"] == "1"
    assert created["Owner"] == ACCOUNT
    assert created["Hash"] == sd.content_hash(session_doc())
    assert created["HashType"] == "Sha256"
    assert created["SchemaVersion"] == "1.0"
    assert created["DocumentFormat"] == "JSON"
    assert created["VersionName"] == "v1"
    assert created["Tags"] == [{"Key": "team", "Value": "blue"}]
    assert created["CreatedDate"].year >= 2024

    described = ssm.describe_document(Name=name)["Document"]
    assert described["Status"] == "Active"
    assert described["TargetType"] == "/AWS::EC2::Instance"

    as_yaml = ssm.get_document(Name=name, DocumentFormat="YAML")
    assert as_yaml["DocumentFormat"] == "YAML"
    assert yaml.safe_load(as_yaml["Content"]) == json.loads(session_doc())
    assert ssm.get_document(Name=name)["Content"] == session_doc()  # stored text, verbatim

    v2 = ssm.update_document(
        Name=name, Content=session_doc("30"), DocumentVersion="1", VersionName="v2"
    )["DocumentDescription"]
    assert v2["DocumentVersion"] == v2["LatestVersion"] == "2"
    assert v2["DefaultVersion"] == "1"
    assert v2["TargetType"] == "/AWS::EC2::Instance"  # kept from the previous version
    v3 = ssm.update_document(
        Name=name, Content=PORT_YAML.replace("5432", "6543"), DocumentFormat="YAML"
    )["DocumentDescription"]
    assert v3["DocumentVersion"] == "3" and v3["DocumentFormat"] == "YAML"

    assert (
        json.loads(ssm.get_document(Name=name)["Content"])["inputs"]["idleSessionTimeout"] == "15"
    )
    assert (
        json.loads(ssm.get_document(Name=name, VersionName="v2")["Content"])["inputs"][
            "idleSessionTimeout"
        ]
        == "30"
    )
    assert "6543" in ssm.get_document(Name=name, DocumentVersion="$LATEST")["Content"]
    as_json = ssm.get_document(Name=name, DocumentVersion="3", DocumentFormat="JSON")
    assert json.loads(as_json["Content"])["sessionType"] == "Port"

    default = ssm.update_document_default_version(Name=name, DocumentVersion="2")["Description"]
    assert default == {"Name": name, "DefaultVersion": "2", "DefaultVersionName": "v2"}
    versions = ssm.list_document_versions(Name=name)["DocumentVersions"]
    assert [(v["DocumentVersion"], v["IsDefaultVersion"]) for v in versions] == [
        ("1", False),
        ("2", True),
        ("3", False),
    ]
    paged = ssm.list_document_versions(Name=name, MaxResults=2)
    assert len(paged["DocumentVersions"]) == 2
    rest = ssm.list_document_versions(Name=name, MaxResults=2, NextToken=paged["NextToken"])
    assert [v["DocumentVersion"] for v in rest["DocumentVersions"]] == ["3"]
    assert "NextToken" not in rest

    ssm.delete_document(Name=name, DocumentVersion="1")
    assert [
        v["DocumentVersion"] for v in ssm.list_document_versions(Name=name)["DocumentVersions"]
    ] == ["2", "3"]
    ssm.delete_document(Name=name)
    with pytest.raises(ClientError) as exc:
        ssm.describe_document(Name=name)
    assert error(exc)[0] == "InvalidDocument"


def test_list_documents_filters_and_pages(ssm: Any) -> None:
    for i in range(3):
        ssm.create_document(
            Name=f"Paged-{i}",
            Content=session_doc(),
            DocumentType="Session",
            Tags=[{"Key": "batch", "Value": "p" if i < 2 else "q"}],
        )
    ssm.create_document(
        Name="Paged-cmd",
        DocumentType="Command",
        Content=json.dumps({"schemaVersion": "2.2", "mainSteps": []}),
    )

    def names(**kw: Any) -> list[str]:
        return [
            d["Name"]
            for p in ssm.get_paginator("list_documents").paginate(**kw)
            for d in p["DocumentIdentifiers"]
        ]

    assert names(Filters=[{"Key": "Name", "Values": ["Paged-"]}]) == [
        "Paged-0",
        "Paged-1",
        "Paged-2",
        "Paged-cmd",
    ]
    assert names(
        Filters=[
            {"Key": "Name", "Values": ["Paged-"]},
            {"Key": "DocumentType", "Values": ["Session"]},
        ]
    ) == ["Paged-0", "Paged-1", "Paged-2"]
    assert names(Filters=[{"Key": "tag:batch", "Values": ["p"]}]) == ["Paged-0", "Paged-1"]
    assert names(Filters=[{"Key": "tag-key", "Values": ["batch"]}]) == [
        "Paged-0",
        "Paged-1",
        "Paged-2",
    ]
    assert names(DocumentFilterList=[{"key": "Name", "value": "Paged-c"}]) == ["Paged-cmd"]
    assert names(DocumentFilterList=[{"key": "Owner", "value": "Amazon"}]) == AWS_OWNED
    everything = names()
    assert set(AWS_OWNED) | {RUN_SHELL, "Paged-0"} <= set(everything)
    assert everything == sorted(everything)
    first = ssm.list_documents(MaxResults=2)
    assert len(first["DocumentIdentifiers"]) == 2 and first["NextToken"]
    second = ssm.list_documents(MaxResults=2, NextToken=first["NextToken"])
    assert second["DocumentIdentifiers"][0]["Name"] == everything[2]
    for n in ("Paged-0", "Paged-1", "Paged-2", "Paged-cmd"):
        ssm.delete_document(Name=n)


# -- bad input: AWS's errors, and nothing changes -----------------------------------------


BAD_CREATE = [
    ({"Content": '{"schemaVersion": "1.0",'}, "InvalidDocumentContent", "JSON not well-formed"),
    (
        {"Content": "a: [b", "DocumentFormat": "YAML"},
        "InvalidDocumentContent",
        "YAML not well-formed",
    ),
    (
        {"Content": session_doc().replace('"1.0"', '"2.2"')},
        "InvalidDocumentSchemaVersion",
        "2.2 is not a valid schema version for Session document type",
    ),
    (
        {"Content": session_doc().replace("Standard_Stream", "Shell")},
        "InvalidDocumentContent",
        "sessionType",
    ),
    ({"Content": session_doc("61")}, "InvalidDocumentContent", "idleSessionTimeout"),
    ({"Content": session_doc("0")}, "InvalidDocumentContent", "idleSessionTimeout"),
    (
        {"Content": session_doc(maxSessionDuration="2000")},
        "InvalidDocumentContent",
        "maxSessionDuration",
    ),
    (
        {"Content": "x" * (64 * 1024 + 1)},
        "MaxDocumentSizeExceeded",
        "The size limit of a document is 64 KB.",
    ),
    (
        {"Content": session_doc(), "Tags": [{"Key": "aws:x", "Value": "y"}]},
        "ValidationException",
        "reserved",
    ),
    (
        {"Content": session_doc(), "Tags": [{"Key": f"k{i}", "Value": "v"} for i in range(51)]},
        "TooManyTagsError",
        "",
    ),
]


@pytest.mark.parametrize(("extra", "code", "fragment"), BAD_CREATE)
def test_create_refused(
    ssm: Any, unchanged: Callable[[], None], extra: dict[str, Any], code: str, fragment: str
) -> None:
    with pytest.raises(ClientError) as exc:
        ssm.create_document(Name="Refused-doc", DocumentType="Session", **extra)
    got_code, message = error(exc)
    assert got_code == code
    assert fragment in message
    unchanged()


def test_duplicates_and_unknowns(ssm: Any, unchanged: Callable[[], None]) -> None:
    with pytest.raises(ClientError) as exc:
        ssm.create_document(Name=RUN_SHELL, Content=session_doc(), DocumentType="Session")
    assert error(exc) == (
        "DocumentAlreadyExists",
        f"Document with same name {RUN_SHELL} already exists",
    )
    current = ssm.get_document(Name=RUN_SHELL)
    with pytest.raises(ClientError) as exc:
        ssm.update_document(Name=RUN_SHELL, Content=current["Content"], DocumentVersion="$LATEST")
    assert error(exc)[0] == "DuplicateDocumentContent"
    # only the latest version can be updated
    ssm.create_document(Name="Two-versions", Content=session_doc(), DocumentType="Session")
    ssm.update_document(Name="Two-versions", Content=session_doc("16"))
    before = state(ssm)
    with pytest.raises(ClientError) as exc:
        ssm.update_document(Name="Two-versions", Content=session_doc("59"), DocumentVersion="1")
    assert error(exc) == (
        "InvalidDocumentVersion",
        "The document version is not valid or does not exist.",
    )
    assert state(ssm) == before
    ssm.delete_document(Name="Two-versions")
    for call in (
        lambda: ssm.get_document(Name="No-Such-Doc"),
        lambda: ssm.describe_document(Name="No-Such-Doc"),
        lambda: ssm.update_document(Name="No-Such-Doc", Content=session_doc()),
        lambda: ssm.delete_document(Name="No-Such-Doc"),
        lambda: ssm.list_document_versions(Name="No-Such-Doc"),
        lambda: ssm.update_document_default_version(Name="No-Such-Doc", DocumentVersion="1"),
        lambda: ssm.get_document(Name="arn:aws:ssm:eu-west-1:999999999999:document/X-doc"),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert error(exc) == ("InvalidDocument", "No matching value was found for Name.")
    for kw in ({"DocumentVersion": "99"}, {"VersionName": "nope"}):
        with pytest.raises(ClientError) as exc:
            ssm.get_document(Name=RUN_SHELL, **kw)
        assert error(exc)[0] == "InvalidDocumentVersion"
    with pytest.raises(ClientError) as exc:
        ssm.update_document_default_version(Name=RUN_SHELL, DocumentVersion="99")
    assert error(exc)[0] == "InvalidDocumentVersion"
    with pytest.raises(ClientError) as exc:
        ssm.delete_document(
            Name=RUN_SHELL,
            DocumentVersion=ssm.describe_document(Name=RUN_SHELL)["Document"]["DefaultVersion"],
        )
    assert error(exc)[0] == "InvalidDocumentOperation"
    unchanged()


def test_duplicate_version_name(ssm: Any) -> None:
    ssm.create_document(
        Name="Named-versions",
        Content=session_doc(),
        DocumentType="Session",
        VersionName="release-1",
    )
    try:
        with pytest.raises(ClientError) as exc:
            ssm.update_document(
                Name="Named-versions", Content=session_doc("40"), VersionName="release-1"
            )
        assert error(exc)[0] == "DuplicateDocumentVersionName"
        assert len(ssm.list_document_versions(Name="Named-versions")["DocumentVersions"]) == 1
    finally:
        ssm.delete_document(Name="Named-versions")


@pytest.mark.parametrize(
    ("call", "code", "fragment"),
    [
        (lambda s: s.list_documents(NextToken="not-a-token"), "InvalidNextToken", "token"),
        (
            lambda s: s.list_document_versions(Name=RUN_SHELL, NextToken="Zm9v"),
            "InvalidNextToken",
            "token",
        ),
        (
            lambda s: s.list_documents(Filters=[{"Key": "Colour", "Values": ["x"]}]),
            "InvalidFilterKey",
            "",
        ),
        (
            lambda s: s.list_documents(Filters=[{"Key": "Owner", "Values": ["Self", "Amazon"]}]),
            "ValidationException",
            "Owner",
        ),
        (
            lambda s: s.list_documents(MaxResults=51),
            "ValidationException",
            "Member must have value less than or equal to 50",
        ),
        (
            lambda s: s.create_document(
                Name="bad name!", Content=session_doc(), DocumentType="Session"
            ),
            "ValidationException",
            "1 validation error detected: Value 'bad name!' at 'name' failed to satisfy "
            "constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9_\\-.]{3,128}$",
        ),
        (
            lambda s: s.get_document(Name=RUN_SHELL, DocumentVersion="latest"),
            "ValidationException",
            "documentVersion",
        ),
        (
            lambda s: s.add_tags_to_resource(
                ResourceType="Document", ResourceId="No-Such-Doc", Tags=[{"Key": "a", "Value": "b"}]
            ),
            "InvalidResourceId",
            "",
        ),
        (
            lambda s: s.add_tags_to_resource(
                ResourceType="ManagedInstance",
                ResourceId="mi-0123456789abcdef0",
                Tags=[{"Key": "a", "Value": "b"}],
            ),
            "InvalidResourceId",
            "",
        ),
        (
            lambda s: s.list_tags_for_resource(ResourceType="PatchBaseline", ResourceId="pb-1"),
            "InvalidResourceType",
            "",
        ),
    ],
)
def test_bad_requests(
    ssm: Any, unchanged: Callable[[], None], call: Callable[[Any], Any], code: str, fragment: str
) -> None:
    with pytest.raises(ClientError) as exc:
        call(ssm)
    got, message = error(exc)
    assert got == code
    assert fragment in message
    unchanged()


# -- tags -------------------------------------------------------------------------------


def test_document_tags(ssm: Any) -> None:
    ssm.create_document(Name="Tagged-doc", Content=session_doc(), DocumentType="Session")
    try:
        ssm.add_tags_to_resource(
            ResourceType="Document",
            ResourceId="Tagged-doc",
            Tags=[{"Key": "env", "Value": "dev"}, {"Key": "owner", "Value": "ops"}],
        )
        ssm.add_tags_to_resource(
            ResourceType="Document", ResourceId="Tagged-doc", Tags=[{"Key": "env", "Value": "prod"}]
        )
        tags = ssm.list_tags_for_resource(ResourceType="Document", ResourceId="Tagged-doc")
        assert tags["TagList"] == [
            {"Key": "env", "Value": "prod"},
            {"Key": "owner", "Value": "ops"},
        ]
        ssm.remove_tags_from_resource(
            ResourceType="Document", ResourceId="Tagged-doc", TagKeys=["owner", "absent"]
        )
        tags = ssm.list_tags_for_resource(ResourceType="Document", ResourceId="Tagged-doc")
        assert tags["TagList"] == [{"Key": "env", "Value": "prod"}]
        assert ssm.describe_document(Name="Tagged-doc")["Document"]["Tags"] == tags["TagList"]
        before = state(ssm)
        with pytest.raises(ClientError) as exc:
            ssm.add_tags_to_resource(
                ResourceType="Document",
                ResourceId="Tagged-doc",
                Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(50)],
            )
        assert error(exc)[0] == "TooManyTagsError"
        assert state(ssm) == before
    finally:
        ssm.delete_document(Name="Tagged-doc")


# -- authorization ----------------------------------------------------------------------


def test_document_permissions_follow_tags(broker: Broker, ssm: Any) -> None:
    iam = broker.client("iam")
    iam.create_user(UserName="doc-reader")
    iam.put_user_policy(
        UserName="doc-reader",
        PolicyName="p",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["ssm:DescribeDocument", "ssm:GetDocument"],
                        "Resource": "*",
                        "Condition": {"StringEquals": {"aws:ResourceTag/team": "blue"}},
                    },
                    {"Effect": "Allow", "Action": "ssm:ListDocuments", "Resource": "*"},
                    {
                        "Effect": "Allow",
                        "Action": "ssm:CreateDocument",
                        "Resource": "*",
                        "Condition": {"StringEquals": {"ssm:DocumentType": "Command"}},
                    },
                ],
            }
        ),
    )
    key = iam.create_access_key(UserName="doc-reader")["AccessKey"]
    reader = broker.client("ssm", key=key["AccessKeyId"], secret=key["SecretAccessKey"])
    ssm.create_document(
        Name="Blue-doc",
        Content=session_doc(),
        DocumentType="Session",
        Tags=[{"Key": "team", "Value": "blue"}],
    )
    ssm.create_document(
        Name="Red-doc",
        Content=session_doc(),
        DocumentType="Session",
        Tags=[{"Key": "team", "Value": "red"}],
    )
    try:
        assert reader.describe_document(Name="Blue-doc")["Document"]["Name"] == "Blue-doc"
        with pytest.raises(ClientError) as exc:
            reader.describe_document(Name="Red-doc")
        assert error(exc)[0] == "AccessDeniedException"
        assert "ssm:DescribeDocument" in error(exc)[1]
        assert f"arn:aws:ssm:us-east-1:{ACCOUNT}:document/Red-doc" in error(exc)[1]
        # a missing document is AccessDenied too: no existence oracle
        with pytest.raises(ClientError) as exc:
            reader.describe_document(Name="Ghost-doc")
        assert error(exc)[0] == "AccessDeniedException"
        assert reader.list_documents(MaxResults=5)["DocumentIdentifiers"]
        with pytest.raises(ClientError) as exc:
            reader.create_document(Name="Reader-doc", Content=session_doc(), DocumentType="Session")
        assert error(exc)[0] == "AccessDeniedException"
        with pytest.raises(ClientError) as exc:
            reader.delete_document(Name="Blue-doc")
        assert error(exc)[0] == "AccessDeniedException"
    finally:
        ssm.delete_document(Name="Blue-doc")
        ssm.delete_document(Name="Red-doc")


# -- the aws CLI ------------------------------------------------------------------------


def test_aws_cli(broker: Broker, tmp_path: Path) -> None:
    path = tmp_path / "doc.yaml"
    path.write_text(PORT_YAML)
    created = broker.aws_json(
        "ssm",
        "create-document",
        "--name",
        "Cli-port",
        "--content",
        f"file://{path}",
        "--document-format",
        "YAML",
        "--document-type",
        "Session",
        "--tags",
        "Key=via,Value=cli",
    )
    desc = created["DocumentDescription"]
    assert desc["DocumentFormat"] == "YAML" and desc["Status"] == "Creating"
    assert desc["Parameters"][0]["DefaultValue"] == "5432"
    got = broker.aws_json("ssm", "get-document", "--name", "Cli-port")
    assert got["Content"] == PORT_YAML
    got = broker.aws_json("ssm", "get-document", "--name", "Cli-port", "--document-format", "JSON")
    assert json.loads(got["Content"])["properties"]["type"] == "LocalPortForwarding"
    listed = broker.aws_json("ssm", "list-documents", "--filters", "Key=Owner,Values=Amazon")
    assert sorted(d["Name"] for d in listed["DocumentIdentifiers"]) == AWS_OWNED
    path.write_text(PORT_YAML.replace("5432", "15432"))
    updated = broker.aws_json(
        "ssm",
        "update-document",
        "--name",
        "Cli-port",
        "--content",
        f"file://{path}",
        "--document-format",
        "YAML",
        "--document-version",
        "$LATEST",
    )
    assert updated["DocumentDescription"]["DocumentVersion"] == "2"
    versions = broker.aws_json("ssm", "list-document-versions", "--name", "Cli-port")
    assert len(versions["DocumentVersions"]) == 2
    tags = broker.aws_json(
        "ssm", "list-tags-for-resource", "--resource-type", "Document", "--resource-id", "Cli-port"
    )
    assert tags["TagList"] == [{"Key": "via", "Value": "cli"}]
    bad = broker.aws(
        "ssm",
        "update-document",
        "--name",
        "AWS-StartSSHSession",
        "--content",
        f"file://{path}",
        "--document-format",
        "YAML",
    )
    assert bad.returncode != 0 and "InvalidDocumentOperation" in bad.stderr
    missing = broker.aws("ssm", "describe-document", "--name", "No-Such-Doc")
    assert missing.returncode != 0
    assert "(InvalidDocument)" in missing.stderr
    path.write_text("schemaVersion: '1.0'\nsessionType: Port\nproperties: [\n")
    broken = broker.aws(
        "ssm",
        "create-document",
        "--name",
        "Cli-broken",
        "--content",
        f"file://{path}",
        "--document-format",
        "YAML",
        "--document-type",
        "Session",
    )
    assert broken.returncode != 0 and "InvalidDocumentContent" in broken.stderr
    broker.aws_json("ssm", "delete-document", "--name", "Cli-port")
    gone = broker.aws("ssm", "get-document", "--name", "Cli-port")
    assert gone.returncode != 0


# -- issue 15 item 2: brokers that seeded SSM-SessionManagerRunShell before -----------------


def _old_broker_seed(data_dir: Path, *, edit: bool) -> None:
    """What a broker before this change left in its store: the seeded copy and its marker."""
    from datetime import UTC, datetime

    from hatchway.server.ops.documents import _seed
    from hatchway.server.store import Store
    from hatchway.server.store import schema as t

    store = Store(f"sqlite:///{data_dir / 'hatchway.db'}")
    try:
        _seed(
            store,
            RUN_SHELL,
            ACCOUNT,
            sd.render_content(sd.default_preferences(), "JSON"),
            datetime.now(UTC),
        )
        store.meta_set("seeded:" + RUN_SHELL, "1")
        store.delete(t.meta, key="unseeded:" + RUN_SHELL)
        if edit:
            row = store.get(t.documents, name=RUN_SHELL)
            assert row is not None
            tags = [{"Key": "team", "Value": "ops"}]
            store.update(t.documents, {"name": RUN_SHELL}, {"data": {**row["data"], "tags": tags}})
    finally:
        store.close()


@pytest.mark.parametrize("edited", [False, True])
def test_a_seeded_never_edited_preferences_copy_goes_away(tmp_path: Path, edited: bool) -> None:
    from harness import start_broker, stop_broker

    data = tmp_path / "data"
    b = start_broker(data)
    stop_broker(b)
    _old_broker_seed(data, edit=edited)
    b = start_broker(data)
    try:
        ssm = b.client("ssm")
        if edited:  # an operator's copy (tagged here) stays
            assert ssm.describe_document(Name=RUN_SHELL)["Document"]["Owner"] == ACCOUNT
        else:
            with pytest.raises(ClientError) as exc:
                ssm.describe_document(Name=RUN_SHELL)
            assert error(exc)[0] == "InvalidDocument"
            content = sd.render_content(sd.default_preferences(), "JSON")
            ssm.create_document(Name=RUN_SHELL, Content=content, DocumentType="Session")
            stop_broker(b)
            b = start_broker(data)  # the migration runs once: a created copy stays
            assert b.client("ssm").describe_document(Name=RUN_SHELL)["Document"]
    finally:
        stop_broker(b)
