"""The real Codex CLI (``@openai/codex`` from npm, its current release) against the gateway,
with upstreams that speak only Chat Completions and only Messages.

Codex speaks only the Responses API, and sends in every request what no other API has: a
``namespace`` tool (``multi_agent_v1``), the hosted ``web_search`` tool and — with models
whose metadata asks for it — the freeform (``custom``) ``apply_patch`` tool. Each test runs
``codex exec`` non-interactively (its own HOME and CODEX_HOME, a model provider whose
``base_url`` is the gateway, ``wire_api = "responses"``), with a scripted upstream
(tests/scripted_server.py) that calls Codex's tools: the command runs, the patch is
applied, the results come back to the upstream, and Codex prints the upstream's text. A
Codex release that sends something the gateway cannot translate fails here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Gateway, LocalServer, Process, start_gateway
from tests.npm_clients import client_env, installed_versions, npm_bin, npm_package

TESTS = Path(__file__).resolve().parent.parent
FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+hello from the patch 👋\n*** End Patch\n"


@pytest.fixture(scope="module")
def codex() -> tuple[Path, str, Path]:
    """The ``codex`` CLI at its current release, that release, and its install directory."""
    directory = npm_package("@openai/codex")
    return (
        npm_bin(directory, "codex"),
        installed_versions(directory)["@openai/codex"],
        directory,
    )


class Scripted(LocalServer):
    """tests/scripted_server.py: an upstream that speaks one API and calls tools as told."""

    def script(self, calls: list[tuple[str, Any]], text: str) -> None:
        body = {
            "calls": [
                {"name": name, "arguments": json.dumps(arguments)} for name, arguments in calls
            ],
            "text": text,
            "chain": True,
        }
        httpx.post(f"{self.url}/control/script", json=body).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/control/requests").json()  # type: ignore[no-any-return]


def scripted(api: str) -> Iterator[Scripted]:
    process = Process([sys.executable, str(TESTS / "scripted_server.py"), api])
    try:
        yield Scripted(process, int(process.wait_for(r"PORT (\d+)").group(1)))
    finally:
        process.stop()


@pytest.fixture(scope="module")
def chat_upstream() -> Iterator[Scripted]:
    yield from scripted("chat")


@pytest.fixture(scope="module")
def messages_upstream() -> Iterator[Scripted]:
    yield from scripted("messages")


@pytest.fixture(scope="module")
def gateway(
    chat_upstream: Scripted, messages_upstream: Scripted, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gateway = start_gateway(
        f"""
        clusters:
          chat-only:
            url: {chat_upstream.url}
            apis: [chat]
          messages-only:
            provider: anthropic
            url: {messages_upstream.url}/v1
            api_key: sk-ant-upstream
        routes:
          - {{name: codex-chat, models: [codex-chat], cluster: chat-only}}
          - {{name: codex-messages, models: [codex-messages], cluster: messages-only}}
        # Priced as every gateway with keys prices: Codex's streams end with their cost.
        spend: {{}}
        """,
        tmp_path_factory.mktemp("codex-gateway"),
    )
    try:
        yield gateway
    finally:
        gateway.process.stop()


def model_catalog(path: Path, *slugs: str) -> Path:
    """Model metadata for Codex (``model_catalog_json``) that gives *slugs* the freeform
    ``apply_patch`` tool, as Codex's own metadata gives OpenAI's codex models."""
    models = [
        {
            "slug": slug,
            "display_name": slug,
            "description": "a test model behind the gateway",
            "apply_patch_tool_type": "freeform",
            "shell_type": "shell_command",
            "supports_reasoning_summaries": False,
            "reasoning_summary_format": "none",
            "default_reasoning_level": None,
            "supported_reasoning_levels": [],
            "support_verbosity": False,
            "default_verbosity": None,
            "input_modalities": ["text"],
            "truncation_policy": {"mode": "tokens", "limit": 10000},
            "supports_parallel_tool_calls": True,
            "context_window": 128000,
            "visibility": "list",
            "minimal_client_version": "0.0.1",
            "supported_in_api": True,
            "upgrade": None,
            "priority": 0,
            "base_instructions": "You are a coding agent.",
            "experimental_supported_tools": [],
        }
        for slug in slugs
    ]
    path.write_text(json.dumps({"models": models}))
    return path


def run_codex(
    codex: tuple[Path, str, Path],
    gateway: Gateway,
    model: str,
    tmp_path: Path,
    *,
    catalog: Path | None = None,
) -> tuple[list[dict[str, Any]], Path]:
    """``codex exec --json`` in a fresh HOME against the gateway: its events, and its
    working directory."""
    binary, version, directory = codex
    home = tmp_path / "home"
    (home / ".codex").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    config = textwrap.dedent(f"""
        model_provider = "gateway"
        check_for_update_on_startup = false
        [model_providers.gateway]
        name = "filterproxy"
        base_url = "{gateway.url}/v1"
        env_key = "GATEWAY_KEY"
        wire_api = "responses"
        request_max_retries = 0
        stream_max_retries = 0
    """)
    if catalog is not None:
        config = f"model_catalog_json = {json.dumps(str(catalog))}\n" + config
    (home / ".codex" / "config.toml").write_text(config)
    done = subprocess.run(
        [
            str(binary),
            "exec",
            "--json",
            "--skip-git-repo-check",
            # The test's own tmp directory is the sandbox; Codex's needs namespaces the
            # test machine may not give.
            "--dangerously-bypass-approvals-and-sandbox",
            "-C",
            str(work),
            "-m",
            model,
            "Run what you need, then report.",
        ],
        env=client_env(
            directory,
            {
                **os.environ,
                "HOME": str(home),
                "CODEX_HOME": str(home / ".codex"),
                "GATEWAY_KEY": "sk-gateway-client",
            },
        ),
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    failed = [e for e in events if e.get("type") in ("turn.failed", "error")]
    assert done.returncode == 0 and not failed, (
        f"codex {version} failed (exit {done.returncode}):\n{done.stdout[-4000:]}\n"
        f"{done.stderr[-4000:]}\ngateway:\n{gateway.process.output()[-4000:]}"
    )
    return events, work


def completed(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [
        e["item"] for e in events if e.get("type") == "item.completed" and e["item"]["type"] == kind
    ]


def tool_names(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] if "function" in t else t["name"] for t in body["tools"]]


def tool_result(api: str, body: dict[str, Any]) -> str:
    """The text of the last tool result in a request the upstream received."""
    last = body["messages"][-1]
    if api == "chat":
        assert last["role"] == "tool", last
        return str(last["content"])
    [result] = [b for b in last["content"] if b.get("type") == "tool_result"]
    content = result["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def dropped_tools_logged(gateway: Gateway, model: str) -> list[Any]:
    records = [
        json.loads(line[line.index("{") :])
        for line in gateway.process.output().splitlines()
        if "filterproxy.access" in line and f'"model":"{model}"' in line
    ]
    assert records, gateway.process.output()[-3000:]
    return [r.get("dropped_tools") for r in records]


@pytest.mark.parametrize("api", ["chat", "messages"])
def test_codex_runs_its_tools_through_an_upstream_of_another_api(
    api: str,
    codex: tuple[Path, str, Path],
    gateway: Gateway,
    chat_upstream: Scripted,
    messages_upstream: Scripted,
    tmp_path: Path,
) -> None:
    upstream = chat_upstream if api == "chat" else messages_upstream
    model = f"codex-{api}"
    upstream.script(
        [
            # A tool of Codex's namespace, as the upstream knows it: Codex must get the
            # call back with its namespace to find the tool.
            ("multi_agent_v1__close_agent", {"target": "nobody"}),
            ("exec_command", {"cmd": "echo ran-by-codex-$((6 * 7))"}),
        ],
        "Both tools ran; the command printed its marker.",
    )
    events, _ = run_codex(codex, gateway, model, tmp_path)

    said = [m["text"] for m in completed(events, "agent_message")]
    assert said == ["Both tools ran; the command printed its marker."], events
    [command] = completed(events, "command_execution")
    assert "ran-by-codex-42" in command["aggregated_output"]

    requests = [r["body"] for r in upstream.requests()]
    assert len(requests) == 3, [r.get("messages", [])[-1:] for r in requests]
    names = tool_names(requests[0])
    # The namespace's tools arrive as function tools with valid names; web_search is
    # left out (hosted_tools: drop, the default).
    assert {"exec_command", "multi_agent_v1__spawn_agent", "multi_agent_v1__close_agent"} <= set(
        names
    ), names
    assert all(FUNCTION_NAME.match(n) for n in names), names
    assert not any("web_search" in n for n in names)
    # Codex found the namespaced tool (an unknown one is answered "unsupported call").
    namespaced = tool_result(api, requests[1])
    assert namespaced and not namespaced.startswith("unsupported call"), namespaced
    assert "ran-by-codex-42" in tool_result(api, requests[2])
    # The same names in every turn: the calls sent back match the tools.
    assert tool_names(requests[2]) == names
    assert dropped_tools_logged(gateway, model)[-3:] == [["web_search"]] * 3
    assert f'filterproxy_translate_dropped_tools_total{{route="{model}",tool="web_search"}}' in (
        gateway.metrics()
    )


@pytest.mark.parametrize("api", ["chat", "messages"])
def test_codex_applies_a_patch_through_its_freeform_tool(
    api: str,
    codex: tuple[Path, str, Path],
    gateway: Gateway,
    chat_upstream: Scripted,
    messages_upstream: Scripted,
    tmp_path: Path,
) -> None:
    upstream = chat_upstream if api == "chat" else messages_upstream
    model = f"codex-{api}"
    upstream.script([("apply_patch", {"input": PATCH})], "The file is there.")
    catalog = model_catalog(tmp_path / "models.json", model)
    events, work = run_codex(codex, gateway, model, tmp_path, catalog=catalog)

    assert [m["text"] for m in completed(events, "agent_message")] == ["The file is there."]
    assert (work / "hello.txt").read_text() == "hello from the patch 👋\n"
    requests = [r["body"] for r in upstream.requests()]
    assert len(requests) == 2
    [patch_tool] = [
        t for t in requests[0]["tools"] if (t.get("function") or t).get("name") == "apply_patch"
    ]
    schema = patch_tool["function"]["parameters"] if api == "chat" else patch_tool["input_schema"]
    assert schema["properties"]["input"]["type"] == "string"
    assert schema["required"] == ["input"]
    assert "hello.txt" in tool_result(api, requests[1])
