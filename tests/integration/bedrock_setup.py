"""What the Bedrock tests share: the credentials the stand-in knows, the models, the
gateway's config for it, an environment with none of the machine's AWS settings, and the
stand-in itself (a module fixture)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .bedrock_mock import BedrockMock, bedrock_mock

ACCESS_KEY = "AKIDEXAMPLEGATEWAY01"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
LLAMA = "meta.llama3-70b-instruct-v1:0"
TOOLS_CHAT = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def config(mock: BedrockMock, extra: str = "") -> str:
    return f"""
        clusters:
          bedrock:
            provider: bedrock
            url: {mock.url}
            region: us-east-1
            {extra}
        routes:
          - models: ["*"]
            cluster: bedrock
        spend: {{}}
    """


_CREDENTIAL_VARIABLES = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_BEARER_TOKEN_BEDROCK",
}


def aws_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Nothing of the machine's AWS settings: only what the test gives."""
    env = {k: "" for k in os.environ if k.startswith("AWS_") and k in _CREDENTIAL_VARIABLES}
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "no-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.update(extra)
    return {k: v for k, v in env.items()}


@pytest.fixture(scope="module")
def bedrock() -> Iterator[BedrockMock]:
    credentials = [{"access_key_id": ACCESS_KEY, "secret_access_key": SECRET}]
    with bedrock_mock({"BEDROCK_MOCK_CREDENTIALS": json.dumps(credentials)}) as mock:
        yield mock


def last(mock: BedrockMock) -> dict[str, Any]:
    requests = mock.requests()
    assert requests, "nothing reached Bedrock"
    return requests[-1]
