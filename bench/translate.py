"""The translated-stream scenario: CPU per chunk of a Messages stream and of a Responses
stream translated from Chat Completions, next to pass-through, and next to LiteLLM
translating the same Messages stream.

    make bench-translate
    .venv-bench/bin/python -m bench.translate --seconds 20 --peers filterproxy,litellm

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
- LiteLLM's proxy (when installed: ``pip install 'litellm[proxy]'``) for the same two
  requests, with one worker.

Results go to bench/results/<date>-<machine>-translate.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.peers import BIN, Peer, save_results
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
LITELLM_CONF = """
model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_base: http://127.0.0.1:{upstream}/v1
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
    Case("litellm", "pass-through", "/v1/chat/completions", CHAT_BODY, b"[DONE]"),
    Case(
        "litellm",
        "translated: Messages client, chat upstream",
        "/v1/messages",
        MESSAGES_BODY,
        b"message_stop",
    ),
]


def gateway_peers(workdir: Path, upstream: int) -> dict[str, Peer]:
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
    }
    litellm = shutil.which("litellm", path=str(BIN))
    if litellm:
        lconf = workdir / "litellm.yaml"
        lconf.write_text(LITELLM_CONF.format(upstream=upstream))
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
    return found


async def load(port: int, case: Case, users: int, seconds: float) -> tuple[int, int]:
    """(complete streams, failed streams) of *users* clients streaming for *seconds*."""
    headers = {
        "authorization": f"Bearer {CLIENT_KEY}",
        "x-api-key": CLIENT_KEY,
        "anthropic-version": "2023-06-01",
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


def warm_up(port: int, case: Case) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            response = httpx.post(
                f"http://127.0.0.1:{port}{case.path}",
                json=case.body,
                timeout=30,
                headers={"authorization": f"Bearer {CLIENT_KEY}"},
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
    warm_up(peer.port, case)
    asyncio.run(load(peer.port, case, users, 2.0))
    cpu_before = peer.cpu_seconds()
    started = time.monotonic()
    done, failed = asyncio.run(load(peer.port, case, users, seconds))
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
    parser.add_argument("--peers", default="filterproxy,filterproxy-translate,litellm")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    wanted = set(args.peers.split(","))
    if "filterproxy" in wanted:
        wanted.add("filterproxy-translate")
    upstream = Upstream("--format", "chat", "--chunks", str(args.chunks), "--interval-ms", "0")
    upstream_port = upstream.port
    os.sched_setaffinity(0, {LOAD_CORE})
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            available = gateway_peers(Path(tmp), upstream_port)
            for name in [p for p in available if p in wanted]:
                peer = available[name]
                peer.start(str(PROXY_CORE))
                try:
                    for case in (c for c in CASES if c.peer == name):
                        rows.append(measure(peer, case, args.users, args.seconds, args.chunks))
                        print(table(rows[-1:]).splitlines()[-1], flush=True)
                finally:
                    peer.stop()
    finally:
        upstream.stop()
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
