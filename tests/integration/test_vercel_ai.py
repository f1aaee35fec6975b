"""The Vercel AI SDK (``ai`` with ``@ai-sdk/openai`` and ``@ai-sdk/anthropic`` from npm, at
their current releases) in a two-turn conversation with a tool call in each turn, through
the gateway to an upstream that speaks only Chat Completions.

A small Node program (tests/vercel_ai_conversation.mjs) does what an application does:
``generateText`` with a tool the SDK runs, the answer's messages kept, a second question
with ``streamText``. ``openai.responses(...)`` sends earlier assistant turns as
``item_reference`` items (ids the gateway made and stored), both with the whole history
and when continuing with ``previousResponseId``; ``openai.chat(...)`` and
``@ai-sdk/anthropic`` go through the chat pass-through and the Messages translation. The
upstream must see the whole conversation in the last request.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Gateway, LocalServer, Process, start_gateway
from tests.npm_clients import installed_versions, node_for, npm_packages

TESTS = Path(__file__).resolve().parent.parent
PROGRAM = TESTS / "vercel_ai_conversation.mjs"
SCRIPT = {
    "calls": [
        {"name": "weather", "arguments": json.dumps({"city": "Paris"}), "text": "Let me check."},
        {"name": "weather", "arguments": json.dumps({"city": "Rome"}), "text": "Checking Rome."},
    ],
    "text": "It is sunny.",
}
#: What the upstream must receive last: both turns, each call with its result.
CONVERSATION = [
    ("user", "What is the weather in Paris?", []),
    ("assistant", "Let me check.", ["weather"]),
    ("tool", "sunny in Paris", []),
    ("assistant", "It is sunny.", []),
    ("user", "And in Rome?", []),
    ("assistant", "Checking Rome.", ["weather"]),
    ("tool", "sunny in Rome", []),
]


@pytest.fixture(scope="module")
def sdk() -> Path:
    """The install directory of the SDK packages, at their current releases."""
    return npm_packages(
        {"ai": "latest", "@ai-sdk/openai": "latest", "@ai-sdk/anthropic": "latest", "zod": "latest"}
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[LocalServer]:
    process = Process([sys.executable, str(TESTS / "scripted_server.py"), "chat"])
    try:
        yield LocalServer(process, int(process.wait_for(r"PORT (\d+)").group(1)))
    finally:
        process.stop()


@pytest.fixture(scope="module")
def gateway(upstream: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(
        f"""
        clusters:
          chat-only:
            url: {upstream.url}
            apis: [chat]
        routes:
          - {{cluster: chat-only}}
        """,
        tmp_path_factory.mktemp("vercel-gateway"),
    )
    try:
        yield gateway
    finally:
        gateway.process.stop()


def said(message: dict[str, Any]) -> tuple[str, str, list[str]]:
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    calls = [c["function"]["name"] for c in message.get("tool_calls") or []]
    return message["role"], content or "", calls


@pytest.mark.parametrize("client", ["responses", "responses-previous", "chat", "anthropic"])
def test_a_two_turn_conversation_with_tools_through_a_chat_only_upstream(
    client: str, sdk: Path, upstream: LocalServer, gateway: Gateway, tmp_path: Path
) -> None:
    node = node_for(sdk)
    httpx.post(f"{upstream.url}/control/script", json=SCRIPT).raise_for_status()
    # The program imports the SDK from the node_modules beside it.
    (tmp_path / "node_modules").symlink_to(sdk / "node_modules")
    program = tmp_path / PROGRAM.name
    shutil.copy(PROGRAM, program)
    done = subprocess.run(
        [str(node), str(program), client, f"{gateway.url}/v1", "chat-model"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    versions = installed_versions(sdk)
    assert done.returncode == 0, (
        f"{versions}: {done.stdout[-3000:]}\n{done.stderr[-5000:]}\n"
        f"gateway:\n{gateway.process.output()[-3000:]}"
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["texts"] == ["It is sunny.", "It is sunny."], result
    assert result["ran"] == ["Paris", "Rome"]
    assert result["steps"] == [2, 2]
    if client.startswith("responses"):
        assert all(re.fullmatch(r"resp_[0-9a-f]{24}", i) for i in result["responseIds"]), result

    requests = httpx.get(f"{upstream.url}/control/requests").json()
    assert len(requests) == 4, [r["body"]["messages"][-1] for r in requests]
    assert [said(m) for m in requests[-1]["body"]["messages"]] == CONVERSATION
    assert [t["function"]["name"] for t in requests[-1]["body"]["tools"]] == ["weather"]
