"""AWS protocols against botocore's own serializers and parsers (what boto3 accepts)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from botocore.parsers import create_parser
from botocore.serialize import create_serializer

from hatchway.server.awswire import (
    load_service,
    operation,
    parse_json_body,
    parse_query_input,
    parse_query_params,
    parse_target,
    resolve_action,
    serialize_json_error,
    serialize_json_output,
    serialize_query_error,
    serialize_query_output,
    validate_input,
)
from hatchway.server.base.errors import ServiceError

UTC = dt.UTC
WHEN = dt.datetime(2026, 11, 27, 20, 31, 7, 123000, tzinfo=UTC)
WHEN_S = WHEN.replace(microsecond=0)
RID = "c5b0f1d6-0000-4000-8000-000000000001"


def op(service: str, name: str) -> Any:
    found = operation(service, name)
    assert found is not None, name
    return found


def json_request(service: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
    return create_serializer("json").serialize_to_request(params, op(service, name))


def query_form(service: str, name: str, params: dict[str, Any]) -> dict[str, str]:
    """botocore's Query body, through real form encoding (as the broker receives it)."""
    body = create_serializer("query").serialize_to_request(params, op(service, name))["body"]
    return dict(parse_qsl(urlencode(body), keep_blank_values=True))


def parse_response(protocol: str, model: Any, body: bytes, status: int = 200) -> Any:
    response = {"status_code": status, "headers": {}, "body": body}
    shape = model.output_shape if status < 300 else None
    return create_parser(protocol).parse(response, shape)


# --------------------------------------------------------------------------- models


def test_models_load_and_cache() -> None:
    assert load_service("ssm") is load_service("ssm")
    assert load_service("iam").metadata["protocol"] == "query"
    assert operation("ssm", "StartSession") is operation(load_service("ssm"), "StartSession")
    assert operation("ssm", "NoSuchThing") is None
    with pytest.raises(KeyError):
        load_service("ec2")


# --------------------------------------------------------------------------- JSON 1.1 input

JSON_INPUTS: list[tuple[str, dict[str, Any]]] = [
    (
        "StartSession",
        {
            "Target": "mi-0123456789abcdef0",
            "DocumentName": "AWS-StartPortForwardingSession",
            "Reason": "debugging",
            "Parameters": {"portNumber": ["22"], "localPortNumber": ["2222"]},
        },
    ),
    (
        "CreateDocument",
        {
            "Content": '{"schemaVersion": "1.0"}',
            "Name": "My-Session-Doc",
            "DocumentType": "Session",
            "DocumentFormat": "JSON",
            "Tags": [{"Key": "team", "Value": "ops"}, {"Key": "env", "Value": ""}],
        },
    ),
    (
        "DescribeSessions",
        {
            "State": "Active",
            "MaxResults": 20,
            "Filters": [
                {"key": "Target", "value": "mi-0123456789abcdef0"},
                {"key": "Owner", "value": "arn:aws:iam::123456789012:user/alice"},
            ],
        },
    ),
    (
        "CreateActivation",
        {
            "IamRole": "SSMServiceRole",
            "RegistrationLimit": 5,
            "ExpirationDate": WHEN,
            "Tags": [],
        },
    ),
    (
        "RegisterTaskWithMaintenanceWindow",
        {
            "WindowId": "mw-0123456789abcdef0",
            "TaskArn": "arn:aws:lambda:us-east-1:123456789012:function:f",
            "TaskType": "LAMBDA",
            "TaskInvocationParameters": {"Lambda": {"Payload": b"\x00\xffpayload"}},
            "Targets": [{"Key": "WindowTargetIds", "Values": ["t-1", "t-2"]}],
            "CutoffBehavior": "CONTINUE_TASK",
        },
    ),
]


@pytest.mark.parametrize(("name", "params"), JSON_INPUTS, ids=[n for n, _ in JSON_INPUTS])
def test_json_input_round_trip(name: str, params: dict[str, Any]) -> None:
    request = json_request("ssm", name, params)
    model = parse_target(request["headers"]["X-Amz-Target"], load_service("ssm"))
    assert model.name == name
    assert parse_json_body(model, request["body"]) == params
    validate_input(model, parse_json_body(model, request["body"]))


