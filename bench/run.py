"""The benchmark: filterproxy next to direct, nginx, Envoy and Portkey's gateway, in one
run on this machine.

    make bench                      # all peers, all scenarios (three rounds: about 25 minutes)
    .venv/bin/python -m bench.run --peers filterproxy,envoy --quick

Each proxy runs alone on core 0; the mock upstream and the load generators share core 1.
The chat-stream scenarios run their load generator at real-time priority on core 1 (see
`reading_at_once`), so that it reads each chunk when it arrives instead of when the upstream
next yields the core: what they measure is the proxy's latency, not the load generator's.
The 200-stream one runs once more with a reader at normal priority for the CPU per chunk
(the table gives both).
Portkey is told its upstream by each request (``x-portkey-provider: openai`` and the
mock's address as its custom host): every load generator adds its `Peer.request_headers`,
and the events it passes are checked byte for byte as for the others.
The HTTP/2-upstream rows run the 200-stream and non-streaming loads once more with the
proxy speaking HTTP/2 (h2c, prior knowledge) to bench/h2_upstream.py, an HTTP/2 mock
sending the same events, on the load core; filterproxy with conf/bench-h2-upstream.yaml
(its cluster's ``protocol: http2``), Envoy with ``http2_protocol_options`` on its
cluster (nginx cannot proxy to an HTTP/2 upstream). The mock's own CPU is measured with
each: where it nears its whole core, the mock set the pace (the table says so).

A change's before and after in one run: ``--before DIR`` (``make bench BEFORE=DIR``)
adds a peer ``filterproxy-before``, the gateway from DIR, another source or build tree
(a tree compiled in place, ``setup.py build_ext --inplace``, runs its compiled modules),
with the same Python, config, scenarios and core as ``filterproxy``: DIR goes first on
its PYTHONPATH. The run says where each gateway's modules were imported from, and stops
if any of ``filterproxy-before``'s come from elsewhere.

    make bench BEFORE=../old-tree BENCH_ARGS="--peers filterproxy --quick"

Results are written to bench/results/<date>-<machine>.{md,json,png} and printed.
Numbers are only comparable within one run: read them as ratios between the peers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.loadgen import StreamShape, header_lines, hold_streams, run_streams
from bench.peers import Peer, PeerUnavailable, check_source_tree, compiled_gateway_files, peers

HERE = Path(__file__).resolve().parent
PROXY_CORE, LOAD_CORE = 0, 1
SLOW_OFFER = 200 * 1024 * 1024
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-client"
"""


def wrk_script(headers: Mapping[str, str]) -> str:
    """wrk's Lua script for the non-streaming load, adding *headers* to each request."""
    quoted = (json.dumps(k) for k in headers)
    return WRK_SCRIPT + "".join(
        f"wrk.headers[{name}] = {json.dumps(value)}\n"
        for name, value in zip(quoted, headers.values(), strict=True)
    )


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


