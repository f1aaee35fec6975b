"""The resumable-stream scenario: what ``resume`` on a route costs.

    make bench-resume
    .venv-bench/bin/python -m bench.resume --seconds 20

CPU: as bench/translate.py measures it — the upstream (bench/upstream.py ``--format
chat``) answers every streaming request with ``--chunks`` token-sized chat chunks as
fast as the socket takes them; ``--users`` clients stream for ``--seconds``; the gateway
runs alone on core 0 and what is reported is its CPU time per content chunk. Rows: the
benchmark's own chain (conf/bench.yaml, no resume anywhere); a plain route of a gateway
whose other route is resumable (the resume filter in the chain, passing it by); the
resumable route.

Memory: ``--open`` streams held open at once (a chunk each 50 ms), each read to its
half, in a fresh gateway each time (the same warm-up: one stream on each route): on
the plain route, then on the resumable one. The difference of the gateway's RSS with
them open, per stream, is what a resumable stream costs — next to what its buffer holds
(the gauge ``filterproxy_resume_buffer_bytes``).

Results go to bench/results/<date>-<machine>-resume.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.peers import BIN, Peer, save_results
from bench.run import LOAD_CORE, PROXY_CORE, Upstream
from bench.translate import CLIENT_KEY, Case, measure, warm_up

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PORT = 8811
ADMIN = 9911
BODY = {"model": "bench", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
RESUMABLE = {**BODY, "model": "bench-resume"}
GATEWAY_CONF = """
listeners: []
access_log: false
admin: {{listen: "tcp:{admin}:interface=127.0.0.1"}}
clusters:
  upstream:
    url: http://127.0.0.1:{upstream}
    max_idle_connections: 1024
    request_headers:
      set:
        authorization: Bearer sk-bench
routes:
  - name: resumable
    models: [bench-resume]
    cluster: upstream
    resume: true
  - name: plain
    cluster: upstream
"""
CASES = [
    Case("filterproxy", "no resume in the gateway", "/v1/chat/completions", BODY, b"[DONE]"),
    Case("filterproxy-resume", "plain route", "/v1/chat/completions", BODY, b"[DONE]"),
    Case("filterproxy-resume", "resumable route", "/v1/chat/completions", RESUMABLE, b"[DONE]"),
]


def peers(workdir: Path, upstream: int) -> dict[str, Peer]:
    twistd = [str(BIN / "twistd"), "-n", "--pidfile=", "-l", str(workdir / "gateway.log")]
    listen = ["--listen", f"tcp:{PORT}:interface=127.0.0.1"]
    conf = workdir / "resume.yaml"
    conf.write_text(GATEWAY_CONF.format(upstream=upstream, admin=ADMIN))
    return {
        "filterproxy": Peer(
            "filterproxy",
            [*twistd, "filterproxy", "-c", str(ROOT / "conf" / "bench.yaml"), *listen],
            env={"FILTERPROXY_UPSTREAM": f"http://127.0.0.1:{upstream}"},
            listen_port=PORT,
        ),
        "filterproxy-resume": Peer(
            "filterproxy-resume",
            [*twistd, "filterproxy", "-c", str(conf), *listen],
            listen_port=PORT,
        ),
    }


def buffer_bytes() -> float:
    text = httpx.get(f"http://127.0.0.1:{ADMIN}/metrics").text
    match = re.search(r"^filterproxy_resume_buffer_bytes (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def hold_open(body: dict[str, Any], count: int, chunks: int, ready: asyncio.Event) -> None:
    """*count* streams of *chunks* chunks (50 ms apart), each read until its half."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    headers = {
        "authorization": f"Bearer {CLIENT_KEY}",
        "x-bench-chunks": str(chunks),
        "x-bench-interval-ms": "50",
    }
    halfway = 0
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{PORT}", limits=limits, timeout=120
    ) as client:

        async def one() -> None:
            nonlocal halfway
            counted = False
            async with client.stream(
                "POST", "/v1/chat/completions", json=body, headers=headers
            ) as response:
                seen = 0
                async for piece in response.aiter_raw():
                    seen += piece.count(b"data: ")
                    if not counted and seen >= chunks // 2:
                        counted = True
                        halfway += 1
                        if halfway == count:
                            ready.set()

        await asyncio.gather(*(one() for _ in range(count)))


