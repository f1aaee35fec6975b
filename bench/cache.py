"""What the response cache costs and saves: a hit's CPU and latency next to a request
forwarded without the cache, and the memory a cached stream takes.

    make bench-cache
    .venv-bench/bin/python -m bench.cache --seconds 2 --rounds 1

One gateway (the default chain, which puts the cache filter last; no keys) with three
routes to the same mock upstream (bench/upstream.py ``--format chat``: a JSON completion,
or a chat stream of ``--chunks`` token-sized chunks and its usage chunk, as fast as the
socket takes them): ``bench`` without cache, ``bench-memory`` cached in this process,
``bench-redis`` cached in redis-server (Debian's, without persistence). Every request
has ``temperature: 0``; a streaming one asks for the usage chunk (``include_usage``), so
a hit replays the stored stream as it is. Rows, for non-streaming and streaming requests,
with one client (``wrk -t1 -c1``) and with ``--clients`` at once:

- pass-through: the route without cache;
- miss: the memory route with a new body each request (a counter in the message), so
  each one goes upstream *and* is recorded and stored;
- hit, memory store: the same body each request (stored by the warm-up);
- hit, Redis store: the same, read from Redis at each request.

The gateway runs on core 0; the upstream, redis-server and wrk share core 1. The CPU is
the gateway's (and Redis's, for the Redis row) per request; the latency percentiles and
requests per second are wrk's. What the cache did with each measured request is read
from the gateway's ``filterproxy_cache_requests_total`` (its admin listener), and before
each group one request of each case is checked: its status, its ``x-filterproxy-cache``
header, that its body is the pass-through's byte for byte, and that nothing of it was
left for the cycle collector to free (``POST /memory/cycles`` before and after it: a
request caught in a reference cycle stays in memory until the next collection, and
makes the collections that free it longer). Whatever is amiss is listed under the
table. The gateway restarts for
each group (request shape and clients); in a group the cases run in turn, round after
round (``--rounds``), and each figure is the median of its rounds.

Memory: a fresh gateway takes ``--entries`` streams with distinct bodies on the memory
route, ``Cache-Control: no-store`` (answered, not stored: the warm-up), then as many
again, stored. The growth of its RSS between the two (each read after a full pass of
the cycle collector), per entry, is what a cached
stream takes, next to the ``filterproxy_cache_memory_bytes`` gauge's growth per entry
and the stream's own size; then the same streams are stored in Redis, whose
``used_memory`` growth per entry is given too.

Results go to bench/results/<date>-<machine>-cache.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

from bench.peers import BIN, Peer, micros, save_results, start_redis, wait_for_port
from bench.run import LOAD_CORE, PROXY_CORE, Upstream

PORT = 8840
ADMIN = 9940
PATH = "/v1/chat/completions"
#: The response header that says what the cache did.
CACHE_HEADER = "x-filterproxy-cache"
GATEWAY_CONF = """
listeners: []
access_log: false
redis: {{url: 'redis://127.0.0.1:{redis}', timeout: 100ms}}
clusters:
  upstream:
    url: http://127.0.0.1:{upstream}
    max_idle_connections: 1024
    request_headers:
      set:
        authorization: Bearer sk-bench
routes:
  - name: memory
    models: [bench-memory]
    cluster: upstream
    cache: {{ttl: 1h}}
  - name: redis
    models: [bench-redis]
    cluster: upstream
    cache: {{ttl: 1h, store: redis}}
  - name: plain
    cluster: upstream
"""


@dataclass(frozen=True)
class Case:
    """One row of a group: a model (so a route), whether its body changes every request,
    what the cache should say of it, and whether Redis's CPU counts."""

    label: str
    model: str
    varied: bool
    #: The ``x-filterproxy-cache`` header expected (None: none) and the
    #: ``filterproxy_cache_requests_total`` result every request should count.
    header: str | None
    redis: bool = False


PASS = Case("pass-through (route without cache)", "bench", False, None)
MISS = Case("miss (memory route, new body each request)", "bench-memory", True, "miss")
HIT = Case("hit, memory store", "bench-memory", False, "hit")
HIT_REDIS = Case("hit, Redis store", "bench-redis", False, "hit", redis=True)
CASES = [PASS, MISS, HIT, HIT_REDIS]


