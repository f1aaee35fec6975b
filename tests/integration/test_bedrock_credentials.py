"""Where a Bedrock cluster's credentials come from, against the stand-in that checks
every signature (tests/bedrock_server.py) and issues STS credentials: environment
variables (test_bedrock.py's gateway), a profile file, a web identity token file (EKS),
a Bedrock API key; a source that fails answers 503 naming it; a fallback never carries
another cluster's credentials; check-config says where they would come from."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from .bedrock_mock import BedrockMock, bedrock_mock
from .bedrock_setup import ACCESS_KEY, CLAUDE, SECRET, aws_env, bedrock, config, last
from .conftest import start_gateway

pytest.importorskip("botocore")

__all__ = ["bedrock"]  # the stand-in, a module fixture


def test_credentials_from_a_profile_file(bedrock: BedrockMock, tmp_path: Path) -> None:
    bedrock.add_credentials("AKIDPROFILE000000001", "profile-secret")
    (tmp_path / "credentials").write_text(
        "[prod]\naws_access_key_id = AKIDPROFILE000000001\naws_secret_access_key = profile-secret\n"
    )
    env = aws_env(tmp_path, AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"))
    gw = start_gateway(config(bedrock, "credentials: {profile: prod}"), tmp_path, env=env)
    try:
        client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
        message = client.messages.create(
            model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": "profile"}]
        )
        assert message.content[0].text == "Echo: profile"  # type: ignore[union-attr]
        assert last(bedrock)["auth"] == "sigv4:AKIDPROFILE000000001"
    finally:
        gw.process.stop()


def test_credentials_from_a_web_identity_token_file_refreshed_as_they_expire(
    tmp_path: Path,
) -> None:
    """EKS's IRSA: AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE, STS's credentials
    (8 s here) refreshed ahead of expiry, the token file read again for each."""
    with bedrock_mock({"STS_MOCK_DURATION": "8"}) as mock:
        token = tmp_path / "token"
        token.write_text("eks-token-1")
        env = aws_env(
            tmp_path,
            AWS_ROLE_ARN="arn:aws:iam::123456789012:role/gateway",
            AWS_WEB_IDENTITY_TOKEN_FILE=str(token),
            AWS_ROLE_SESSION_NAME="gw",
            AWS_ENDPOINT_URL_STS=mock.url,
        )
        gw = start_gateway(config(mock), tmp_path, env=env)
        try:
            client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
            signed_with = []
            for n in range(3):
                message = client.messages.create(
                    model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": f"irsa {n}"}]
                )
                assert message.content[0].text == f"Echo: irsa {n}"  # type: ignore[union-attr]
                signed_with.append(last(mock)["auth"])
                token.write_text(f"eks-token-{n + 2}")
                time.sleep(4)
            calls = mock.sts_calls()
            assert calls[0]["action"] == "AssumeRoleWithWebIdentity"
            assert calls[0]["role_arn"] == "arn:aws:iam::123456789012:role/gateway"
            assert calls[0]["web_identity_token"] == "eks-token-1"
            assert len(calls) >= 2 and calls[1]["web_identity_token"] != "eks-token-1"
            # Every request was signed with credentials STS issued, and not one expired.
            issued = {f"sigv4:{c['access_key_id']}" for c in calls}
            assert set(signed_with) <= issued and len(set(signed_with)) >= 2
        finally:
            gw.process.stop()


def test_a_bedrock_api_key(bedrock: BedrockMock, tmp_path: Path) -> None:
    with bedrock_mock({"BEDROCK_MOCK_API_KEY": "bedrock-api-key-1"}) as mock:
        gw = start_gateway(
            config(mock, "api_key: bedrock-api-key-1"), tmp_path, env=aws_env(tmp_path)
        )
        try:
            client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
            message = client.messages.create(
                model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": "key"}]
            )
            assert message.content[0].text == "Echo: key"  # type: ignore[union-attr]
            assert last(mock)["auth"] == "bearer"
        finally:
            gw.process.stop()


def test_credentials_that_cannot_be_had_are_a_503_naming_the_source(
    bedrock: BedrockMock, tmp_path: Path
) -> None:
    env = aws_env(
        tmp_path,
        AWS_ROLE_ARN="arn:aws:iam::123456789012:role/gateway",
        AWS_WEB_IDENTITY_TOKEN_FILE=str(tmp_path / "missing-token"),
        AWS_ENDPOINT_URL_STS=bedrock.url,
    )
    before = len(bedrock.requests())
    gw = start_gateway(config(bedrock), tmp_path, env=env)
    try:
        response = httpx.post(
            f"{gw.url}/v1/messages",
            json={"model": CLAUDE, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]},
            timeout=30,
        )
        assert response.status_code == 503, response.text
        assert "AWS credentials" in response.json()["error"]["message"]
        assert len(bedrock.requests()) == before  # nothing unsigned went out
    finally:
        gw.process.stop()


def test_a_fallback_never_gets_another_clusters_credentials(
    bedrock: BedrockMock, messages_upstream: Any, tmp_path: Path
) -> None:
    """Bedrock unreachable → Anthropic's cluster answers, with its own key and none of
    AWS's headers; the other way round, Bedrock's request is signed and carries no
    Anthropic key."""
    text = f"""
        clusters:
          bedrock:
            provider: bedrock
            url: {bedrock.url}
            region: us-east-1
          down:
            provider: bedrock
            url: http://127.0.0.1:9
            region: us-east-1
          anthropic:
            provider: anthropic
            url: {messages_upstream.url}
            api_key: anthropic-cluster-key
          anthropic-down:
            provider: anthropic
            url: http://127.0.0.1:9
            api_key: anthropic-cluster-key
        routes:
          - models: ["to-anthropic"]
            cluster: down
            fallbacks: [anthropic]
          - models: ["to-bedrock"]
            cluster: anthropic-down
            fallbacks: [bedrock]
            upstream_model: {CLAUDE}
    """
    env = aws_env(tmp_path, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET)
    gw = start_gateway(text, tmp_path, env=env)
    try:
        client = anthropic.Anthropic(base_url=gw.url, api_key="client-key", max_retries=0)
        client.messages.create(
            model="to-anthropic", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
        seen = httpx.get(f"{messages_upstream.url}/control/last").json()
        assert seen["headers"]["x-api-key"] == "anthropic-cluster-key"
        assert not any(h.startswith("x-amz") for h in seen["headers"])
        assert "authorization" not in seen["headers"]
        assert seen["path"] == "/v1/messages" and seen["body"]["model"] == "to-anthropic"
        client.messages.create(
            model="to-bedrock", max_tokens=8, messages=[{"role": "user", "content": "y"}]
        )
        signed = last(bedrock)
        assert signed["auth"] == f"sigv4:{ACCESS_KEY}"
        assert "x-api-key" not in signed["headers"]
    finally:
        gw.process.stop()


def test_check_config_says_where_credentials_come_from(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "clusters:\n  bedrock: {provider: bedrock, region: eu-west-1}\n"
        "routes: [{cluster: bedrock}]\n"
    )
    env = {
        **os.environ,
        **aws_env(tmp_path, AWS_ACCESS_KEY_ID="AKIDCHECK", AWS_SECRET_ACCESS_KEY="s"),
    }
    result = subprocess.run(
        [str(Path(sys.executable).parent / "filterproxy"), "check-config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "credentials: SigV4 in eu-west-1" in result.stdout
    assert "found: env" in result.stdout
    assert "AKIDCHECK" not in result.stdout
