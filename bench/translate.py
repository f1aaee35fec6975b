"""The translated-stream scenario: CPU per chunk of a Messages stream and of a Responses
stream translated from Chat Completions, and of a chat stream translated from Messages,
next to pass-through, and next to LiteLLM and Portkey's gateway translating the same.

    make bench-translate
    .venv-bench/bin/python -m bench.translate --seconds 20 --peers filterproxy,litellm,portkey

The upstream (bench/upstream.py ``--format chat``) answers every streaming request with
the same chat completion stream: a role chunk, ``--chunks`` content chunks of a few
characters (a token each, as providers send them), the finish and usage chunks, and
``[DONE]``, as fast as the socket takes them. Clients keep ``--users`` streams going at
once for ``--seconds``. The gateway runs alone on core 0 (the upstream and the clients
share core 1); what is reported is the gateway's CPU time (user + system, all its
processes) divided by the content chunks it carried. Rows:

- ``pass-through``: a Chat Completions client, the benchmark's chain (conf/bench.yaml);
- ``pass-through, translate in chain``: the same request with the translate filter in the
  chain (the cluster speaks chat, so it passes untouched);
- ``translated``: a Messages client (``/v1/messages``) to the chat upstream;
- ``translated``: a Responses client (``/v1/responses``) to the chat upstream, its
  conversation kept by the ``responses`` filter (in memory) as by default;
- ``translated``: a Chat Completions client to a Messages-only upstream
  (bench/bedrock_upstream.py, as many text deltas of as many characters), through an
  ``anthropic`` cluster: the other direction, the one Portkey's gateway translates;
- LiteLLM's proxy (when installed: ``pip install 'litellm[proxy]'``) for the same
  requests but the Responses one, with one worker;
- Portkey's gateway (when `make bench-env` installed it from npm) for the pass-through,
  as provider ``openai``, and the chat client to the Messages upstream, as provider
  ``anthropic``: the mock is its custom host, named in each request's headers. It does
  not translate the other way (its ``/v1/messages`` serves only providers that speak
  Messages: "messages is not supported by openai").

Results go to bench/results/<date>-<machine>-translate.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.peers import BIN, Peer, PeerUnavailable, portkey_headers, portkey_peer, save_results
from bench.run import LOAD_CORE, PROXY_CORE, Upstream

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PORT = 8810
#: What clients present (LiteLLM's proxy will not start without a master key).
CLIENT_KEY = "sk-bench-client-0123456789abcdef"
CHAT_BODY = {"model": "bench", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
MESSAGES_BODY = {
    "model": "bench",
    "stream": True,
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "hi"}],
}
RESPONSES_BODY = {"model": "bench", "stream": True, "input": "hi"}
#: A chat client's request for a model whose upstream speaks only Messages.
CHAT_TO_MESSAGES_BODY = {
    "model": "claude-bench",
    "stream": True,
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "hi"}],
}
GATEWAY_CONF = """
listeners: []
access_log: false
clusters:
  upstream:
    url: http://127.0.0.1:{upstream}
    apis: [chat]
    max_idle_connections: 1024
    request_headers:
      set:
        authorization: Bearer sk-bench
routes:
  - name: everything
    cluster: upstream
filters:
  - type: body-accumulate
  - type: responses
  - type: route
  - type: translate
  - type: header-rewrite
  - type: usage
"""
#: The same chain in front of the Messages-only upstream.
MESSAGES_CONF = """
listeners: []
access_log: false
clusters:
  anthropic:
    provider: anthropic
    url: http://127.0.0.1:{messages}
    api_key: sk-bench
    max_idle_connections: 1024
routes:
  - name: everything
    cluster: anthropic
filters:
  - type: body-accumulate
  - type: responses
  - type: route
  - type: translate
  - type: header-rewrite
  - type: usage
"""
LITELLM_CONF = """
model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_base: http://127.0.0.1:{upstream}/v1
      api_key: sk-bench
  - model_name: claude-bench
    litellm_params:
      model: anthropic/claude-bench
      api_base: http://127.0.0.1:{messages}
      api_key: sk-bench
litellm_settings:
  telemetry: false
  drop_params: true
