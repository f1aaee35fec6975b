"""The soak: connection churn for a long time, filterproxy next to nginx and Envoy.

    make soak                                   # 30 minutes, every peer installed
    .venv-bench/bin/python -m bench.soak --minutes 5 --peers filterproxy,envoy

All peers run at once, each on its own port in front of one mock upstream, each under
its own load generator (`bench.churn`: clients that connect and leave every way they
can, upstreams that close connections, and HTTP/2 churn where the peer speaks h2c).
Every ``--sample`` seconds it prints each peer's resident memory (its processes
together) and open file descriptors. When the time is up the load stops, and after
``--settle`` seconds (longer than filterproxy's 30 s idle_connection_timeout) the
descriptors are counted again.

Targets for filterproxy: resident memory grows less than 5% from the two-minute mark to
the end, no errors, and file descriptors back to their count before the load. For
filterproxy it also prints what ``GET /memory`` on its admin listener says it holds,
before and after. Results go to bench/results/<date>-<machine>-soak.{md,json,png}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.peers import Peer, peers
from bench.run import Upstream

HERE = Path(__file__).resolve().parent
PORTS = {"filterproxy": 8801, "nginx": 8802, "envoy": 8803}
#: Peers whose benchmark config speaks HTTP/2 with prior knowledge (h2c).
H2C = {"filterproxy", "envoy"}
#: filterproxy's admin listener (conf/bench.yaml leaves the default).
ADMIN = "http://127.0.0.1:9901"
#: The target's reference point: memory after the warm-up.
WARM_UP_SECONDS = 120.0


def _held(peer: Peer) -> dict[str, Any] | None:
    """What filterproxy's ``GET /memory`` says it holds (None for the others)."""
    if peer.name != "filterproxy":
        return None
    try:
        response = httpx.get(f"{ADMIN}/memory", timeout=10)
        report = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    if report is None:  # a version without the endpoint
        return None
    return {"held": report["held"], "objects": sum(report["objects"].values())}


def soak(
    found: list[Peer], seconds: float, clients: int, sample: float, settle: float
) -> dict[str, Any]:
    results: dict[str, Any] = {peer.name: {"samples": []} for peer in found}
    for peer in found:
        peer.start("0,1")
        results[peer.name]["fds_before"] = peer.open_fds()
        results[peer.name]["held_before"] = _held(peer)
    loads = {
        peer.name: subprocess.Popen(
            [
                sys.executable, "-m", "bench.churn",
                "--port", str(peer.port),
                "--seconds", str(seconds),
                "--clients", str(clients),
                *(["--h2load"] if peer.name in H2C and shutil.which("h2load") else []),
            ],
            cwd=HERE.parent,
            stdout=subprocess.PIPE,
            text=True,
        )
        for peer in found
    }  # fmt: skip
    started = time.monotonic()
    try:
        while any(load.poll() is None for load in loads.values()):
            time.sleep(sample)
            elapsed = time.monotonic() - started
            line = [f"{elapsed:6.0f}s"]
            for peer in found:
                rss, fds = peer.rss_bytes(), peer.open_fds()
                results[peer.name]["samples"].append((round(elapsed, 1), rss, fds))
                line.append(f"{peer.name} {rss / 2**20:6.1f} MB {fds:5d} fds")
            print("  ".join(line), flush=True)
        for name, load in loads.items():
            out, _ = load.communicate()
            results[name]["load"] = json.loads(out.strip().splitlines()[-1])
        print(f"load stopped; waiting {settle:g}s for idle connections to close", flush=True)
        time.sleep(settle)
        for peer in found:
            results[peer.name]["fds_after"] = peer.open_fds()
            results[peer.name]["held_after"] = _held(peer)
            results[peer.name]["rss_after_settle"] = peer.rss_bytes()
    finally:
        for load in loads.values():
            if load.poll() is None:
                load.kill()
        for peer in found:
            peer.stop()
    for peer in found:
        results[peer.name].update(_summary(results[peer.name]["samples"]))
    return results