def body(model: str, stream: bool, content: str | None = None) -> dict[str, Any]:
    """A request's body: temperature 0, and for a stream its usage chunk asked for. The
    default content differs between the two shapes: a JSON answer serves a streaming
    request with the same body too (and the other way round), and Redis keeps its
    entries from one group to the next."""
    document: dict[str, Any] = {
        "model": model,
        "temperature": 0,
        "messages": [{"role": "user", "content": content or ("hi, streaming" if stream else "hi")}],
    }
    if stream:
        document["stream"] = True
        document["stream_options"] = {"include_usage": True}
    return document


def lua_string(text: str) -> str:
    """*text* as a Lua string literal (it holds no backslash or quote of that kind)."""
    assert "\\" not in text and "'" not in text
    return f"'{text}'"


def wrk_script(case: Case, stream: bool) -> str:
    """The wrk script of *case*: one body, or (``varied``) a new one at each request,
    made from the run's seed (wrk's first argument) and a counter."""
    head = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
    if not case.varied:
        return head + f"wrk.body = {lua_string(orjson.dumps(body(case.model, stream)).decode())}\n"
    before, after = orjson.dumps(body(case.model, stream, "hi @")).decode().split("@")
    return head + (
        f"local before, after = {lua_string(before)}, {lua_string(after)}\n"
        'local seed, n = "0", 0\n'
        "function init(args) seed = args[1] or seed end\n"
        "function request()\n"
        "  n = n + 1\n"
        '  return wrk.format(nil, nil, nil, before .. seed .. "-" .. n .. after)\n'
        "end\n"
    )


def metrics() -> str:
    return httpx.get(f"http://127.0.0.1:{ADMIN}/metrics", timeout=10).text