"""


@dataclass
class Case:
    peer: str
    label: str
    path: str
    body: dict[str, Any]
    #: The last event of a complete answer in this API.
    end: bytes


CASES = [
    Case("filterproxy", "pass-through", "/v1/chat/completions", CHAT_BODY, b"[DONE]"),
    Case(
        "filterproxy-translate",
        "pass-through, translate in chain",
        "/v1/chat/completions",
        CHAT_BODY,
        b"[DONE]",
    ),
    Case(
        "filterproxy-translate",
        "translated: Messages client, chat upstream",
        "/v1/messages",
        MESSAGES_BODY,
        b"message_stop",
    ),
    Case(
        "filterproxy-translate",
        "translated: Responses client, chat upstream",
        "/v1/responses",
        RESPONSES_BODY,
        b"response.completed",
    ),
    Case(
        "filterproxy-messages",
        "translated: chat client, Messages upstream",
        "/v1/chat/completions",
        CHAT_TO_MESSAGES_BODY,
        b"[DONE]",
    ),
    Case("litellm", "pass-through", "/v1/chat/completions", CHAT_BODY, b"[DONE]"),
    Case(
        "litellm",
        "translated: Messages client, chat upstream",
        "/v1/messages",
        MESSAGES_BODY,
        b"message_stop",
    ),
    Case(
        "litellm",
        "translated: chat client, Messages upstream",
        "/v1/chat/completions",
        CHAT_TO_MESSAGES_BODY,
        b"[DONE]",
    ),
    Case("portkey", "pass-through", "/v1/chat/completions", CHAT_BODY, b"[DONE]"),
    Case(
        "portkey-anthropic",
        "translated: chat client, Messages upstream",
        "/v1/chat/completions",
        CHAT_TO_MESSAGES_BODY,
        b"[DONE]",
    ),
]
#: Peers measured whenever the first is asked for.
COMPANIONS = {
    "filterproxy": ("filterproxy-translate", "filterproxy-messages"),
    "portkey": ("portkey-anthropic",),
}


def gateway_peers(workdir: Path, upstream: int, messages: int) -> dict[str, Peer]:
    """The gateways installed here, by name: their chat upstream on port *upstream*, their
    Messages-only upstream on *messages* (a Portkey that is not installed is reported)."""
    twistd = [
        str(BIN / "twistd"),
        "-n",
        "--pidfile=",
        "-l",
        str(workdir / "gateway.log"),
        "filterproxy",
    ]
    listen = ["--listen", f"tcp:{PORT}:interface=127.0.0.1"]
    conf = workdir / "translate.yaml"
    conf.write_text(GATEWAY_CONF.format(upstream=upstream))
    messages_conf = workdir / "messages.yaml"
    messages_conf.write_text(MESSAGES_CONF.format(messages=messages))
    found = {
        "filterproxy": Peer(
            "filterproxy",
            [*twistd, "-c", str(ROOT / "conf" / "bench.yaml"), *listen],
            env={"FILTERPROXY_UPSTREAM": f"http://127.0.0.1:{upstream}"},
            listen_port=PORT,
        ),
        "filterproxy-translate": Peer(
            "filterproxy-translate", [*twistd, "-c", str(conf), *listen], listen_port=PORT
        ),
        "filterproxy-messages": Peer(
            "filterproxy-messages", [*twistd, "-c", str(messages_conf), *listen], listen_port=PORT
        ),
    }
    litellm = shutil.which("litellm", path=str(BIN))
    if litellm:
        lconf = workdir / "litellm.yaml"
        lconf.write_text(LITELLM_CONF.format(upstream=upstream, messages=messages))
        found["litellm"] = Peer(
            "litellm",
            [
                litellm,
                "--config",
                str(lconf),
                "--host",
                "127.0.0.1",
                "--port",
                str(PORT),
                "--num_workers",
                "1",
            ],
            env={
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_LOG": "ERROR",
                "LITELLM_MASTER_KEY": CLIENT_KEY,
                # Translate Messages to Chat Completions, as filterproxy does (for openai/
                # models LiteLLM would otherwise call the upstream's Responses API).
                "LITELLM_USE_CHAT_COMPLETIONS_URL_FOR_ANTHROPIC_MESSAGES": "True",
            },
            listen_port=PORT,
            startup_timeout=120.0,
        )
    # One process either way; the two peers differ in what their clients' headers say.
    for name, provider, base in (
        ("portkey", "openai", f"http://127.0.0.1:{upstream}/v1"),
        ("portkey-anthropic", "anthropic", f"http://127.0.0.1:{messages}/v1"),
    ):
        try:
            found[name] = portkey_peer(name, PORT, portkey_headers(provider, base))
        except PeerUnavailable as reason:
            print(reason, flush=True)
    return found


async def load(
    port: int,
    case: Case,
    users: int,
    seconds: float,
    extra_headers: dict[str, str] | None = None,
) -> tuple[int, int]:
    """(complete streams, failed streams) of *users* clients streaming for *seconds*, each
    request with *extra_headers* too."""
    headers = {
        "authorization": f"Bearer {CLIENT_KEY}",
        "x-api-key": CLIENT_KEY,
        "anthropic-version": "2023-06-01",
        **(extra_headers or {}),
    }
    deadline = time.monotonic() + seconds
    done = failed = 0
    limits = httpx.Limits(max_connections=users, max_keepalive_connections=users)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60
    ) as client:

        async def user() -> None:
            nonlocal done, failed
            while time.monotonic() < deadline:
                tail = b""
                async with client.stream(
                    "POST", case.path, json=case.body, headers=headers
                ) as response:
                    async for piece in response.aiter_raw():
                        tail = (tail + piece)[-8192:]
                if response.status_code == 200 and case.end in tail:
                    done += 1
                else:
                    failed += 1

        await asyncio.gather(*(user() for _ in range(users)))
    return done, failed


def warm_up(port: int, case: Case, extra_headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            response = httpx.post(
                f"http://127.0.0.1:{port}{case.path}",
                json=case.body,
                timeout=30,
                headers={"authorization": f"Bearer {CLIENT_KEY}", **(extra_headers or {})},
            )
            if response.status_code == 200 and case.end in response.content:
                return
            raise RuntimeError(
                f"{case.peer} {case.path}: {response.status_code} {response.text[:300]}"
            )
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def measure(peer: Peer, case: Case, users: int, seconds: float, chunks: int) -> dict[str, Any]:
    warm_up(peer.port, case, peer.request_headers)
    asyncio.run(load(peer.port, case, users, 2.0, peer.request_headers))
    cpu_before = peer.cpu_seconds()
    started = time.monotonic()
    done, failed = asyncio.run(load(peer.port, case, users, seconds, peer.request_headers))
    elapsed = time.monotonic() - started
    cpu = peer.cpu_seconds() - cpu_before
    carried = done * chunks
    return {
        "peer": peer.name,
        "case": case.label,
        "streams": done,
        "failed": failed,
        "chunks_per_s": carried / elapsed,
        "cpu_us_per_chunk": cpu / carried * 1e6 if carried else None,
        "cpu_share": cpu / elapsed,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| gateway | request | streams | failed | chunks/s | CPU µs per chunk | vs filterproxy pass-through |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    base = next((r["cpu_us_per_chunk"] for r in rows if r["peer"] == "filterproxy"), None)
    for r in rows:
        per = r["cpu_us_per_chunk"]
        ratio = f"{per / base:.2f}" if per and base else "—"
        lines.append(
            f"| {r['peer']} | {r['case']} | {r['streams']} | {r['failed']} | {r['chunks_per_s']:,.0f} | "
            f"{per:.1f} | {ratio} |"
            if per
            else f"| {r['peer']} | {r['case']} | 0 | {r['failed']} | — | — | — |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--peers", default="filterproxy,litellm,portkey")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    wanted = set(args.peers.split(","))
    for name, companions in COMPANIONS.items():
        if name in wanted:
            wanted.update(companions)
    rows = []
    with contextlib.ExitStack() as running:
        upstream = Upstream("--format", "chat", "--chunks", str(args.chunks), "--interval-ms", "0")
        running.callback(upstream.stop)
        messages = Upstream("--chunks", str(args.chunks), script="bedrock_upstream.py")
        running.callback(messages.stop)
        os.sched_setaffinity(0, {LOAD_CORE})
        tmp = running.enter_context(tempfile.TemporaryDirectory())
        available = gateway_peers(Path(tmp), upstream.port, messages.port)
        for name in [p for p in available if p in wanted]:
            peer = available[name]
            peer.start(str(PROXY_CORE))
            try:
                for case in (c for c in CASES if c.peer == name):
                    rows.append(measure(peer, case, args.users, args.seconds, args.chunks))
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
            finally:
                peer.stop()
    text = table(rows)
    print(text)
    if not args.no_save:
        header = (
            f"# Translated streams, {datetime.date.today().isoformat()}\n\n{args.users} streams "
            f"at once, {args.chunks} content chunks each, {args.seconds:.0f} s per row; gateway "
            f"on core {PROXY_CORE}, upstream and clients on core {LOAD_CORE}.\n\n"
        )
        save_results("translate", header, text, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
