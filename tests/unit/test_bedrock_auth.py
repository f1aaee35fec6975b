"""SigV4 as the gateway signs a Bedrock request: recomputed by the test's verifier (the
canonical request botocore builds from what was sent), over the final body, with the
session token; what AWS's refusals make of the credentials in hand."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from filterproxy.extensions.bedrock.auth import BearerAuthorizer, SigV4Authorizer
from filterproxy.extensions.bedrock.config import AwsCredentials, BedrockCluster
from filterproxy.filters.credentials import Fetched
from filterproxy.http.headers import Headers
from tests.support.sigv4 import verify

pytest.importorskip("botocore")

KEY, SECRET, TOKEN = "ASIAEXAMPLE000000001", "secret/with+chars", "session-token-value"


def signer(token: str | None = TOKEN) -> SigV4Authorizer:
    option = BedrockCluster(
        "bedrock",
        "eu-west-3",
        AwsCredentials(access_key_id=KEY, secret_access_key=SECRET, session_token=token),
    )
    authorizer = SigV4Authorizer(option, Clock())

    def run(fetch: Callable[[], Fetched[Any]]) -> defer.Deferred[Fetched[Any]]:
        return defer.succeed(fetch())

    authorizer.credential.run = run
    assert authorizer.ready() is not None  # fetched now (synchronously here)
    assert authorizer.ready() is None
    return authorizer


def signed(authorizer: SigV4Authorizer, body: bytes, path: str) -> tuple[str, Headers]:
    url = f"http://127.0.0.1:4567{path}"
    headers = Headers(
        [("host", "127.0.0.1:4567"), ("content-type", "application/json"), ("x-request-id", "r1")]
    )
    authorizer.authorize("POST", url, headers, body)
    return url, headers


@pytest.mark.parametrize("token", [TOKEN, None])
def test_a_signed_request_verifies_and_a_changed_one_does_not(token: str | None) -> None:
    authorizer = signer(token)
    body = b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":8,"messages":[]}'
    path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke"
    url, headers = signed(authorizer, body, path)
    assert headers.get("authorization", "").startswith(f"AWS4-HMAC-SHA256 Credential={KEY}/")
    assert ("x-amz-security-token" in headers) is (token is not None)
    known = {KEY: (SECRET, token)}
    now = datetime.datetime.now(datetime.UTC)
    plain = dict(headers)
    ok, reason, key = verify("POST", url, plain, body, known, "eu-west-3", "bedrock", now)
    assert (ok, reason, key) == (True, "", KEY)
    # The body, the path or the region changed after signing: refused.
    assert not verify("POST", url, plain, body + b" ", known, "eu-west-3", "bedrock", now)[0]
    other = url.replace("invoke", "converse")
    assert not verify("POST", other, plain, body, known, "eu-west-3", "bedrock", now)[0]
    assert not verify("POST", url, plain, body, known, "us-east-1", "bedrock", now)[0]
    # Unsigned headers (the gateway's own) may differ.
    assert verify(
        "POST", url, {**plain, "x-request-id": "r2"}, body, known, "eu-west-3", "bedrock", now
    )[0]


def test_an_expired_token_refusal_drops_the_credentials() -> None:
    authorizer = signer()
    expired = Headers([("x-amzn-errortype", "ExpiredTokenException:http://internal.amazon.com/x/")])
    denied = Headers([("x-amzn-errortype", "AccessDeniedException:http://internal.amazon.com/x/")])
    assert not authorizer.refused(403, denied)
    assert authorizer.ready() is None
    assert authorizer.refused(403, expired)
    assert authorizer.ready() is not None  # fetched again before the next attempt
    assert not BearerAuthorizer("k").refused(403, expired)
