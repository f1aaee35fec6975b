"""The SigV4 check of the tests' AWS stand-ins (tests/support/sigv4.py) accepts what
botocore signs and refuses, with AWS's error type, whatever AWS would refuse."""

from __future__ import annotations

import datetime

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support.sigv4 import MESSAGES, parse_authorization, verify

HOST = "127.0.0.1:8123"
PATH = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke"
URL = f"http://{HOST}{PATH}"
BODY = b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":5,"messages":[]}'
KEYS: dict[str, tuple[str, str | None]] = {
    "AKIAPERMANENT": ("permanent-secret", None),
    "ASIASESSION": ("session-secret", "FwoGZXIvYXdzEJr//////////wEaDH+token=="),
}


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def signed(
    access_key: str = "AKIAPERMANENT",
    *,
    url: str = URL,
    body: bytes = BODY,
    region: str = "us-east-1",
    service: str = "bedrock",
    secret: str | None = None,
) -> dict[str, str]:
    """The headers botocore sends for a POST of *body* to *url*, Host included."""
    known_secret, token = KEYS.get(access_key, ("whatever", None))
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    credentials = Credentials(access_key, secret or known_secret, token)
    SigV4Auth(credentials, service, region).add_auth(request)
    return {"Host": HOST, "User-Agent": "Boto3/1.0", **dict(request.headers)}


def check(
    headers: dict[str, str],
    *,
    url: str = URL,
    body: bytes = BODY,
    when: datetime.datetime | None = None,
) -> tuple[bool, str, str | None]:
    return verify("POST", url, headers, body, KEYS, "us-east-1", "bedrock", when or now())


@pytest.mark.parametrize("access_key", ["AKIAPERMANENT", "ASIASESSION"])
def test_a_botocore_signed_request_verifies(access_key: str) -> None:
    assert check(signed(access_key)) == (True, "", access_key)


def test_a_path_with_an_unescaped_colon_verifies_when_signed_so() -> None:
    url = f"http://{HOST}/model/anthropic.claude-3-haiku-20240307-v1:0/invoke-with-response-stream"
    assert check(signed(url=url), url=url)[0]


def test_a_query_and_lower_case_header_names_verify() -> None:
    url = f"{URL}?b=2&a=1"
    headers = {name.lower(): value for name, value in signed(url=url).items()}
    assert check(headers, url=url)[0]


def test_unsigned_headers_may_change() -> None:
    headers = signed()
    headers["User-Agent"] = "something else"
    headers["X-Forwarded-For"] = "10.0.0.1"
    assert check(headers)[0]


def test_a_changed_signed_header_fails() -> None:
    headers = signed()
    assert "accept" in parse_authorization(headers["Authorization"]).signed_headers  # type: ignore[union-attr]
    headers["Accept"] = "text/plain"
    assert check(headers) == (False, "InvalidSignatureException", "AKIAPERMANENT")


def test_a_changed_host_port_fails() -> None:
    headers = signed()
    assert check(headers, url=URL.replace("8123", "8124"))[1] == "InvalidSignatureException"


def test_a_changed_body_byte_fails() -> None:
    assert check(signed(), body=BODY.replace(b"5", b"6"))[1] == "InvalidSignatureException"


def test_a_changed_path_fails() -> None:
    url = URL.replace("%3A", ":")
    assert check(signed(), url=url)[1] == "InvalidSignatureException"
    assert check(signed(), url=URL.replace("/invoke", "/converse"))[1] == (
        "InvalidSignatureException"
    )


@pytest.mark.parametrize(("region", "service"), [("eu-west-1", "bedrock"), ("us-east-1", "sts")])
def test_another_scope_fails(region: str, service: str) -> None:
    assert check(signed(region=region, service=service)) == (
        False,
        "InvalidSignatureException",
        "AKIAPERMANENT",
    )


def test_a_wrong_secret_fails() -> None:
    assert check(signed(secret="not-the-secret"))[1] == "InvalidSignatureException"


def test_an_unknown_key_fails() -> None:
    assert check(signed("AKIAUNKNOWN")) == (False, "UnrecognizedClientException", "AKIAUNKNOWN")


def test_a_missing_or_malformed_authorization_fails() -> None:
    headers = signed()
    del headers["Authorization"]
    assert check(headers) == (False, "MissingAuthenticationTokenException", None)
    headers["Authorization"] = "Bearer abc"
    assert check(headers) == (False, "IncompleteSignatureException", None)


def test_a_missing_date_fails() -> None:
    headers = signed()
    del headers["X-Amz-Date"]
    assert check(headers)[1] == "IncompleteSignatureException"


def test_a_signature_older_or_newer_than_five_minutes_fails() -> None:
    headers = signed()
    assert check(headers, when=now() + datetime.timedelta(minutes=4))[0]
    assert check(headers, when=now() + datetime.timedelta(minutes=6))[1] == (
        "InvalidSignatureException"
    )
    assert check(headers, when=now() - datetime.timedelta(minutes=6))[1] == (
        "InvalidSignatureException"
    )


def test_session_credentials_need_their_token_signed() -> None:
    headers = signed("ASIASESSION")
    wrong = {**headers, "X-Amz-Security-Token": "another-token"}
    assert check(wrong)[1] == "UnrecognizedClientException"
    missing = {k: v for k, v in headers.items() if k != "X-Amz-Security-Token"}
    assert check(missing)[1] == "UnrecognizedClientException"


def test_permanent_credentials_take_no_token() -> None:
    headers = {**signed(), "X-Amz-Security-Token": "stray"}
    assert check(headers)[1] == "UnrecognizedClientException"


def test_every_reason_has_aws_words() -> None:
    assert set(MESSAGES) >= {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
    }