def test_json_input_ignores_unknown_members_and_nulls() -> None:
    body = b'{"Target": "mi-1", "Bogus": {"x": 1}, "Reason": null}'
    assert parse_json_body(op("ssm", "StartSession"), body) == {"Target": "mi-1"}


def test_json_input_timestamps_from_iso_and_epoch() -> None:
    model = op("ssm", "CreateActivation")
    iso = parse_json_body(model, b'{"IamRole": "r", "ExpirationDate": "2026-11-27T20:31:07Z"}')
    epoch = parse_json_body(model, b'{"IamRole": "r", "ExpirationDate": 1795811467}')
    assert iso["ExpirationDate"] == epoch["ExpirationDate"] == WHEN_S
    assert iso["ExpirationDate"].tzinfo is not None


def test_empty_body_is_empty_object() -> None:
    assert parse_json_body(op("ssm", "DescribeSessions"), b"") == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"Target": 123}', "NUMBER_VALUE cannot be converted to String"),
        (b'{"Target": true}', "TRUE_VALUE cannot be converted to String"),
        (b'{"Target": 1.5}', "DECIMAL_VALUE cannot be converted to String"),
        (b'{"Target": {"a": 1}}', "Start of structure or map found where not expected"),
        (b'{"Target": ["a"]}', "Start of list found where not expected"),
        (b'{"Parameters": ["a"]}', "Start of list found where not expected"),
        (b'{"Parameters": "a"}', "Unexpected field type"),
        (b'{"Parameters": {"k": "v"}}', "Unexpected field type"),
        (b'{"Parameters": {"k": [1]}}', "NUMBER_VALUE cannot be converted to String"),
        (b"[1, 2]", "Start of list found where not expected"),
        (b'"text"', "Unexpected field type"),
    ],
)
def test_json_input_type_errors(body: bytes, message: str) -> None:
    with pytest.raises(ServiceError) as caught:
        parse_json_body(op("ssm", "StartSession"), body)
    assert (caught.value.code, caught.value.message) == ("SerializationException", message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"MaxResults": "5"}', "STRING_VALUE cannot be converted to Integer"),
        (b'{"MaxResults": false}', "FALSE_VALUE cannot be converted to Integer"),
        (b'{"MaxResults": 2.5}', "DECIMAL_VALUE cannot be converted to Integer"),
        (b'{"MaxResults": 4294967296}', "NUMBER_VALUE cannot be converted to Integer"),
        (b'{"Filters": {"key": "Owner"}}', "Start of structure or map found where not expected"),
        (b'{"Filters": 3}', "Unexpected field type"),
        (b'{"Filters": [["x"]]}', "Start of list found where not expected"),
    ],
)
def test_json_input_type_errors_numbers_and_lists(body: bytes, message: str) -> None:
    with pytest.raises(ServiceError) as caught:
        parse_json_body(op("ssm", "DescribeSessions"), body)
    assert (caught.value.code, caught.value.message) == ("SerializationException", message)


def test_json_input_booleans_blobs_and_malformed() -> None:
    get_parameters = op("ssm", "GetParameters")
    with pytest.raises(ServiceError, match="Unexpected token received from parser"):
        parse_json_body(get_parameters, b'{"Names": ["a"], "WithDecryption": "true"}')
    with pytest.raises(ServiceError, match="NUMBER_VALUE cannot be converted to Boolean"):
        parse_json_body(get_parameters, b'{"Names": ["a"], "WithDecryption": 1}')
    register = op("ssm", "RegisterTaskWithMaintenanceWindow")
    blob = b'{"TaskInvocationParameters": {"Lambda": {"Payload": %s}}}'
    with pytest.raises(ServiceError, match="only base-64-encoded strings are convertible"):
        parse_json_body(register, blob % b"5")
    with pytest.raises(ServiceError, match="expected a multiple of 4 bytes but found: 5"):
        parse_json_body(register, blob % b'"abcde"')
    for bad in (b"{", b"\xff\xfe", b'{"a": }'):
        with pytest.raises(ServiceError) as caught:
            parse_json_body(get_parameters, bad)
        assert caught.value.code == "SerializationException"