def cache_results(text: str) -> dict[str, float]:
    """``filterproxy_cache_requests_total`` by ``route/result``."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("filterproxy_cache_requests_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        name = f"{labels.get('route')}/{labels.get('result')}"
        found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def collect_cycles() -> dict[str, int]:
    """One full pass of the gateway's cycle collector (its admin listener's
    ``POST /memory/cycles``): the gateway's objects it freed, by class — those that
    were kept only by a reference cycle."""
    response = httpx.post(f"http://127.0.0.1:{ADMIN}/memory/cycles", timeout=30)
    response.raise_for_status()
    return response.json()["objects"]  # type: ignore[no-any-return]


def gauge(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def redis_info(port: int, field: str) -> int:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO"], capture_output=True, text=True, check=True
    ).stdout
    return int(re.search(rf"^{field}:(\d+)", out, re.M).group(1))  # type: ignore[union-attr]


def measure(
    peer: Peer,
    case: Case,
    stream: bool,
    clients: int,
    seconds: float,
    workdir: Path,
    redis: psutil.Process,
    seed: str,
) -> dict[str, Any]:
    """One wrk run of *case* (after a second's warm-up), and what the gateway counted."""
    script = workdir / "case.lua"
    script.write_text(wrk_script(case, stream))
    command = ["taskset", "-c", str(LOAD_CORE), "wrk", "-t1", f"-c{clients}", "--latency"]
    target = ["-s", str(script), f"http://127.0.0.1:{peer.port}{PATH}"]
    warm = subprocess.run(
        [*command, "-d1s", *target, seed + "w"], capture_output=True, text=True, check=True
    )
    time.sleep(0.2)  # the warm-up's last stores
    before = cache_results(metrics())
    cpu_before = peer.cpu_seconds()
    redis_before = sum(redis.cpu_times()[:2])
    out = subprocess.run(
        [*command, f"-d{int(seconds)}s", *target, seed],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    time.sleep(0.2)  # the last stores
    cpu = peer.cpu_seconds() - cpu_before
    redis_cpu = sum(redis.cpu_times()[:2]) - redis_before
    after = cache_results(metrics())
    counted = {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k)}
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    return {
        "requests": requests,
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "errors": (int(non_2xx.group(1)) if non_2xx else 0)
        + (sum(int(n) for n in sockets.groups()) if sockets else 0),
        "warm_up_errors": "Non-2xx" in warm.stdout or "Socket errors" in warm.stdout,
        "p50_us": micros(percentiles["50"]),
        "p99_us": micros(percentiles["99"]),
        "cpu_us_per_request": cpu / requests * 1e6,
        "redis_cpu_us_per_request": redis_cpu / requests * 1e6 if case.redis else None,
        "cache_counted": counted,
    }


def check(case: Case, stream: bool, expected: bytes | None) -> tuple[bytes, list[str]]:
    """One request of *case* (a fresh body when it is ``varied``; a hit's after the one
    that stores it): its body, and what is wrong with its answer (status, cache header,
    body unlike the pass-through's)."""
    content = f"check {time.monotonic_ns()}" if case.varied else None
    url = f"http://127.0.0.1:{PORT}{PATH}"
    with httpx.Client(timeout=30) as client:
        if case.header == "hit":
            client.post(url, json=body(case.model, stream, content))  # (stored: the hit's)
            time.sleep(0.2)
        collect_cycles()
        response = client.post(url, json=body(case.model, stream, content))
    time.sleep(0.1)  # (the request's end, in the gateway)
    cycles = collect_cycles()
    problems = []
    shape = "stream" if stream else "JSON"
    if cycles:
        managers = cycles.get("filterproxy.chain.manager.FilterManager", 0)
        problems.append(
            f"{case.label}, {shape}: the request was freed only by the cycle collector "
            f"({managers} FilterManager, {sum(cycles.values())} objects of the gateway's "
            f"in all: {', '.join(sorted(n.rsplit('.', 1)[1] for n in cycles))})"
        )
    if response.status_code != 200:
        problems.append(f"{case.label}, {shape}: status {response.status_code}")
    header = response.headers.get(CACHE_HEADER)
    if header != case.header:
        problems.append(f"{case.label}, {shape}: {CACHE_HEADER} {header!r}, not {case.header!r}")
    if expected is not None and response.content != expected:
        problems.append(
            f"{case.label}, {shape}: body of {len(response.content)} bytes unlike the "
            f"pass-through's {len(expected)}"
        )
    return response.content, problems


def counted_problems(case: Case, row: dict[str, Any], shape: str, clients: int) -> list[str]:
    """What the gateway counted that the case should not have: results other than its
    own, on its route, or on another route."""
    route = {"bench": None, "bench-memory": "memory", "bench-redis": "redis"}[case.model]
    wanted = {f"{route}/{case.header}"} if route else set()
    if case.header == "hit":
        # Requests that come while an identical one is looked up (in Redis) wait on its
        # hit: served from the cache as well, counted as coalesced.
        wanted.add(f"{route}/coalesced")
    counted = row["cache_counted"]
    stray = {k: v for k, v in counted.items() if k not in wanted}
    served = sum(counted.get(k, 0) for k in wanted)
    problems = []
    if stray:
        problems.append(f"{case.label}, {shape}, {clients} clients: the cache counted {stray}")
    if wanted and served < row["requests"]:
        problems.append(
            f"{case.label}, {shape}, {clients} clients: {served:.0f} "
            f"{case.header} counted for {row['requests']} requests"
        )
    if row["errors"]:
        problems.append(f"{case.label}, {shape}, {clients} clients: {row['errors']} errors (wrk)")
    return problems


@contextmanager
def gateway(workdir: Path, upstream: int, redis: int, name: str) -> Iterator[Peer]:
    conf = workdir / "cache.yaml"
    conf.write_text(GATEWAY_CONF.format(upstream=upstream, redis=redis))
    command = [
        str(BIN / "twistd"),
        "-n",
        "--pidfile=",
        "-l",
        str(workdir / "gateway.log"),
        "filterproxy",
        "-c",
        str(conf),
        "--listen",
        f"tcp:{PORT}:interface=127.0.0.1",
        "--admin",
        f"tcp:{ADMIN}:interface=127.0.0.1",
    ]
    peer = Peer(name, command, listen_port=PORT)
    peer.start(str(PROXY_CORE))
    try:
        wait_for_port(ADMIN)
        yield peer
    finally:
        peer.stop()


async def send_all(model: str, count: int, concurrency: int, headers: dict[str, str]) -> int:
    """*count* streams with distinct bodies on *model*, *concurrency* at a time; how many
    answered 200."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    ok = 0
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{PORT}", limits=limits, timeout=60
    ) as client:
        queue = iter(range(count))
        stamp = time.monotonic_ns()

        async def worker() -> None:
            nonlocal ok
            for n in queue:
                response = await client.post(
                    PATH, json=body(model, True, f"entry {stamp}-{n}"), headers=headers
                )
                ok += response.status_code == 200

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


def memory(
    workdir: Path, upstream: int, redis_port: int, entries: int, stream_bytes: int
) -> dict[str, Any]:
    """What *entries* cached streams take in a fresh gateway's memory store (and in
    Redis)."""
    with gateway(workdir, upstream, redis_port, "memory") as peer:
        warmed = asyncio.run(send_all("bench-memory", entries, 16, {"cache-control": "no-store"}))
        time.sleep(0.5)
        collect_cycles()
        text = metrics()
        rss_before, held_before = peer.rss_bytes(), gauge(text, "filterproxy_cache_memory_bytes")
        count_before = gauge(text, "filterproxy_cache_entries")
        stored = asyncio.run(send_all("bench-memory", entries, 16, {}))
        time.sleep(0.5)
        collect_cycles()
        text = metrics()
        rss_after, held_after = peer.rss_bytes(), gauge(text, "filterproxy_cache_memory_bytes")
        count = gauge(text, "filterproxy_cache_entries") - count_before
        redis_before = redis_info(redis_port, "used_memory")
        in_redis = asyncio.run(send_all("bench-redis", entries, 16, {}))
        time.sleep(0.5)
        redis_after = redis_info(redis_port, "used_memory")
    return {
        "entries": entries,
        "answered": {"warm_up": warmed, "memory": stored, "redis": in_redis},
        "entries_counted": count,
        "stream_bytes": stream_bytes,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "rss_bytes_per_entry": (rss_after - rss_before) / entries,
        "gauge_bytes_per_entry": (held_after - held_before) / entries,
        "redis_bytes_per_entry": (redis_after - redis_before) / entries,
    }


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds (errors summed, counts merged)."""
    merged: dict[str, Any] = {k: rows[0][k] for k in ("shape", "clients", "case")}
    merged["rounds"] = len(rows)
    for name in ("requests_per_s", "p50_us", "p99_us", "cpu_us_per_request"):
        merged[name] = statistics.median(r[name] for r in rows)
    redis = [r["redis_cpu_us_per_request"] for r in rows if r["redis_cpu_us_per_request"]]
    merged["redis_cpu_us_per_request"] = statistics.median(redis) if redis else None
    merged["errors"] = sum(r["errors"] for r in rows)
    merged["requests"] = sum(r["requests"] for r in rows)
    counted: dict[str, float] = {}
    for r in rows:
        for k, v in r["cache_counted"].items():
            counted[k] = counted.get(k, 0.0) + v
    merged["cache_counted"] = counted
    return merged