class Upstream:
    """bench/upstream.py on the load core (*options* are its own, e.g. ``--format chat``);
    or another mock upstream that prints its port as it does (*script*, such as
    ``bedrock_upstream.py``, or *module*, such as ``bench.h2_upstream``)."""

    def __init__(
        self, *options: str, script: str = "upstream.py", module: str | None = None
    ) -> None:
        program = ["-m", module] if module else [str(HERE / script)]
        self.process = subprocess.Popen(
            [
                "taskset",
                "-c",
                str(LOAD_CORE),
                sys.executable,
                *program,
                "--port",
                "0",
                *options,
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE.parent,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        self.port = int(line.split()[1])

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"http://127.0.0.1:{self.port}/stats").json()  # type: ignore[no-any-return]

    def cpu_seconds(self) -> float:
        """The CPU time the mock has used so far (user and system)."""
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


class LoadCoreUse:
    """How busy the load core and the mock *upstream* on it were from creation to
    `shares`: where the load core (mock and load generator together) is near full, the
    load, not the proxy, set the pace."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.started = time.monotonic()
        self.mock_cpu = upstream.cpu_seconds()
        self.core_busy = self._core_busy()

    @staticmethod
    def _core_busy() -> float:
        times = psutil.cpu_times(percpu=True)[LOAD_CORE]
        return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))

    def shares(self) -> dict[str, float]:
        """The mock's share of a core and the load core's busy share, since creation."""
        elapsed = time.monotonic() - self.started
        return {
            "upstream_core_share": (self.upstream.cpu_seconds() - self.mock_cpu) / elapsed,
            "load_core_busy": (self._core_busy() - self.core_busy) / elapsed,
        }


@contextlib.contextmanager
def reading_at_once() -> Iterator[bool]:
    """Run this process (the load generator) at real-time priority while inside: it then
    reads a chunk as soon as the kernel has it, rather than when the mock upstream, which
    shares its core, next yields. Without it the latency measured direct (no proxy at all)
    was 1.3 ms at p99 on a 2-core machine: the load generator's own wait for the core,
    which hid the proxies' differences. Children do not inherit it. Yields whether it took
    (it needs root or CAP_SYS_NICE; without, the run goes on at normal priority)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(10))
    except (OSError, AttributeError):
        yield False
        return
    try:
        yield True
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def streaming(
    peer: Peer,
    users: int,
    shape: StreamShape,
    seconds: float,
    at_once: bool = False,
    upstream: Upstream | None = None,
) -> dict[str, Any]:
    """*users* streaming clients for *seconds*; *at_once*: with `reading_at_once`. With
    *upstream*, how busy its mock and the load core were meanwhile too (`LoadCoreUse`)."""
    cpu_before = peer.cpu_seconds()
    load = LoadCoreUse(upstream) if upstream else None
    started = time.monotonic()
    with reading_at_once() if at_once else contextlib.nullcontext(False) as realtime:
        stats = asyncio.run(
            run_streams(peer.port, users, shape, seconds, headers=peer.request_headers)
        )
    elapsed = time.monotonic() - started
    cpu = peer.cpu_seconds() - cpu_before
    return {
        **(load.shares() if load else {}),
        "streams_per_s": stats.streams / seconds,
        "chunks_per_s": stats.chunks / seconds,
        "ttfb_p50_ms": percentile(stats.ttfb_ms, 50),
        "ttfb_p99_ms": percentile(stats.ttfb_ms, 99),
        "chunk_p50_ms": percentile(stats.latency_ms, 50),
        "chunk_p99_ms": percentile(stats.latency_ms, 99),
        "chunk_p999_ms": percentile(stats.latency_ms, 99.9),
        "errors": stats.errors + stats.mismatches,
        "error_samples": stats.error_samples,
        "load_generator_realtime": realtime,
        # CPU over the whole run (warm-up included) per chunk delivered in it.
        "cpu_us_per_chunk": cpu * 1e6 / max(1, stats.chunks * elapsed / seconds)
        if peer.process
        else None,
    }