@pytest.mark.parametrize("header", [None, "", "AmazonSSM.NoSuchOp", "AWSIE.StartSession", "x"])
def test_unknown_target(header: str | None) -> None:
    with pytest.raises(ServiceError) as caught:
        parse_target(header, load_service("ssm"))
    assert caught.value.code == "UnknownOperationException"


# --------------------------------------------------------------------------- JSON 1.1 output

JSON_OUTPUTS: list[tuple[str, dict[str, Any]]] = [
    (
        "StartSession",
        {"SessionId": "alice-0a1b", "TokenValue": "tok", "StreamUrl": "wss://x/y?z=1&w=<2>"},
    ),
    (
        "DescribeSessions",
        {
            "Sessions": [
                {
                    "SessionId": "alice-0a1b",
                    "Target": "mi-0123456789abcdef0",
                    "Status": "Connected",
                    "StartDate": WHEN,
                    "Owner": "arn:aws:iam::123456789012:user/alice",
                    "OutputUrl": {"S3OutputUrl": "s3://b/k"},
                    "MaxSessionDuration": "60",
                },
                {"SessionId": "bob-1", "Status": "Terminated", "EndDate": WHEN_S},
            ],
            "NextToken": "n",
        },
    ),
    ("DescribeSessions", {"Sessions": []}),
    (
        "CreateDocument",
        {
            "DocumentDescription": {
                "Name": "doc",
                "CreatedDate": WHEN,
                "Status": "Creating",
                "Parameters": [{"Name": "p", "Type": "String", "DefaultValue": "v"}],
                "PlatformTypes": ["Linux", "MacOS"],
                "Tags": [],
                "AttachmentsInformation": [],
                "Requires": [{"Name": "r", "Version": "1"}],
            }
        },
    ),
    (
        "DescribeInstanceInformation",
        {
            "InstanceInformationList": [
                {
                    "InstanceId": "mi-0123456789abcdef0",
                    "PingStatus": "Online",
                    "LastPingDateTime": WHEN,
                    "IsLatestVersion": False,
                    "AssociationOverview": {
                        "DetailedStatus": "Success",
                        "InstanceAssociationStatusAggregatedCount": {"Success": 3, "Failed": 0},
                    },
                }
            ]
        },
    ),
    (
        "GetAutomationExecution",
        {
            "AutomationExecution": {
                "AutomationExecutionId": "e",
                "Parameters": {"InstanceId": ["i-1", "i-2"], "Empty": []},
                "Outputs": {},
            }
        },
    ),
]


@pytest.mark.parametrize(("name", "data"), JSON_OUTPUTS, ids=[n for n, _ in JSON_OUTPUTS])
def test_json_output_parsed_by_botocore(name: str, data: dict[str, Any]) -> None:
    model = op("ssm", name)
    body = serialize_json_output(model, data)
    parsed = parse_response("json", model, body)
    parsed.pop("ResponseMetadata", None)
    assert parsed == data


def test_json_output_drops_none_and_unknown_members() -> None:
    model = op("ssm", "StartSession")
    body = serialize_json_output(model, {"SessionId": "s", "TokenValue": None, "Secret": "x"})
    assert json.loads(body) == {"SessionId": "s"}
    assert serialize_json_output(op("ssm", "DeleteDocument"), {}) == b"{}"


def test_json_output_timestamps_are_epoch_seconds() -> None:
    model = op("ssm", "DescribeSessions")
    naive = WHEN.replace(tzinfo=None)
    body = serialize_json_output(model, {"Sessions": [{"StartDate": naive}]})
    assert json.loads(body)["Sessions"][0]["StartDate"] == pytest.approx(WHEN.timestamp())