def memory(peer: Peer, body: dict[str, Any], count: int, chunks: int) -> dict[str, Any]:
    """The gateway's memory with *count* streams open, each halfway."""
    for case in CASES[1:]:
        warm_up(peer.port, case)

    async def run() -> dict[str, Any]:
        before = peer.rss_bytes()
        ready = asyncio.Event()
        task = asyncio.ensure_future(hold_open(body, count, chunks, ready))
        await asyncio.wait_for(ready.wait(), 120)
        await asyncio.sleep(0.1)
        rss = peer.rss_bytes()
        held = buffer_bytes()
        await task
        return {
            "rss": rss,
            "rss_per_stream": (rss - before) / count,
            "buffer_per_stream": held / count,
        }

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--open", type=int, default=200)
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    upstream = Upstream("--format", "chat", "--chunks", str(args.chunks), "--interval-ms", "0")
    os.sched_setaffinity(0, {LOAD_CORE})
    rows: list[dict[str, Any]] = []
    memory_rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            available = peers(Path(tmp), upstream.port)
            for name, peer in available.items():
                if args.memory_only:
                    break
                peer.start(str(PROXY_CORE))
                try:
                    for case in (c for c in CASES if c.peer == name):
                        rows.append(measure(peer, case, args.users, args.seconds, args.chunks))
                        print(rows[-1], flush=True)
                finally:
                    peer.stop()
            peer = available["filterproxy-resume"]
            for label, body in (("plain route", BODY), ("resumable route", RESUMABLE)):
                peer.start(str(PROXY_CORE))
                try:
                    found = memory(peer, body, args.open, args.chunks)
                finally:
                    peer.stop()
                memory_rows.append({"case": label, **found})
                print(memory_rows[-1], flush=True)
    finally:
        upstream.stop()
    base = next(
        (r["cpu_us_per_chunk"] for r in rows if r["case"] == "no resume in the gateway"), 1.0
    )
    lines = [
        "| route | streams | CPU µs per chunk | vs no resume |",
        "|---|---:|---:|---:|",
        *(
            f"| {r['case']} | {r['streams']} | {r['cpu_us_per_chunk']:.1f} | "
            f"{r['cpu_us_per_chunk'] / base:.2f} |"
            for r in rows
        ),
        "",
        f"| {args.open} streams open, halfway | gateway RSS | RSS growth per stream | buffer per stream |",
        "|---|---:|---:|---:|",
        *(
            f"| {m['case']} | {m['rss'] / 2**20:.1f} MiB | {m['rss_per_stream'] / 1024:.1f} KiB | "
            f"{m['buffer_per_stream'] / 1024:.1f} KiB |"
            for m in memory_rows
        ),
    ]
    if len(memory_rows) == 2:
        plain, resumable = memory_rows
        extra = (resumable["rss"] - plain["rss"]) / args.open
        lines += [
            "",
            f"A resumable stream costs {extra / 1024:.1f} KiB more than a plain one, of which "
            f"its buffer {resumable['buffer_per_stream'] / 1024:.1f} KiB: "
            f"{(extra - resumable['buffer_per_stream']) / 1024:.1f} KiB besides.",
        ]
    text = "\n".join(lines)
    print(text)
    if not args.no_save:
        header = (
            f"# Resumable streams, {datetime.date.today().isoformat()}\n\n{args.users} streams "
            f"at once, {args.chunks} chunks each, {args.seconds:.0f} s per row; gateway on core "
            f"{PROXY_CORE}, upstream and clients on core {LOAD_CORE}. Memory: {args.open} "
            "streams open.\n\n"
        )
        save_results(
            "resume", header, text, {"args": vars(args), "rows": rows, "memory": memory_rows}
        )


if __name__ == "__main__":
    main()