def non_streaming(
    peer: Peer,
    seconds: float,
    workdir: Path,
    cores: str = str(LOAD_CORE),
    upstream: Upstream | None = None,
) -> dict[str, Any]:
    """wrk, 50 connections, for *seconds*. With *upstream*, how busy its mock and the
    load core were meanwhile too (`LoadCoreUse`)."""
    script = workdir / "post.lua"
    script.write_text(wrk_script(peer.request_headers))
    cpu_before = peer.cpu_seconds()
    load = LoadCoreUse(upstream) if upstream else None
    out = subprocess.run(
        [
            "taskset",
            "-c",
            str(LOAD_CORE),
            "wrk",
            "-t1",
            "-c50",
            f"-d{int(seconds)}s",
            "-s",
            str(script),
            f"http://127.0.0.1:{peer.port}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = peer.cpu_seconds() - cpu_before
    shares = load.shares() if load else {}
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        **shares,
        "requests_per_s": requests / seconds,
        "errors": int(errors.group(1)) if errors else 0,
        "cpu_us_per_request": cpu * 1e6 / requests if peer.process and requests else None,
    }


#: Peers whose listener speaks HTTP/2 (h2c with prior knowledge) in this benchmark
#: (Portkey's Node server is HTTP/1.1 only).
HTTP2_PEERS = {"envoy", "filterproxy", "filterproxy-before"}


def http2(peer: Peer, seconds: float, workdir: Path, *, streaming: bool) -> dict[str, Any]:
    """Many streams on few connections: h2load, 4 connections x 50 concurrent streams,
    HTTP/2 with prior knowledge (the proxies speak HTTP/1.1 to the upstream)."""
    body = workdir / ("h2-stream.json" if streaming else "h2-plain.json")
    body.write_text(
        '{"model":"bench","stream":true,"messages":[]}'
        if streaming
        else '{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
    )
    cpu_before = peer.cpu_seconds()
    out = subprocess.run(
        [
            "taskset",
            "-c",
            str(LOAD_CORE),
            "h2load",
            "-c4",
            "-m50",
            f"-D{int(seconds)}",
            "--warm-up-time=1",
            "-d",
            str(body),
            "-H",
            "content-type: application/json",
            "-H",
            "x-bench-chunks: 50",
            "-H",
            "x-bench-interval-ms: 20",
            f"http://127.0.0.1:{peer.port}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = peer.cpu_seconds() - cpu_before
    done = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
        out,
    )
    per_s = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    timing = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    assert done and per_s, out
    completed = int(done.group(2))
    failed = int(done.group(3)) + int(done.group(4)) + (int(done.group(1)) - completed)
    result: dict[str, Any] = {
        "requests_per_s": float(per_s.group(1)),
        "errors": failed,
        "request_mean_ms": _ms(timing.group(3)) if timing else None,
        "request_max_ms": _ms(timing.group(2)) if timing else None,
    }
    if completed:
        result["cpu_us_per_request"] = cpu * 1e6 / completed  # includes the warm-up
        if streaming:
            result["cpu_us_per_chunk"] = cpu * 1e6 / (completed * 51)
    return result


def _ms(value: str) -> float:
    """An h2load duration (``1.02s``, ``20.5ms``, ``900us``) in milliseconds."""
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * factor
    return float(value)


def slow_client(peer: Peer, upstream: Upstream) -> dict[str, Any]:
    rss_before = peer.rss_bytes()
    offered_before = upstream.stats()["bulk_bytes"]
    body = b'{"model": "bench", "stream": true}'
    sock = socket.create_connection(("127.0.0.1", peer.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"x-bench-bulk: %d\r\n%sContent-Length: %d\r\n\r\n%s"
        % (SLOW_OFFER, header_lines(peer.request_headers), len(body), body)
    )
    time.sleep(5)  # read nothing
    offered = upstream.stats()["bulk_bytes"] - offered_before
    growth = peer.rss_bytes() - rss_before
    sock.close()
    time.sleep(1)
    return {
        "upstream_mb_sent": offered / 1e6,
        "rss_growth_mb": growth / 1e6 if peer.process else None,
    }


def hang_ups(peer: Peer, upstream: Upstream, count: int = 20) -> dict[str, Any]:
    before = upstream.stats()["open_streams"]
    socks = []
    request = StreamShape(chunks=600, interval_ms=100, pad=16).request(
        "bench", peer.request_headers
    )
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", peer.port))
        sock.sendall(request)
        socks.append(sock)
    for sock in socks:
        sock.settimeout(10)
        sock.recv(4096)
    for sock in socks:
        sock.close()
    time.sleep(1.0)
    still_open = upstream.stats()["open_streams"] - before
    return {"upstream_closed_within_1s": count - still_open}


def open_streams(peer: Peer, count: int) -> dict[str, Any]:
    if peer.process is None:
        return {"rss_kb_per_stream": None}
    idle = peer.rss_bytes()
    sampled: dict[str, int] = {}
    asyncio.run(
        hold_streams(
            peer.port,
            count,
            30,
            lambda: sampled.setdefault("rss", peer.rss_bytes()),
            peer.request_headers,
        )
    )
    time.sleep(2)
    return {"rss_kb_per_stream": (sampled["rss"] - idle) / count / 1024}


def measure_peer(peer: Peer, upstream: Upstream, workdir: Path, quick: bool) -> dict[str, Any]:
    """Every single-core scenario on *peer* (started, on the proxy core)."""
    seconds = 4.0 if quick else 10.0
    r: dict[str, Any] = {"idle_rss_mb": peer.rss_bytes() / 1e6 if peer.process else None}
    # First, while the process is fresh: memory freed by later scenarios
    # would otherwise be reused and hide what open streams cost.
    r["open_streams"] = open_streams(peer, 300 if quick else 1000)
    chat = StreamShape(chunks=50, interval_ms=20)
    r["stream50"] = streaming(peer, 50, chat, seconds, at_once=True)
    r["stream200"] = streaming(peer, 200, chat, seconds, at_once=True)
    # The CPU a chunk costs also with a reader at normal priority: one that does not
    # preempt the upstream as each forwarded chunk arrives (nor would a client on
    # another machine), so the upstream's bursts reach the proxy as the upstream sends them.
    r["stream200_plain"] = streaming(peer, 200, chat, seconds)
    r["firehose"] = streaming(peer, 10, StreamShape(chunks=2000, interval_ms=0), seconds)
    r["nonstream"] = non_streaming(peer, seconds, workdir)
    if peer.name in HTTP2_PEERS and shutil.which("h2load"):
        r["h2_stream"] = http2(peer, seconds, workdir, streaming=True)
        r["h2_plain"] = http2(peer, seconds, workdir, streaming=False)
    r["hang_ups"] = hang_ups(peer, upstream)
    # Last: a proxy that reads the slow client's stream without backpressure may still be
    # busy with it after the scenario (Portkey, which looks for the end of an event in all
    # it has read so far, never finds one in the 200 MB of comment lines and holds it all).
    r["slow_client"] = slow_client(peer, upstream)
    return r


def measure_h2_upstream(
    peer: Peer, upstream: Upstream, workdir: Path, quick: bool
) -> dict[str, Any]:
    """The client loads of ``stream200`` (reader at real-time priority), ``stream200_plain``
    and ``nonstream`` on *peer* (a `Peer.h2_upstream`, started), which forwards them over
    h2c to the HTTP/2 mock *upstream*; each result has the mock's core use besides
    (``upstream_core_share``): near 1, the mock, not the proxy, set the pace."""
    seconds = 4.0 if quick else 10.0
    chat = StreamShape(chunks=50, interval_ms=20)
    return {
        "stream200": streaming(peer, 200, chat, seconds, at_once=True, upstream=upstream),
        "stream200_plain": streaming(peer, 200, chat, seconds, upstream=upstream),
        "nonstream": non_streaming(peer, seconds, workdir, upstream=upstream),
    }


def _realtime_note(results: dict[str, Any]) -> str:
    took = [
        r["stream200"].get("load_generator_realtime")
        for r in results.values()
        if isinstance(r, dict) and isinstance(r.get("stream200"), dict)
    ]
    return "" if all(took) else " (NOT granted in this run: needs root or CAP_SYS_NICE)"


def median_of(rounds: list[Any]) -> Any:
    """The rounds' results merged: numbers by their median, dicts key by key, anything
    else (error samples, None) as the first round had it."""
    first = rounds[0]
    if isinstance(first, dict):
        return {
            k: median_of([r[k] for r in rounds if isinstance(r, dict) and k in r]) for k in first
        }
    numbers = [r for r in rounds if isinstance(r, int | float) and not isinstance(r, bool)]
    if numbers and len(numbers) == len(rounds):
        middle = statistics.median(numbers)
        return (
            int(middle)
            if all(isinstance(n, int) for n in numbers) and middle == int(middle)
            else middle
        )
    return first


def loaded_from(peer: Peer, before: Path | None) -> str:
    """A line saying where the running filterproxy *peer* has its compiled modules from.

    Raises:
        PeerUnavailable: *peer* is ``filterproxy-before`` and loaded a compiled module
            from outside *before*, or none from it while it has some.
    """
    files = compiled_gateway_files(peer)
    places = sorted({str(Path(f).parent) for f in files if "__mypyc" in Path(f).name})
    if peer.name == "filterproxy-before" and before is not None:
        root = before.resolve()
        elsewhere = [f for f in files if not Path(f).resolve().is_relative_to(root)]
        if elsewhere or (not files and any(root.glob("filterproxy/**/*.so"))):
            raise PeerUnavailable(
                f"filterproxy-before: runs compiled modules from outside {before} "
                f"({', '.join(elsewhere[:2]) or 'none from it'})"
            )
    if not files:
        return f"{peer.name}: no compiled modules loaded (pure Python)"
    return f"{peer.name}: {len(files)} compiled modules loaded, from {', '.join(places)}"


def run(
    only: set[str] | None, quick: bool, rounds: int, before: Path | None = None
) -> dict[str, Any]:
    """*rounds* times: every peer in turn on the proxy core (and its HTTP/2-upstream
    set-up right after it), then the scaling run; the result is each number's median over
    the rounds (``_rounds`` keeps them all). Taking the peers in turn, round after round,
    spreads the machine's slower minutes over all of them instead of whichever peer ran
    then. *before*: also a peer ``filterproxy-before``, the gateway from that tree."""
    os.sched_setaffinity(0, {LOAD_CORE})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    seconds = 4.0 if quick else 10.0
    if before is not None:
        print(check_source_tree(before), flush=True)
    upstream = Upstream()
    try:
        h2_upstream = Upstream(module="bench.h2_upstream")
    except BaseException:
        upstream.stop()
        raise
    os.environ["BENCH_UPSTREAM_PORT"] = str(upstream.port)
    every: list[dict[str, Any]] = []
    announced: set[str] = set()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            found = peers(
                workdir, upstream.port, only, h2_upstream_port=h2_upstream.port, before=before
            )
            scaling = [p for p in found if p.name.startswith("filterproxy")]
            for number in range(1, rounds + 1):
                results: dict[str, Any] = {}
                for peer in found:
                    if peer.name == "filterproxy-2-workers":
                        continue
                    print(f"--- round {number}/{rounds}: {peer.name}", flush=True)
                    peer.start(str(PROXY_CORE))
                    try:
                        if peer.name.startswith("filterproxy") and peer.name not in announced:
                            print(loaded_from(peer, before), flush=True)
                            announced.add(peer.name)
                        results[peer.name] = measure_peer(peer, upstream, workdir, quick)
                    finally:
                        peer.stop()
                    if peer.h2_upstream is not None:
                        print(f"--- round {number}/{rounds}: {peer.name}, HTTP/2 upstream")
                        peer.h2_upstream.start(str(PROXY_CORE))
                        try:
                            results[peer.name]["h2_upstream"] = measure_h2_upstream(
                                peer.h2_upstream, h2_upstream, workdir, quick
                            )
                        finally:
                            peer.h2_upstream.stop()
                    print(json.dumps(results[peer.name], indent=1, default=str), flush=True)
                # Scaling: one and two workers on both cores, sharing them with the load.
                for peer in scaling:
                    print(f"--- round {number}/{rounds}: scaling, {peer.name}", flush=True)
                    os.sched_setaffinity(0, {PROXY_CORE, LOAD_CORE})
                    peer.start(f"{PROXY_CORE},{LOAD_CORE}")
                    try:
                        out = non_streaming(
                            peer, seconds, workdir, cores=f"{PROXY_CORE},{LOAD_CORE}"
                        )
                        results.setdefault("_scaling", {})[peer.name] = out["requests_per_s"]
                    finally:
                        peer.stop()
                        os.sched_setaffinity(0, {LOAD_CORE})
                every.append(results)
    finally:
        upstream.stop()
        h2_upstream.stop()
    merged: dict[str, Any] = median_of(every)
    if rounds > 1:
        merged["_rounds"] = every
    return merged


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def table(all_results: dict[str, Any]) -> str:
    results = {k: v for k, v in all_results.items() if not k.startswith("_")}
    rows = [
        "| | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
    ]

    def row(label: str, pick: Any, digits: int = 1) -> None:
        rows.append(
            f"| {label} | " + " | ".join(fmt(pick(r), digits) for r in results.values()) + " |"
        )

    for name, users in (("stream50", 50), ("stream200", 200)):
        row(f"{users} streams: streams/s", lambda r, n=name: r[n]["streams_per_s"])
        row(
            f"{users} streams: TTFB p50 / p99 ms",
            lambda r, n=name: f"{fmt(r[n]['ttfb_p50_ms'], 2)} / {fmt(r[n]['ttfb_p99_ms'], 2)}",
        )
        row(
            f"{users} streams: chunk latency p50 / p99 / p99.9 ms",
            lambda r, n=name: (
                f"{fmt(r[n]['chunk_p50_ms'], 2)} / {fmt(r[n]['chunk_p99_ms'], 2)} / {fmt(r[n]['chunk_p999_ms'], 2)}"
            ),
        )
        row(f"{users} streams: errors", lambda r, n=name: r[n]["errors"])
    row(
        "200 streams: proxy CPU µs per chunk, reader at normal / real-time priority",
        lambda r: (
            f"{fmt(r['stream200_plain']['cpu_us_per_chunk'])} / "
            f"{fmt(r['stream200']['cpu_us_per_chunk'])}"
        ),
    )
    row("firehose: chunks/s", lambda r: r["firehose"]["chunks_per_s"], 0)
    row("firehose: proxy CPU µs per chunk", lambda r: r["firehose"]["cpu_us_per_chunk"])
    row("non-streaming: requests/s", lambda r: r["nonstream"]["requests_per_s"], 0)
    row("non-streaming: proxy CPU µs per request", lambda r: r["nonstream"]["cpu_us_per_request"])
    row(
        "slow client: upstream MB sent of 200 / proxy RSS growth MB",
        lambda r: (
            f"{fmt(r['slow_client']['upstream_mb_sent'])} / {fmt(r['slow_client']['rss_growth_mb'], 2)}"
        ),
    )
    row(
        "20 hung-up clients: upstream streams closed within 1 s",
        lambda r: r["hang_ups"]["upstream_closed_within_1s"],
    )
    row(
        "HTTP/2, 4 connections x 50 streams: streams/s (mean ms each) / errors",
        lambda r: (
            f"{fmt(r['h2_stream']['requests_per_s'])} ({fmt(r['h2_stream']['request_mean_ms'], 0)}) / {r['h2_stream']['errors']}"
            if "h2_stream" in r
            else "—"
        ),
    )
    row(
        "HTTP/2 streams: proxy CPU µs per chunk",
        lambda r: r["h2_stream"].get("cpu_us_per_chunk") if "h2_stream" in r else None,
    )
    row(
        "HTTP/2 non-streaming: requests/s / errors",
        lambda r: (
            f"{fmt(r['h2_plain']['requests_per_s'], 0)} / {r['h2_plain']['errors']}"
            if "h2_plain" in r
            else "—"
        ),
    )
    row(
        "HTTP/2 non-streaming: proxy CPU µs per request",
        lambda r: r["h2_plain"].get("cpu_us_per_request") if "h2_plain" in r else None,
    )
    h2_upstream_rows(row)
    row("RSS per open stream KB", lambda r: r["open_streams"]["rss_kb_per_stream"])
    row("idle RSS MB", lambda r: r["idle_rss_mb"])
    rows.append("")
    rows.append(H2_UPSTREAM_NOTE + _saturation_note(results))
    scaling = all_results.get("_scaling")
    if scaling:
        rows.append("")
        rows.append(
            "Scaling (non-streaming requests/s, proxy, upstream and wrk sharing both cores): "
            + ", ".join(f"{name} {value:,.0f}" for name, value in scaling.items())
        )
    return "\n".join(rows)


#: Said under the table: what the HTTP/2-upstream rows measure, and why some peers have none.
H2_UPSTREAM_NOTE = (
    "HTTP/2 upstream: the 200-stream and non-streaming loads (HTTP/1.1 from the clients) "
    "with the proxy forwarding over HTTP/2 (h2c, prior knowledge) to an HTTP/2 mock "
    "upstream (bench/h2_upstream.py, same events, on the load core); mock's CPU: its "
    "share of a core over the scenario, and in brackets how busy the load core was "
    "(mock and load generator together). — for nginx (it cannot proxy to an HTTP/2 "
    "upstream), and for direct and Portkey (not measured)."
)
#: How busy the load core (the mock and the load generator) may be before a row measures
#: them rather than the proxy.
SATURATED = 0.9


def h2_upstream_rows(row: Any) -> None:
    """The HTTP/2-upstream rows of `table` (*row* adds one)."""

    def pick(scenario: str, key: str) -> Any:
        return lambda r: r.get("h2_upstream", {}).get(scenario, {}).get(key)

    def both(first: Any, second: Any, digits: int = 1, sep: str = " / ") -> Any:
        return lambda r: (
            "—"
            if "h2_upstream" not in r
            else f"{fmt(first(r), digits)}{sep}{fmt(second(r), digits)}"
        )

    def share(scenario: str) -> Any:
        def cell(r: dict[str, Any]) -> str | None:
            mock = pick(scenario, "upstream_core_share")(r)
            core = pick(scenario, "load_core_busy")(r)
            if mock is None or core is None:
                return None
            return f"{mock * 100:.0f} % ({core * 100:.0f} %)"

        return cell

    row(
        "HTTP/2 upstream, 200 streams: streams/s / chunk latency p99 ms / errors",
        lambda r: (
            "—"
            if "h2_upstream" not in r
            else f"{fmt(pick('stream200', 'streams_per_s')(r))} / "
            f"{fmt(pick('stream200', 'chunk_p99_ms')(r), 2)} / "
            f"{fmt(pick('stream200', 'errors')(r))}"
        ),
    )
    row(
        "HTTP/2 upstream, 200 streams: proxy CPU µs per chunk, reader at normal / real-time priority",
        both(pick("stream200_plain", "cpu_us_per_chunk"), pick("stream200", "cpu_us_per_chunk")),
    )
    row(
        "HTTP/2 upstream, non-streaming: requests/s / errors",
        both(pick("nonstream", "requests_per_s"), pick("nonstream", "errors"), 0),
    )
    row(
        "HTTP/2 upstream, non-streaming: proxy CPU µs per request",
        pick("nonstream", "cpu_us_per_request"),
    )
    row(
        "HTTP/2 upstream: mock's CPU (load core busy), 200 streams at normal priority / non-streaming",
        both(share("stream200_plain"), share("nonstream")),
    )


def _saturation_note(results: dict[str, Any]) -> str:
    """What to make of HTTP/2-upstream rows whose load core was (nearly) full."""
    busy = [
        f"{name} ({scenario})"
        for name, r in results.items()
        for scenario, out in r.get("h2_upstream", {}).items()
        if (out.get("load_core_busy") or 0) >= SATURATED
    ]
    if not busy:
        return ""
    return (
        f" The load core was over {SATURATED:.0%} busy in {', '.join(busy)}: there the mock "
        "and the load generator set the pace, so read the proxy's CPU per chunk or "
        "request, not its rate."
    )


def chart(results: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("TTFB p99, 200 streams (ms)", lambda r: r["stream200"]["ttfb_p99_ms"]),
        ("chunk latency p99, 200 streams (ms)", lambda r: r["stream200"]["chunk_p99_ms"]),
        (
            "proxy CPU per chunk, 200 streams (µs)",
            lambda r: r["stream200_plain"]["cpu_us_per_chunk"],
        ),
        ("proxy CPU per request (µs)", lambda r: r["nonstream"]["cpu_us_per_request"]),
        ("non-streaming requests/s", lambda r: r["nonstream"]["requests_per_s"]),
        ("RSS per open stream (KB)", lambda r: r["open_streams"]["rss_kb_per_stream"]),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    names = [n for n in results if not n.startswith("_")]
    colors = {
        "direct": "#999999",
        "nginx": "#2a9d8f",
        "envoy": "#e9c46a",
        "portkey": "#8d5fd3",
        "filterproxy": "#e76f51",
        "filterproxy-before": "#f4a261",
    }
    for ax, (label, pick) in zip(axes.flat, panels, strict=True):
        values = [pick(results[n]) or 0 for n in names]
        ax.bar(names, values, color=[colors.get(n, "#264653") for n in names])
        ax.set_title(label, fontsize=10)
        for i, v in enumerate(values):
            ax.text(
                i, v, f"{v:,.2f}" if v < 1 else f"{v:,.1f}", ha="center", va="bottom", fontsize=8
            )
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _how_many(rounds: int) -> str:
    if rounds == 1:
        return "One round"
    return f"Medians of {rounds} rounds (every peer in turn, each round)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--peers", help="comma-separated subset of direct,nginx,envoy,portkey,filterproxy"
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="DIR",
        help="also measure the gateway from DIR, another source or build tree of it (its "
        "compiled modules beside the source), as the peer filterproxy-before: the same "
        "Python, config, scenarios and core as filterproxy, DIR first on its PYTHONPATH",
    )
    parser.add_argument("--quick", action="store_true", help="shorter scenarios (a smoke run)")
    parser.add_argument("--no-save", action="store_true", help="print only, write no result files")
    parser.add_argument(
        "--rounds",
        type=int,
        help="measure every peer this many times, in turn, and report medians "
        "(default 3; 1 with --quick)",
    )
    args = parser.parse_args()
    only = set(args.peers.split(",")) if args.peers else None
    if only is not None and args.before:
        only.add("filterproxy-before")
    rounds = args.rounds or (1 if args.quick else 3)
    try:
        results = run(only, args.quick, rounds, args.before.resolve() if args.before else None)
    except PeerUnavailable as reason:
        sys.exit(str(reason))
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}"
    today = datetime.date.today().isoformat()
    text = (
        f"# Benchmark {today}\n\nMachine: {machine}. Each proxy pinned to core {PROXY_CORE}; upstream and "
        f"load generators on core {LOAD_CORE}. Streams: 50 chunks 20 ms apart, read by a load "
        f"generator at real-time priority{_realtime_note(results)}. "
        f"{_how_many(rounds)}; compare ratios within this run.\n\n{table(results)}\n"
    )
    print(text)
    if not args.no_save:
        out = HERE / "results"
        out.mkdir(exist_ok=True)
        stem = out / f"{today}-{platform.node() or 'machine'}{'-quick' if args.quick else ''}"
        stem.with_suffix(".md").write_text(text)
        stem.with_suffix(".json").write_text(
            json.dumps({"machine": machine, "results": results}, indent=1)
        )
        chart(results, stem.with_suffix(".png"), f"filterproxy and peers, {today} ({machine})")
        print(f"written: {stem}.md/.json/.png")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