def test_json_error_parsed_by_botocore() -> None:
    err = ServiceError(
        "InvalidDocument", "The document is 'bad' & <odd>", extra={"Reason": "x", "__type": "no"}
    )
    status, headers, body = serialize_json_error(err)
    assert status == 400
    assert headers["Content-Type"] == "application/x-amz-json-1.1"
    document = json.loads(body)
    assert document["__type"] == "InvalidDocument"
    assert document["message"] == document["Message"] == err.message
    assert document["Reason"] == "x"
    parsed = create_parser("json").parse(
        {"status_code": status, "headers": headers, "body": body}, None
    )
    assert parsed["Error"]["Code"] == "InvalidDocument"
    assert parsed["Error"]["Message"] == err.message


# --------------------------------------------------------------------------- Query input

QUERY_INPUTS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "iam",
        "CreatePolicy",
        {
            "PolicyName": "ssm-start",
            "Path": "/hatchway/",
            "PolicyDocument": json.dumps({"Version": "2012-10-17", "Statement": []}),
            "Description": "Start sessions & more",
            "Tags": [{"Key": "team", "Value": "ops"}, {"Key": "Größe", "Value": "a b:c"}],
        },
    ),
    (
        "iam",
        "AttachUserPolicy",
        {"UserName": "alice", "PolicyArn": "arn:aws:iam::123456789012:policy/ssm-start"},
    ),
    ("iam", "TagUser", {"UserName": "alice", "Tags": [{"Key": "k", "Value": "v"}]}),
    ("iam", "TagUser", {"UserName": "alice", "Tags": []}),
    ("iam", "CreateAccessKey", {"UserName": "alice"}),
    ("iam", "CreateAccessKey", {}),
    ("iam", "ListUsers", {"PathPrefix": "/", "Marker": "m", "MaxItems": 100}),
    (
        "iam",
        "UpdateAccountPasswordPolicy",
        {"MinimumPasswordLength": 14, "RequireSymbols": True, "AllowUsersToChangePassword": False},
    ),
    (
        "sts",
        "AssumeRole",
        {
            "RoleArn": "arn:aws:iam::123456789012:role/Ops",
            "RoleSessionName": "alice-session",
            "PolicyArns": [
                {"arn": "arn:aws:iam::123456789012:policy/a"},
                {"arn": "arn:aws:iam::123456789012:policy/b"},
            ],
            "Tags": [{"Key": "project", "Value": "hatchway"}],
            "TransitiveTagKeys": ["project"],
            "DurationSeconds": 3600,
            "ProvidedContexts": [{"ProviderArn": "arn:aws:iam::aws:contextProvider/x"}],
        },
    ),
    ("sts", "GetCallerIdentity", {}),
]


@pytest.mark.parametrize(
    ("service", "name", "params"), QUERY_INPUTS, ids=[f"{s}-{n}" for s, n, _ in QUERY_INPUTS]
)
def test_query_input_round_trip(service: str, name: str, params: dict[str, Any]) -> None:
    form = query_form(service, name, params)
    action, version = parse_query_params(form)
    model = resolve_action(load_service(service), action, version)
    assert model.name == name
    assert parse_query_input(model, form) == params
    validate_input(model, params, code="ValidationError")


def test_query_input_ignores_unknown_and_signing_parameters() -> None:
    form = {
        "Action": "ListUsers",
        "Version": "2010-05-08",
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "Unknown.member.1": "x",
        "MaxItems": "5",
    }
    assert parse_query_input(op("iam", "ListUsers"), form) == {"MaxItems": 5}


def test_query_input_lists_out_of_order_and_timestamps() -> None:
    form = {
        "TransitiveTagKeys.member.2": "b",
        "TransitiveTagKeys.member.10": "c",
        "TransitiveTagKeys.member.1": "a",
        "RoleArn": "arn",
    }
    parsed = parse_query_input(op("sts", "AssumeRole"), form)
    assert parsed["TransitiveTagKeys"] == ["a", "b", "c"]
    model = op("iam", "GetServiceLastAccessedDetailsWithEntities")
    assert parse_query_input(model, {"JobId": "j", "ServiceNamespace": "ssm"})["JobId"] == "j"


