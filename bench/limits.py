"""What gateway keys and their limits add to a request: latency and CPU, next to the
same gateway without keys, in one run.

    make bench-limits
    .venv-bench/bin/python -m bench.limits --seconds 15

One client at a time (``wrk -t1 -c1``, non-streaming requests) through the gateway
pinned to core 0; the mock upstream, redis-server (Debian's, without persistence) and
wrk share core 1. Rows: no keys (conf/bench.yaml); a key with no limits (authentication
only); a key with limits counted in this process; a key with limits counted in Redis
(one EVALSHA per admission, one per settlement); the same key in a team, both with
dollar budgets (hard and soft, per day and month) as well, counted in Redis — a price
per token reserved at admission and the cost charged at the end. The latency
percentiles are wrk's; the CPU is the gateway's (and Redis's, for the Redis rows) per
request, and the scripts Redis ran per request are counted from its commandstats (the
target: one per admission, one per settlement). The cases run in
turn, round after round (``--rounds``, default 3), and each figure is the median of its
rounds: a single client's latency follows the machine's slower minutes, which this
spreads over every case. Results go to bench/results/<date>-<machine>-limits.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.peers import BIN, Peer, micros, save_results, start_redis
from bench.run import LOAD_CORE, PROXY_CORE, Upstream

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PORT = 8820
KEY = "fpk-bench-0123456789abcdef0123456789"
LIMITS = (
    "{requests_per_minute: 100000000, tokens_per_minute: 1000000000, concurrent_requests: 1000}"
)
#: The same with dollar budgets that are never spent, and a team that has them too.
USD = "usd_per_day: 100000, usd_per_month: 1000000, soft_usd_per_day: 50000, soft_usd_per_month: 500000"
USD_LIMITS = LIMITS[:-1] + ", " + USD + "}"
USD_CASE = "key with limits and USD budgets, counted in Redis"
TEAM_CASE = "key and its team, both with USD budgets, counted in Redis"
TOKEN_CASE = "key with limits, counted in Redis"
#: What USD budgets may add at p50 against the token limits (same single round trip).
USD_TARGET_US = 50
#: The model's price, as the spend filter (first in the chain whenever keys are
#: configured) reads it: $2.50 and $10 per million input and output tokens.
PRICES = "spend: {prices: {bench: {input: 2.5, output: 10}}}\n"
WRK_SCRIPT = f"""
wrk.method = "POST"
wrk.body = '{{"model":"bench","messages":[{{"role":"user","content":"hi"}}]}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {KEY}"
"""


def gateway_config(
    upstream: int, limits: str | None, redis: int | None, team: str | None = None
) -> str:
    from filterproxy.extensions.keys.config import hash_key

    text = f"""
listeners: []
access_log: false
clusters:
  upstream:
    url: http://127.0.0.1:{upstream}
    max_idle_connections: 1024
    request_headers:
      set:
        authorization: Bearer sk-bench
keys:
  - name: bench
    hash: sha256:{hash_key(KEY)}
    limits: {limits or "{}"}
"""
    if team is not None:
        text += f"    team: bench-team\nteams:\n  - {{name: bench-team, limits: {team}}}\n"
    text += PRICES  # every keyed row prices its requests alike (spend is in their chain)
    if redis is not None:
        text += f"redis: {{url: 'redis://127.0.0.1:{redis}', timeout: 100ms}}\n"
    return text


def redis_scripts_run(port: int) -> int:
    """The scripts Redis has run (EVALSHA and EVAL calls) since its stats were reset."""
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", "commandstats"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(int(n) for n in re.findall(r"^cmdstat_eval(?:sha)?:calls=(\d+)", out, re.M))


def measure(
    peer: Peer,
    seconds: float,
    workdir: Path,
    redis: psutil.Process | None,
    redis_port: int | None = None,
) -> dict[str, Any]:
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT)
    command = [
        "taskset",
        "-c",
        str(LOAD_CORE),
        "wrk",
        "-t1",
        "-c1",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{peer.port}/v1/chat/completions",
    ]
    subprocess.run([*command[:5], "-d2s", *command[5:]], capture_output=True, check=True)  # warm
    time.sleep(0.2)  # the warm-up's last settlements
    cpu_before = peer.cpu_seconds()
    redis_before = sum(redis.cpu_times()[:2]) if redis else 0.0
    scripts_before = redis_scripts_run(redis_port) if redis_port else 0
    out = subprocess.run(
        [*command[:5], f"-d{int(seconds)}s", *command[5:]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    time.sleep(0.2)  # the last settlements
    cpu = peer.cpu_seconds() - cpu_before
    redis_cpu = sum(redis.cpu_times()[:2]) - redis_before if redis else 0.0
    scripts = redis_scripts_run(redis_port) - scripts_before if redis_port else 0
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    return {
        "requests": requests,
        "errors": int(errors.group(1)) if errors else 0,
        "p50_us": micros(percentiles["50"]),
        "p99_us": micros(percentiles["99"]),
        "cpu_us_per_request": cpu / requests * 1e6,
        "redis_cpu_us_per_request": redis_cpu / requests * 1e6 if redis else None,
        "redis_scripts_per_request": scripts / requests if redis_port else None,
    }


def median_row(label: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds."""
    merged: dict[str, Any] = {"case": label, "rounds": len(rows)}
    for name in rows[0]:
        if name != "case":
            values = [r[name] for r in rows if r[name] is not None]
            merged[name] = statistics.median(values) if values else None
    merged["errors"] = sum(r["errors"] for r in rows)
    return merged


