"""The real Claude Code (``@anthropic-ai/claude-code`` from npm, at its current release)
through the gateway to an upstream that speaks only Chat Completions: ``claude -p``
prints what the upstream said. Whatever Claude Code sends — its system prompt, tools
with cache breakpoints, thinking, a system turn among the messages, metadata — must come
through the translation; a release that sends something new shows up here."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Gateway, LocalServer, start_gateway
from tests.npm_clients import client_env, installed_versions, npm_bin, npm_package


@pytest.fixture(scope="module")
def claude() -> tuple[Path, Path]:
    """The ``claude`` CLI at its current release, and its install directory."""
    directory = npm_package("@anthropic-ai/claude-code")
    assert installed_versions(directory)["@anthropic-ai/claude-code"]
    return npm_bin(directory, "claude"), directory


@pytest.fixture(scope="module")
def gateway(
    chat_upstream: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    # Every model Claude Code asks for (its main model, the small one for titles) goes
    # to the one chat upstream, whose model chat-text answers in text, tools or not.
    config = f"""
        clusters:
          chat-only:
            url: {chat_upstream.url}
            apis: [chat]
        routes:
          - cluster: chat-only
            upstream_model: chat-text
        # Priced as every gateway with keys prices: the streams end with their cost.
        spend: {{}}
    """
    gw = start_gateway(config, tmp_path_factory.mktemp("claude-code"))
    try:
        yield gw
    finally:
        gw.process.stop()


@pytest.mark.parametrize("credential", ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"])
def test_claude_code_prints_what_a_chat_only_upstream_said(
    claude: tuple[Path, Path],
    gateway: Gateway,
    chat_upstream: LocalServer,
    tmp_path: Path,
    credential: str,
) -> None:
    before = httpx.get(f"{chat_upstream.url}/control/count").json()
    binary, directory = claude
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),  # no settings, login or history of the machine's user
        "ANTHROPIC_BASE_URL": gateway.url,
        credential: "sk-ant-test-client-key",
        # Nothing but the gateway: no update checks, telemetry or error reports.
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
    }
    done = subprocess.run(
        [str(binary), "-p", "Say the word pineapple", "--output-format", "text"],
        env=client_env(directory, env),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The upstream's answer, word for word: "You said: <the user turn> (<n> messages)".
    assert done.stdout.startswith("You said: "), done.stdout + done.stderr
    assert "Say the word pineapple" in done.stdout
    assert httpx.get(f"{chat_upstream.url}/control/count").json() > before
    last = httpx.get(f"{chat_upstream.url}/control/last").json()
    assert last["path"] == "/v1/chat/completions"
    body = last["body"]
    assert body["model"] == "chat-text" and body["tools"], "Claude Code's tools went upstream"
    assert body["messages"][0]["role"] == "system"