@pytest.mark.parametrize(
    ("form", "message"),
    [
        (
            {"MaxItems": "abc"},
            "1 validation error detected: Value 'abc' at 'maxItems' failed to satisfy "
            "constraint: Member must be of type integer",
        ),
        (
            {"MaxItems": "99999999999"},
            "1 validation error detected: Value '99999999999' at 'maxItems' failed to satisfy "
            "constraint: Member must be of type integer",
        ),
    ],
)
def test_query_input_type_errors(form: dict[str, str], message: str) -> None:
    with pytest.raises(ServiceError) as caught:
        parse_query_input(op("iam", "ListUsers"), form)
    assert (caught.value.code, caught.value.message) == ("ValidationError", message)


def test_query_input_boolean_errors_collect() -> None:
    form = {"RequireSymbols": "yes", "MinimumPasswordLength": "1.5"}
    with pytest.raises(ServiceError) as caught:
        parse_query_input(op("iam", "UpdateAccountPasswordPolicy"), form)
    assert caught.value.message.startswith("2 validation errors detected: ")
    assert "'minimumPasswordLength'" in caught.value.message
    assert "Value 'yes' at 'requireSymbols'" in caught.value.message


def test_query_action_and_version() -> None:
    with pytest.raises(ServiceError) as caught:
        parse_query_params({"Version": "2010-05-08"})
    assert caught.value.code == "MissingAction"
    assert parse_query_params({"Action": "ListUsers"}) == ("ListUsers", None)
    iam = load_service("iam")
    assert resolve_action(iam, "ListUsers", None).name == "ListUsers"
    for action, version in (("Nope", "2010-05-08"), ("ListUsers", "2011-06-15")):
        with pytest.raises(ServiceError) as caught:
            resolve_action(iam, action, version)
        assert caught.value.code == "InvalidAction"
        assert caught.value.message == f"Could not find operation {action} for version {version}"


# --------------------------------------------------------------------------- Query output

USER = {
    "Path": "/",
    "UserName": "alice",
    "UserId": "AIDAEXAMPLE",
    "Arn": "arn:aws:iam::123456789012:user/alice",
    "CreateDate": WHEN_S,
    "PasswordLastUsed": WHEN_S,
    "PermissionsBoundary": {
        "PermissionsBoundaryType": "Policy",
        "PermissionsBoundaryArn": "arn:aws:iam::123456789012:policy/b",
    },
    "Tags": [{"Key": "team", "Value": "ops & <dev>"}],
}

QUERY_OUTPUTS: list[tuple[str, str, dict[str, Any]]] = [
    ("iam", "ListUsers", {"Users": [USER, {**USER, "UserName": "bob", "Tags": []}]}),
    ("iam", "ListUsers", {"Users": [], "IsTruncated": True, "Marker": "next"}),
    (
        "iam",
        "CreateAccessKey",
        {
            "AccessKey": {
                "UserName": "alice",
                "AccessKeyId": "AKIAEXAMPLE",
                "Status": "Active",
                "SecretAccessKey": "secret/+=",
                "CreateDate": WHEN_S,
            }
        },
    ),
    ("iam", "GetAccountSummary", {"SummaryMap": {"Users": 2, "Policies": 0}}),
    ("iam", "GetAccountSummary", {"SummaryMap": {}}),
    (
        "iam",
        "GetCredentialReport",
        {"Content": b"user,arn\n\x00\xff", "ReportFormat": "text/csv", "GeneratedTime": WHEN_S},
    ),
    ("iam", "ListUserTags", {"Tags": [], "IsTruncated": False}),
    (
        "iam",
        "CreatePolicy",
        {
            "Policy": {
                "PolicyName": "p",
                "DefaultVersionId": "v1",
                "AttachmentCount": 0,
                "IsAttachable": True,
                "CreateDate": WHEN_S,
                "UpdateDate": WHEN_S,
                "Tags": [{"Key": "a", "Value": ""}],
            }
        },
    ),
    (
        "sts",
        "AssumeRole",
        {
            "Credentials": {
                "AccessKeyId": "ASIAEXAMPLE",
                "SecretAccessKey": "s",
                "SessionToken": "t",
                "Expiration": WHEN_S,
            },
            "AssumedRoleUser": {
                "AssumedRoleId": "AROA:alice",
                "Arn": "arn:aws:sts::123456789012:assumed-role/Ops/alice",
            },
            "PackedPolicySize": 6,
            "SourceIdentity": "alice",
        },
    ),
    (
        "sts",
        "GetCallerIdentity",
        {
            "UserId": "AIDAEXAMPLE",
            "Account": "123456789012",
            "Arn": "arn:aws:iam::123456789012:user/alice",
        },
    ),
]