def _counted(row: dict[str, Any]) -> str:
    counted = row["cache_counted"]
    if not counted:
        return "—"
    return ", ".join(f"{k.split('/')[1]} {v:.0f}" for k, v in sorted(counted.items()))


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| request | clients | case | requests/s | p50 µs | p99 µs | CPU µs per request "
        "| Redis CPU µs per request | counted by the cache | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        redis = r["redis_cpu_us_per_request"]
        lines.append(
            f"| {r['shape']} | {r['clients']} | {r['case']} | {r['requests_per_s']:.0f} | "
            f"{r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['cpu_us_per_request']:.1f} | "
            f"{f'{redis:.1f}' if redis else '—'} | {_counted(r)} | {r['errors']} |"
        )
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]]) -> str:
    """The target: a hit costs the gateway less CPU than forwarding the same request."""
    by = {(r["shape"], r["clients"], r["case"]): r for r in rows}
    lines = []
    for shape, clients in dict.fromkeys((r["shape"], r["clients"]) for r in rows):
        base = by.get((shape, clients, PASS.label))
        if base is None:
            continue
        for case in (HIT, HIT_REDIS, MISS):
            r = by.get((shape, clients, case.label))
            if r is None:
                continue
            ratio = r["cpu_us_per_request"] / base["cpu_us_per_request"]
            verdict = ("met" if ratio < 1 else "NOT met") if case is not MISS else "(no target)"
            redis = r["redis_cpu_us_per_request"]
            extra = f" (+ {redis:.0f} µs of Redis's)" if redis else ""
            lines.append(
                f"- {shape}, {clients} client{'s' if clients > 1 else ''}: {case.label} "
                f"{r['cpu_us_per_request']:.0f} µs{extra} against pass-through "
                f"{base['cpu_us_per_request']:.0f} µs = {ratio:.2f}x {verdict}; p50 "
                f"{r['p50_us']:.0f} against {base['p50_us']:.0f} µs"
            )
    return (
        "Target: a hit costs the gateway less CPU per request than the same request "
        "forwarded.\n\n" + "\n".join(lines)
    )


