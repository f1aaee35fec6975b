"""The tables of `bench.setups`: each peer's published figure, then ours and Envoy's
measured its way on this machine."""

from __future__ import annotations

import argparse
from typing import Any

#: What each peer published for its own setup (see docs/performance.md for sources).
AGENTGATEWAY = (
    "| agentgateway, published (Fortio, hardware not stated) | 36,933 | 0.83 / 1.53 / 1.97 "
    "| 1.05 (peak 2.43) | ~28 | — |"
)
AGENTGATEWAY_FIXED = "| agentgateway, published (Fortio, 30 s) | 0.227 / — / 0.436 | — | — | — |"
TENSORZERO = (
    "| TensorZero, published (vegeta at 10,000/s, c7i.xlarge, 4 vCPU) "
    "| 0.35 / 0.94 | 100% | — | — | — |"
)
BIFROST = (
    "Bifrost, published: 5,000 requests/s, 100% success, 11 µs (t3.xlarge, 4 vCPU) and "
    "59 µs (t3.medium, 2 vCPU) of its own per request, peak RSS 3,340 and 1,313 MB; its "
    "overhead counts its internal steps only, without JSON marshalling and response "
    "parsing (2.11 and 11.3 ms), and its average total was 1.61 and 2.12 s."
)


def num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def pct(value: float) -> str:
    return "100%" if value == 1 else f"{value * 100:.2f}%"


def agentgateway_tables(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    lines = [
        f"## agentgateway's setup: maximum throughput, 32 connections, 1 KB bodies "
        f"(wrk -t1 -c32, {args.max_seconds:.0f} s after 1 s of warm-up)",
        "",
        "| | requests/s | p50 / p90 / p99 ms | proxy cores used | proxy CPU µs per request "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|",
        AGENTGATEWAY,
    ]
    for name, r in result["max"].items():
        lines.append(
            f"| {name} | {r['requests_per_s']:,.0f} | {num(r['p50_ms'])} / {num(r['p90_ms'])} / "
            f"{num(r['p99_ms'])} | {num(r['proxy_cores'])} | {num(r['cpu_us_per_request'], 1)} "
            f"| {r['errors']} |"
        )
    lines += [
        "",
        f"## agentgateway's setup at a fixed rate: {args.fixed_rate:,.0f} requests/s of 1 KB, "
        f"open loop (bench/openloop.py), {args.fixed_seconds:.0f} s, timeout 1 s",
        "",
        "| | p50 / p90 / p99 ms | success | proxy cores used | proxy CPU µs per request |",
        "|---|---:|---:|---:|---:|",
        AGENTGATEWAY_FIXED,
    ]
    for name, r in result["fixed"].items():
        lines.append(
            f"| {name} | {num(r['p50_ms'], 3)} / {num(r['p90_ms'], 3)} / {num(r['p99_ms'], 3)} "
            f"| {pct(r['success'])} | {num(r['proxy_cores'])} | "
            f"{num(r['cpu_us_per_request'], 1)} |"
        )
    return lines


def tensorzero_table(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    direct = result.get("direct")
    lines = [
        f"## TensorZero's setup: {args.tz_rate:,.0f} requests/s for {args.tz_seconds:.0f} s, "
        "timeout 1 s, zero-delay mock (open loop: bench/openloop.py in vegeta's place)",
        "",
        "| | p50 / p99 ms | success | overhead p50 / p99 ms (minus direct) "
        "| proxy cores used | proxy CPU µs per request |",
        "|---|---:|---:|---:|---:|---:|",
        TENSORZERO,
    ]
    for name, r in result.items():
        overhead = (
            f"{r['p50_ms'] - direct['p50_ms']:+.3f} / {r['p99_ms'] - direct['p99_ms']:+.3f}"
            if direct and name != "direct" and r["p50_ms"] is not None
            else "—"
        )
        lines.append(
            f"| {name} | {num(r['p50_ms'], 3)} / {num(r['p99_ms'], 3)} | {pct(r['success'])} "
            f"| {overhead} | {num(r['proxy_cores'])} | {num(r['cpu_us_per_request'], 1)} |"
        )
    if direct:
        lines += [
            "",
            f"The load generator's check (the direct run: generator and mock alone on core 1): "
            f"asked {direct['rate']:,.0f}/s, wrote {direct['achieved_rate']:,.1f}/s "
            f"({direct['sent']:,} requests, {direct['connections']} connections); written "
            f"late by p50 {num(direct['late_p50_ms'], 3)} / p99 {num(direct['late_p99_ms'], 3)}"
            f" / max {num(direct['late_max_ms'])} ms; generator {num(direct['generator_cores'])}"
            f" cores, mock {num(direct['mock_cores'])} cores; {pct(direct['success'])} answered.",
        ]
    return lines


def bifrost_table(result: dict[str, Any], args: argparse.Namespace) -> list[str]:
    lines = [
        f"## Bifrost's setup: a mock answering in 1.5 s, rates climbed "
        f"({', '.join(f'{r:,.0f}' for r in args.bifrost_rates)}/s), {args.bifrost_warmup:.0f} s "
        f"of ramp then {args.bifrost_seconds:.0f} s per step, a fresh proxy each step, timeout "
        "10 s. Success counts every request; latency those after the ramp (while every request "
        "in flight opens a connection of its own).",
        "",
        "| | rate asked / written | success | p50 / p99 total ms | overhead p50 / p99 ms "
        "(total - 1,500) | proxy peak RSS MB (idle) | proxy CPU µs per request "
        "| connections |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    held: dict[str, float] = {}
    for name, steps in result["steps"].items():
        for r in steps:
            if r["ok"] == r["sent"]:
                held[name] = max(held.get(name, 0.0), r["rate"])
            rss = f"{r['peak_rss_mb']:.1f} ({r['idle_rss_mb']:.1f})" if "peak_rss_mb" in r else "—"
            lines.append(
                f"| {name} | {r['rate']:,.0f} / {r['achieved_rate']:,.0f} | {pct(r['success'])} "
                f"| {num(r['p50_ms'], 1)} / {num(r['p99_ms'], 1)} | "
                f"{num(r.get('overhead_p50_ms'))} / {num(r.get('overhead_p99_ms'))} | {rss} "
                f"| {num(r['cpu_us_per_request'], 1)} | {r['connections']:,} |"
            )
    lines += [
        "",
        "Highest rate answered 100%: "
        + ", ".join(f"{name} {rate:,.0f}/s" for name, rate in held.items())
        + (
            f" (the rig — generator and mock on one core — held up to {result['rig_limit']:,.0f}/s;"
            " no proxy was tried beyond)"
            if result["rig_limit"] < max(args.bifrost_rates)
            else ""
        )
        + ".",
        "",
        BIFROST,
    ]
    return lines


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines: list[str] = []
    if "agentgateway" in results:
        lines += [*agentgateway_tables(results["agentgateway"], args), ""]
    if "tensorzero" in results:
        lines += [*tensorzero_table(results["tensorzero"], args), ""]
    if "bifrost" in results:
        lines += [*bifrost_table(results["bifrost"], args), ""]
    lines.append(f"The whole run took {results['wall_seconds'] / 60:.1f} minutes.")
    return "\n".join(lines)
