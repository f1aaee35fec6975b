"""The SigV4 check of the tests' AWS stand-ins (tests/support/sigv4.py) accepts what
botocore signs and refuses, with AWS's error type, whatever AWS would refuse; the Bedrock
stand-in (tests/bedrock_server.py) refuses what Bedrock refuses, and its STS issues
credentials that botocore's clients and credential chain take and that expire."""

from __future__ import annotations

import base64
import datetime
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.integration.bedrock_mock import BedrockMock, bedrock_mock
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


# --- the Bedrock stand-in (tests/bedrock_server.py) over HTTP --------------------------

API_KEY = "bedrock-api-key-1"
ROLE = "arn:aws:iam::111122223333:role/gateway"


@pytest.fixture(autouse=True)
def _no_aws_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's clients here see no AWS configuration of the machine (a bearer token in
    the environment would even replace SigV4)."""
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))


@pytest.fixture(scope="module")
def mock() -> Iterator[BedrockMock]:
    credentials = [
        {"access_key_id": "AKIAPERMANENT", "secret_access_key": "permanent-secret"},
        {
            "access_key_id": "ASIASESSION",
            "secret_access_key": "session-secret",
            "session_token": KEYS["ASIASESSION"][1],
        },
    ]
    env = {"BEDROCK_MOCK_CREDENTIALS": json.dumps(credentials), "BEDROCK_MOCK_API_KEY": API_KEY}
    with bedrock_mock(env) as running:
        yield running


def client(mock: BedrockMock, service: str, key: str, secret: str, token: str | None = None) -> Any:
    return botocore.session.Session().create_client(
        service,
        endpoint_url=mock.url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(retries={"max_attempts": 1}),
    )


def converse(runtime: Any, model: str = "meta.llama3-8b-instruct-v1:0") -> dict[str, Any]:
    messages = [{"role": "user", "content": [{"text": "hi"}]}]
    return runtime.converse(modelId=model, messages=messages)  # type: ignore[no-any-return]


def bearer(mock: BedrockMock, path: str, body: Any, key: str = API_KEY) -> httpx.Response:
    return httpx.post(f"{mock.url}{path}", json=body, headers={"Authorization": f"Bearer {key}"})


def invoke_body(**extra: Any) -> dict[str, Any]:
    return {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


def error_type(response: httpx.Response) -> str:
    return response.headers["x-amzn-errortype"].split(":", 1)[0]


def test_botocore_clients_are_served(mock: BedrockMock) -> None:
    runtime = client(
        mock, "bedrock-runtime", "ASIASESSION", "session-secret", KEYS["ASIASESSION"][1]
    )
    answer = converse(runtime)
    assert answer["output"]["message"]["content"] == [{"text": "Echo: hi"}]
    invoked = runtime.invoke_model(
        modelId=PATH.split("/")[2].replace("%3A", ":"), body=json.dumps(invoke_body())
    )
    assert json.loads(invoked["body"].read())["content"][0]["text"] == "Echo: hi"
    assert invoked["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-output-token-count"] == "2"
    seen = mock.requests()[-2:]
    assert [r["auth"] for r in seen] == ["sigv4:ASIASESSION"] * 2
    assert seen[1]["path"] == PATH
    assert seen[1]["headers"]["x-amz-security-token"] == KEYS["ASIASESSION"][1]


def test_wrong_signatures_are_refused_as_aws_does(mock: BedrockMock) -> None:
    with pytest.raises(ClientError) as refused:
        converse(client(mock, "bedrock-runtime", "AKIAPERMANENT", "wrong-secret"))
    assert refused.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as unknown:
        converse(client(mock, "bedrock-runtime", "AKIAUNKNOWN", "x"))
    assert unknown.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert [r["auth"] for r in mock.requests()[-2:]] == [
        "rejected:InvalidSignatureException",
        "rejected:UnrecognizedClientException",
    ]


def test_the_api_key_is_a_bearer_token(mock: BedrockMock) -> None:
    assert bearer(mock, "/model/anthropic.m/invoke", invoke_body()).status_code == 200
    assert mock.requests()[-1]["auth"] == "bearer"
    wrong = bearer(mock, "/model/anthropic.m/invoke", invoke_body(), key="guess")
    assert (wrong.status_code, error_type(wrong)) == (403, "UnrecognizedClientException")
    assert wrong.json() == {"message": MESSAGES["UnrecognizedClientException"]}
    missing = httpx.post(f"{mock.url}/model/anthropic.m/invoke", json=invoke_body())
    assert (missing.status_code, error_type(missing)) == (
        403,
        "MissingAuthenticationTokenException",
    )


def test_credentials_can_be_added_and_the_logs_reset(mock: BedrockMock) -> None:
    mock.add_credentials("AKIALATER", "later-secret")
    assert converse(client(mock, "bedrock-runtime", "AKIALATER", "later-secret"))["stopReason"]
    mock.reset()
    assert mock.requests() == [] and mock.sts_calls() == []


@pytest.mark.parametrize(
    ("body", "model", "says"),
    [
        (
            invoke_body(anthropic_beta=["prompt-caching-2024-07-31"]),
            "anthropic.m",
            "invalid beta flag",
        ),
        (invoke_body(stream=True), "anthropic.m", "stream: Extra inputs are not permitted"),
        (invoke_body(model="claude"), "anthropic.m", "model: Extra inputs are not permitted"),
        (invoke_body(anthropic_version="2023-06-01"), "anthropic.m", "anthropic_version"),
        ({"anthropic_version": "bedrock-2023-05-31", "messages": []}, "anthropic.m", "max_tokens"),
        (invoke_body(), "meta.llama3", "model identifier"),
    ],
)
def test_invoke_bodies_are_validated(mock: BedrockMock, body: Any, model: str, says: str) -> None:
    response = bearer(mock, f"/model/{model}/invoke", body)
    assert (response.status_code, error_type(response)) == (400, "ValidationException")
    assert says in response.json()["message"]


def converse_body(*roles: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": role, "content": [{"text": f"turn {i}"}]} for i, role in enumerate(roles)]
    return {"messages": messages, **extra}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (converse_body("user", inferenceConfig={"maxTokens": "ten"}), "Invalid type for parameter"),
        (converse_body("user", stream=True), "Unknown parameter in input"),
        (converse_body("user", "user"), "must alternate between user and assistant"),
        (converse_body("assistant"), "must start with a user message"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"image": {"format": "png", "source": {"bytes": "%%"}}}],
                    }
                ]
            },
            "base64",
        ),
    ],
)
def test_converse_bodies_are_validated(mock: BedrockMock, body: Any, says: str) -> None:
    response = bearer(mock, "/model/meta.llama3/converse", body)
    assert (response.status_code, error_type(response)) == (400, "ValidationException")
    assert says in response.json()["message"]


def test_converse_takes_base64_blobs(mock: BedrockMock) -> None:
    image = {"format": "png", "source": {"bytes": base64.b64encode(b"\x89PNG").decode()}}
    body = {"messages": [{"role": "user", "content": [{"text": "look"}, {"image": image}]}]}
    response = bearer(mock, "/model/meta.llama3/converse-stream", body)
    assert response.status_code == 200, response.text


def test_unknown_operations_are_not_found(mock: BedrockMock) -> None:
    for path in ("/model/anthropic.m/count-tokens", "/v1/messages", "/model/a/b/invoke"):
        response = bearer(mock, path, invoke_body())
        assert (response.status_code, error_type(response)) == (404, "UnknownOperationException")


def test_a_throttled_model_answers_429(mock: BedrockMock) -> None:
    response = bearer(mock, "/model/anthropic.throttle/invoke", invoke_body())
    assert (response.status_code, error_type(response)) == (429, "ThrottlingException")
    assert "Too many requests" in response.json()["message"]


# --- its STS -------------------------------------------------------------------------


def test_assume_role_issues_credentials_bedrock_then_accepts(mock: BedrockMock) -> None:
    sts = client(mock, "sts", "AKIAPERMANENT", "permanent-secret")
    before = datetime.datetime.now(datetime.UTC)
    answer = sts.assume_role(RoleArn=ROLE, RoleSessionName="gw-1")
    issued = answer["Credentials"]
    assert issued["AccessKeyId"].startswith("ASIA")
    lasts = issued["Expiration"] - before
    assert datetime.timedelta(seconds=898) < lasts <= datetime.timedelta(seconds=901)
    assert answer["AssumedRoleUser"]["Arn"] == "arn:aws:sts::111122223333:assumed-role/gateway/gw-1"
    runtime = client(
        mock,
        "bedrock-runtime",
        issued["AccessKeyId"],
        issued["SecretAccessKey"],
        issued["SessionToken"],
    )
    assert converse(runtime)["stopReason"] == "end_turn"
    assert mock.requests()[-1]["auth"] == f"sigv4:{issued['AccessKeyId']}"
    call = mock.sts_calls()[-1]
    assert call["action"] == "AssumeRole"
    assert (call["role_arn"], call["session_name"]) == (ROLE, "gw-1")
    assert call["access_key_id"] == issued["AccessKeyId"]


def test_assume_role_needs_a_valid_signature(mock: BedrockMock) -> None:
    with pytest.raises(ClientError) as refused:
        client(mock, "sts", "AKIAUNKNOWN", "x").assume_role(RoleArn=ROLE, RoleSessionName="gw")
    assert refused.value.response["Error"]["Code"] == "InvalidClientTokenId"
    with pytest.raises(ClientError) as wrong:
        client(mock, "sts", "AKIAPERMANENT", "wrong").assume_role(
            RoleArn=ROLE, RoleSessionName="gw"
        )
    assert wrong.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_the_web_identity_chain_gets_credentials_from_it(
    mock: BedrockMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6Z3c6Z3cifQ.c2ln")
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE)
    monkeypatch.setenv("AWS_ROLE_SESSION_NAME", "gateway-pod")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", mock.url)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    frozen = botocore.session.Session().get_credentials().get_frozen_credentials()
    assert frozen.access_key.startswith("ASIA") and frozen.token
    call = mock.sts_calls()[-1]
    assert call["action"] == "AssumeRoleWithWebIdentity"
    assert call["web_identity_token"] == token.read_text()
    assert (call["role_arn"], call["session_name"]) == (ROLE, "gateway-pod")
    runtime = client(mock, "bedrock-runtime", frozen.access_key, frozen.secret_key, frozen.token)
    assert converse(runtime)["stopReason"] == "end_turn"


def test_web_identity_needs_its_token(mock: BedrockMock) -> None:
    form = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": ROLE}
    response = httpx.post(mock.url, data={**form, "RoleSessionName": "gw"})
    assert response.status_code == 400
    assert "<Code>ValidationError</Code>" in response.text
    assert "webIdentityToken" in response.text
    assert mock.sts_calls()[-1]["error"] == "ValidationError"


def test_issued_credentials_expire() -> None:
    with bedrock_mock(
        {
            "STS_MOCK_DURATION": "1",
            "BEDROCK_MOCK_CREDENTIALS": json.dumps(
                [{"access_key_id": "AKIAPERMANENT", "secret_access_key": "permanent-secret"}]
            ),
        }
    ) as running:
        sts = client(running, "sts", "AKIAPERMANENT", "permanent-secret")
        issued = sts.assume_role(RoleArn=ROLE, RoleSessionName="short")["Credentials"]
        time.sleep(1.5)
        runtime = client(
            running,
            "bedrock-runtime",
            issued["AccessKeyId"],
            issued["SecretAccessKey"],
            issued["SessionToken"],
        )
        with pytest.raises(ClientError) as expired:
            converse(runtime)
        assert expired.value.response["Error"]["Code"] == "ExpiredTokenException"
        assert expired.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert running.requests()[-1]["auth"] == "rejected:ExpiredTokenException"