def memory_text(m: dict[str, Any]) -> str:
    return (
        f"Memory per cached stream ({m['entries']} streams of {m['stream_bytes']} bytes, "
        f"{m['entries_counted']:.0f} entries counted): gateway RSS (after a cycle "
        "collector pass) "
        f"+{m['rss_bytes_per_entry']:.0f} bytes per entry "
        f"({m['rss_before'] / 1e6:.1f} → {m['rss_after'] / 1e6:.1f} MB), "
        f"filterproxy_cache_memory_bytes +{m['gauge_bytes_per_entry']:.0f} bytes per entry; "
        f"in Redis, used_memory +{m['redis_bytes_per_entry']:.0f} bytes per entry."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32, help="the concurrent rows' clients")
    parser.add_argument("--chunks", type=int, default=200, help="content chunks per stream")
    parser.add_argument("--entries", type=int, default=2000, help="streams cached, for memory")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    upstream = Upstream("--format", "chat", "--chunks", str(args.chunks))
    redis, redis_port = start_redis(LOAD_CORE)
    redis_process = psutil.Process(redis.pid)
    groups = [(stream, clients) for stream in (False, True) for clients in (1, args.clients)]
    runs: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    problems: list[str] = []
    stream_bytes = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            for n in range(args.rounds):
                for stream, clients in groups:
                    shape = "stream" if stream else "JSON"
                    with gateway(workdir, upstream.port, redis_port, "cache") as peer:
                        expected, found = check(PASS, stream, None)
                        problems += found
                        if stream:
                            stream_bytes = len(expected)
                        for case in CASES[1:]:
                            problems += check(case, stream, expected)[1]
                        for case in CASES:
                            row = {
                                "shape": shape,
                                "clients": clients,
                                "case": case.label,
                                **measure(
                                    peer,
                                    case,
                                    stream,
                                    clients,
                                    args.seconds,
                                    workdir,
                                    redis_process,
                                    f"{n}-{clients}-{int(stream)}",
                                ),
                            }
                            problems += counted_problems(case, row, shape, clients)
                            runs.setdefault((shape, clients, case.label), []).append(row)
                            print(table([median_row([row])]).splitlines()[-1], flush=True)
            print("memory ...", flush=True)
            used = memory(workdir, upstream.port, redis_port, args.entries, stream_bytes)
    finally:
        upstream.stop()
        redis.terminate()
        redis.wait()
    rows = [median_row(runs[key]) for key in runs]
    rows.sort(key=lambda r: (r["shape"] != "JSON", r["clients"]))
    problems = list(dict.fromkeys(problems))
    text = table(rows) + "\n\n" + verdicts(rows) + "\n\n" + memory_text(used)
    if problems:
        text += "\n\nProblems seen:\n\n" + "\n".join(f"- {p}" for p in problems)
    print(text)
    if not args.no_save:
        header = (
            f"# The response cache, {datetime.date.today().isoformat()}\n\n"
            f"wrk -t1, {args.seconds:.0f} s per case and round, medians of {args.rounds} "
            f"rounds; gateway on core {PROXY_CORE}, upstream, redis-server and wrk on core "
            f"{LOAD_CORE}. Streams: {args.chunks} content chunks ({stream_bytes} bytes), "
            "usage chunk asked for. 'Counted by the cache' is filterproxy_cache_requests_total "
            "over the measured requests of every round.\n\n"
        )
        save_results(
            "cache",
            header,
            text,
            {"args": vars(args), "rows": rows, "memory": used, "problems": problems},
        )


if __name__ == "__main__":
    main()
