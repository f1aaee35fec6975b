"""tests/bedrock_server.py, the stand-in for AWS Bedrock and STS, as a process for the
time of a ``with`` block, and its control API."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from tests.integration.conftest import HERE, LocalServer, Process

SCRIPT = HERE.parent / "bedrock_server.py"


class BedrockMock(LocalServer):
    """The running stand-in: ``url`` and ``port``, and what it has seen."""

    def requests(self) -> list[dict[str, Any]]:
        """Every Bedrock request so far: ``path`` (raw), ``headers`` (lower-case names),
        ``body`` (parsed JSON or None), ``auth`` (``sigv4:<access key>``, ``bearer`` or
        ``rejected:<AWS error type>``)."""
        return self._get("/control/requests")

    def sts_calls(self) -> list[dict[str, Any]]:
        """Every STS call so far: ``action``, ``role_arn``, ``session_name``,
        ``web_identity_token``, ``access_key_id`` and ``expiration`` of what it issued
        (None when it failed), ``error`` (STS's error code or None)."""
        return self._get("/control/sts")

    def add_credentials(self, access_key_id: str, secret: str, token: str | None = None) -> None:
        """Accept these credentials from now on."""
        document = {"access_key_id": access_key_id, "secret_access_key": secret}
        if token is not None:
            document["session_token"] = token
        self._post("/control/credentials", document)

    def reset(self) -> None:
        """Forget the requests and STS calls seen so far (not the credentials)."""
        self._post("/control/reset", {})

    def _get(self, path: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}{path}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def _post(self, path: str, document: Mapping[str, Any]) -> None:
        response = httpx.post(f"{self.url}{path}", json=dict(document))
        assert response.status_code == 200, response.text


@contextmanager
def bedrock_mock(env: Mapping[str, str] | None = None) -> Iterator[BedrockMock]:
    """The stand-in running with *env* added to the environment (``BEDROCK_MOCK_*``,
    ``STS_MOCK_DURATION``; see tests/bedrock_server.py) until the block ends."""
    process = Process([sys.executable, str(SCRIPT)], env=dict(env or {}))
    try:
        yield BedrockMock(process, int(process.wait_for(r"PORT (\d+)").group(1)))
    finally:
        process.stop()