@pytest.mark.parametrize(
    ("service", "name", "data"), QUERY_OUTPUTS, ids=[f"{s}-{n}" for s, n, _ in QUERY_OUTPUTS]
)
def test_query_output_parsed_by_botocore(service: str, name: str, data: dict[str, Any]) -> None:
    model = op(service, name)
    body = serialize_query_output(model, data, RID)
    parsed = parse_response("query", model, body)
    assert parsed.pop("ResponseMetadata")["RequestId"] == RID
    assert parsed == data
    namespace = load_service(service).metadata["xmlNamespace"]
    assert body.startswith(f'<{name}Response xmlns="{namespace}"><{name}Result>'.encode())


def test_query_output_format_details() -> None:
    body = serialize_query_output(
        op("iam", "ListUsers"), {"Users": [USER], "IsTruncated": False}, RID
    )
    text = body.decode()
    assert "<CreateDate>2026-11-27T20:31:07Z</CreateDate>" in text
    assert "<IsTruncated>false</IsTruncated>" in text
    assert "<Users><member><Path>/</Path>" in text
    assert "ops &amp; &lt;dev&gt;" in text
    truncated = serialize_query_output(
        op("iam", "ListUsers"), {"Users": [{"CreateDate": WHEN}]}, RID
    )
    assert b"<CreateDate>2026-11-27T20:31:07Z</CreateDate>" in truncated
    summary = serialize_query_output(
        op("iam", "GetAccountSummary"), {"SummaryMap": {"Users": 1}}, RID
    )
    assert b"<SummaryMap><entry><key>Users</key><value>1</value></entry></SummaryMap>" in summary


def test_query_output_without_output_shape() -> None:
    model = op("iam", "AttachUserPolicy")
    body = serialize_query_output(model, {}, RID)
    assert body == (
        b'<AttachUserPolicyResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">'
        b"<ResponseMetadata><RequestId>" + RID.encode() + b"</RequestId></ResponseMetadata>"
        b"</AttachUserPolicyResponse>"
    )
    parsed = create_parser("query").parse(
        {"status_code": 200, "headers": {}, "body": body}, model.output_shape
    )
    assert parsed["ResponseMetadata"]["RequestId"] == RID


@pytest.mark.parametrize("sender", [True, False])
def test_query_error_parsed_by_botocore(sender: bool) -> None:
    err = ServiceError(
        "NoSuchEntity", "The user with name <bob> & co cannot be found.", 404, sender=sender
    )
    status, headers, body = serialize_query_error(err, RID, service=load_service("iam"))
    assert (status, headers["Content-Type"]) == (404, "text/xml")
    assert body.startswith(b'<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">')
    assert (b"<Type>Sender</Type>" in body) is sender
    assert (b"<Type>Receiver</Type>" in body) is not sender
    parsed = create_parser("query").parse(
        {"status_code": status, "headers": headers, "body": body}, None
    )
    assert parsed["Error"]["Code"] == "NoSuchEntity"
    assert parsed["Error"]["Message"] == err.message
    assert parsed["Error"]["Type"] == ("Sender" if sender else "Receiver")
    assert parsed["ResponseMetadata"]["RequestId"] == RID


def test_query_error_without_service_has_no_namespace() -> None:
    _, _, body = serialize_query_error(ServiceError("Throttling", "Rate exceeded"), RID)
    assert body.startswith(b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>")