def table(rows: list[dict[str, Any]]) -> str:
    base = rows[0] if rows else None
    lines = [
        "| gateway | p50 µs | p99 µs | added p50 / p99 µs | CPU µs per request | Redis CPU µs per request | Redis scripts per request | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        added = (
            f"{r['p50_us'] - base['p50_us']:+.0f} / {r['p99_us'] - base['p99_us']:+.0f}"
            if base is not None and r is not base
            else "—"
        )
        redis = f"{r['redis_cpu_us_per_request']:.1f}" if r["redis_cpu_us_per_request"] else "—"
        scripts = r.get("redis_scripts_per_request")
        lines.append(
            f"| {r['case']} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | {added} | "
            f"{r['cpu_us_per_request']:.1f} | {redis} | "
            f"{f'{scripts:.2f}' if scripts else '—'} | {r['errors']} |"
        )
    return "\n".join(lines)


def usd_verdict(rows: list[dict[str, Any]]) -> str:
    """What USD budgets add at p50 to the token limits, both counted in Redis, against
    `USD_TARGET_US`, whether it is the same single round trip, and what a team (a second
    subject in the same scripts) adds on top."""
    by_case = {r["case"]: r for r in rows}
    usd, tokens, team = by_case.get(USD_CASE), by_case.get(TOKEN_CASE), by_case.get(TEAM_CASE)
    if usd is None or tokens is None:
        return ""
    added = usd["p50_us"] - tokens["p50_us"]
    same_trip = round(usd["redis_scripts_per_request"]) == round(
        tokens["redis_scripts_per_request"]
    )
    verdict = "within" if added <= USD_TARGET_US and same_trip else "NOT within"
    text = (
        f"USD budgets add {added:+.0f} µs at p50 to the token limits counted in Redis "
        f"(Redis CPU per request {usd['redis_cpu_us_per_request']:.0f} against "
        f"{tokens['redis_cpu_us_per_request']:.0f} µs); Redis scripts per request "
        f"{usd['redis_scripts_per_request']:.2f} against "
        f"{tokens['redis_scripts_per_request']:.2f}: {verdict} the target "
        f"(≤ {USD_TARGET_US} µs more at p50, the same single round trip)."
    )
    if team is not None:
        text += (
            f" The key's team as well (a second subject in the same scripts): "
            f"{team['p50_us'] - usd['p50_us']:+.0f} µs at p50, Redis CPU per request "
            f"{team['redis_cpu_us_per_request']:.0f} µs, scripts per request "
            f"{team['redis_scripts_per_request']:.2f}."
        )
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    upstream = Upstream()
    upstream_port = upstream.port
    redis, redis_port = start_redis(LOAD_CORE)
    runs: dict[str, list[dict[str, Any]]] = {}
    cases = [
        ("no keys (conf/bench.yaml)", None, None, None),
        ("key, no limits (authentication only)", "", None, None),
        ("key with limits, counted in this process", LIMITS, None, None),
        (TOKEN_CASE, LIMITS, redis_port, psutil.Process(redis.pid)),
        (USD_CASE, USD_LIMITS, redis_port, psutil.Process(redis.pid)),
        (TEAM_CASE, USD_LIMITS, redis_port, psutil.Process(redis.pid)),
    ]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            for label, limits, redis_at, redis_process in [
                c for _ in range(args.rounds) for c in cases
            ]:
                twistd = [
                    str(BIN / "twistd"),
                    "-n",
                    "--pidfile=",
                    "-l",
                    str(workdir / "gw.log"),
                    "filterproxy",
                ]
                listen = ["--listen", f"tcp:{PORT}:interface=127.0.0.1"]
                if limits is None:
                    command = [*twistd, "-c", str(ROOT / "conf" / "bench.yaml"), *listen]
                    env = {"FILTERPROXY_UPSTREAM": f"http://127.0.0.1:{upstream_port}"}
                else:
                    team = USD_LIMITS if label == TEAM_CASE else None
                    conf = workdir / "limits.yaml"
                    conf.write_text(gateway_config(upstream_port, limits or None, redis_at, team))
                    command, env = [*twistd, "-c", str(conf), *listen], {}
                peer = Peer(label, command, env=env, listen_port=PORT)
                peer.start(str(PROXY_CORE))
                try:
                    time.sleep(0.5)
                    row = {
                        "case": label,
                        **measure(
                            peer,
                            args.seconds,
                            workdir,
                            redis_process,
                            redis_at,
                        ),
                    }
                    runs.setdefault(label, []).append(row)
                    print(table([row]).splitlines()[-1], flush=True)
                finally:
                    peer.stop()
    finally:
        upstream.stop()
        redis.terminate()
        redis.wait()
    rows = [median_row(label, runs[label]) for label, *_ in cases]
    verdict = usd_verdict(rows)
    text = table(rows) + ("\n\n" + verdict if verdict else "")
    print(text)
    if not args.no_save:
        header = (
            f"# Keys and limits, {datetime.date.today().isoformat()}\n\nOne client at a time "
            f"(wrk -t1 -c1, non-streaming), {args.seconds:.0f} s per case and round, medians of "
            f"{args.rounds} rounds; gateway on core {PROXY_CORE}, upstream, redis-server and wrk "
            f"on core {LOAD_CORE}. Added latency is against the first row.\n\n"
        )
        save_results("limits", header, text, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