def _summary(samples: list[tuple[float, int, int]]) -> dict[str, Any]:
    """Memory at the end of the warm-up and at the end, and the growth between them."""
    after_warm_up = [s for s in samples if s[0] >= WARM_UP_SECONDS] or samples[-1:]
    at_warm_up, at_end = after_warm_up[0][1], samples[-1][1]
    return {
        "rss_warm_mb": at_warm_up / 2**20,
        "rss_end_mb": at_end / 2**20,
        "rss_max_mb": max(s[1] for s in samples) / 2**20,
        "rss_growth_pct": (at_end - at_warm_up) * 100 / at_warm_up,
        "fds_max": max(s[2] for s in samples),
    }


def table(results: dict[str, Any], seconds: float) -> str:
    names = list(results)
    lines = [
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]

    def row(label: str, cell: Any) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(results[n]) for n in names) + " |")

    row("requests / errors", lambda r: f"{r['load']['requests']:,} / {r['load']['errors']}")
    row(
        f"RSS MB at {WARM_UP_SECONDS / 60:g} min / at {seconds / 60:g} min / max",
        lambda r: f"{r['rss_warm_mb']:.1f} / {r['rss_end_mb']:.1f} / {r['rss_max_mb']:.1f}",
    )
    row(f"RSS growth after {WARM_UP_SECONDS / 60:g} min", lambda r: f"{r['rss_growth_pct']:+.1f}%")
    row(
        "open fds: before / max under load / after",
        lambda r: f"{r['fds_before']} / {r['fds_max']} / {r['fds_after']}",
    )
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4))
    for name, result in results.items():
        samples = result["samples"]
        axis.plot([s[0] / 60 for s in samples], [s[1] / 2**20 for s in samples], label=name)
    axis.axvline(WARM_UP_SECONDS / 60, color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("minutes")
    axis.set_ylabel("resident memory, MB")
    axis.set_title(title, fontsize=9)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--peers", help="comma-separated subset of nginx,envoy,filterproxy")
    parser.add_argument("--clients", type=int, default=30, help="concurrent clients per peer")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--settle", type=float, default=40.0, help="seconds after the load")
    parser.add_argument("--no-save", action="store_true", help="print only, write no files")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    only = set(args.peers.split(",")) if args.peers else set(PORTS)
    seconds = args.minutes * 60
    upstream = Upstream()
    os.environ["BENCH_UPSTREAM_PORT"] = str(upstream.port)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            found = [p for p in peers(Path(tmp), upstream.port, only, PORTS) if p.name in PORTS]
            results = soak(found, seconds, args.clients, args.sample, args.settle)
    finally:
        upstream.stop()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}"
    today = datetime.date.today().isoformat()
    held = {
        name: (r["held_before"], r["held_after"]) for name, r in results.items() if r["held_before"]
    }
    text = (
        f"# Soak {today}\n\nMachine: {machine}. {args.minutes:g} minutes of connection churn, "
        f"{args.clients} clients per peer, all peers at once (see bench/churn.py for the mix).\n\n"
        f"{table(results, seconds)}\n"
    )
    for name, (before, after) in held.items():
        text += f"\n{name} `GET /memory` before the load: {json.dumps(before)}\n"
        text += f"\n{name} `GET /memory` after it: {json.dumps(after)}\n"
    for name, r in results.items():
        if r["load"]["errors"]:
            text += f"\n{name} errors: {r['load']['error_samples']}\n"
    print(text)
    if not args.no_save:
        out = HERE / "results"
        out.mkdir(exist_ok=True)
        stem = out / f"{today}-{platform.node() or 'machine'}-soak"
        stem.with_suffix(".md").write_text(text)
        stem.with_suffix(".json").write_text(json.dumps({"machine": machine, "results": results}))
        chart(results, stem.with_suffix(".png"), f"soak: connection churn, {today} ({machine})")
        print(f"written: {stem}.md/.json/.png")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
