"""The plugin's botocore-free upgrade signing equals botocore's, and finds the same keys."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from hatchway.client.fastsign import StaticCredentials, sign_get, static_credentials

URL = "http://127.0.0.1:8080/v1/data-channel/alice-0123456789abcdef0?role=publish_subscribe"


def botocore_headers(url: str, host: str, creds: StaticCredentials, region: str) -> dict[str, str]:
    request = AWSRequest(method="GET", url=url, headers={"Host": host})
    SigV4Auth(
        Credentials(creds.access_key_id, creds.secret_access_key, creds.session_token),
        "ssmmessages",
        region,
    ).add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEJr//token+/="])
@pytest.mark.parametrize(
    "url",
    [
        URL,
        "https://ssmmessages.eu-west-1.amazonaws.com/v1/data-channel/s-1?role=publish_subscribe&b=2&a=%2F",
        "http://[::1]:9000/v1/data-channel/x",
    ],
)
def test_same_headers_as_botocore(url: str, token: str | None) -> None:
    creds = StaticCredentials("AKIAEXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", token)
    host = url.split("/")[2]
    theirs = botocore_headers(url, host, creds, "eu-west-1")
    when = datetime.strptime(theirs["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert sign_get(url, host, creds, "eu-west-1", now=when) == theirs


def test_environment_first_when_no_profile(tmp_path: Path) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "AKENV",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "tok",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
    }
    assert static_credentials("", env) == StaticCredentials("AKENV", "secret", "tok")
    # An explicit profile negates the environment, as in botocore.
    assert static_credentials("dev", env) is None


def test_profiles_from_files(tmp_path: Path) -> None:
    shared = tmp_path / "credentials"
    shared.write_text(
        "[default]\naws_access_key_id = AKDEF\naws_secret_access_key = s1\n"
        "[dev]\naws_access_key_id = AKDEV\naws_secret_access_key = s2\n"
    )
    config = tmp_path / "config"
    config.write_text(
        "[profile cfg]\naws_access_key_id = AKCFG\naws_secret_access_key = s3\n"
        "[profile role]\nrole_arn = arn:aws:iam::123456789012:role/x\nsource_profile = dev\n"
        "[profile sso]\nsso_session = corp\n"
        "[profile proc]\ncredential_process = /bin/true\n"
    )
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(shared), "AWS_CONFIG_FILE": str(config)}
    assert static_credentials("", env) == StaticCredentials("AKDEF", "s1")
    assert static_credentials("dev", env) == StaticCredentials("AKDEV", "s2")
    assert static_credentials("", {**env, "AWS_PROFILE": "dev"}) == StaticCredentials("AKDEV", "s2")
    assert static_credentials("cfg", env) == StaticCredentials("AKCFG", "s3")
    # Anything botocore resolves dynamically is left to botocore.
    for name in ("role", "sso", "proc", "missing"):
        assert static_credentials(name, env) is None


def test_the_plugin_imports_neither_botocore_nor_aiohttp() -> None:
    """Both cost ~100 ms or more to import, once per session: they stay off the start path."""
    code = (
        "import sys, hatchway.client.session_manager_plugin;"
        "print(sorted(m for m in ('botocore', 'boto3', 'aiohttp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
