"""The weak-link benchmark: LLM streams to a client on a slow, stalling, dropping mobile
link, through filterproxy (passing through, with ``Save-Data: on``, with
``x-stream-coalesce``, resuming after drops), next to nginx, Envoy and no proxy at all.

    sudo make bench-weak
    sudo .venv-bench/bin/python -m bench.weak --profiles 3g --streams 6 --no-save

The link (bench/weak_link.py) is a network namespace holding the client, joined to this
host by a veth pair shaped by ``tbf`` both ways; a relay in the namespace
(bench/weak_relay.py) adds latency, jitter, stalls and drops between the client and the
link. The gateway or peer runs on this host, pinned to core 0, and its socket to the
client is the one on the link, so its writes back up when the link is slow or stalled;
it forwards over loopback to the mock upstream (bench/weak_upstream.py: OpenAI chat
chunks, a token each, 40 to 60 tokens a second, 300 tokens a stream). The client
(bench/weak_client.py), the relay and the upstream share core 1.

Rows, on each profile: direct (the client to the upstream over the link), nginx and
Envoy (as bench/peers.py configures them), filterproxy passing the stream through, with
``Save-Data: on`` and with ``x-stream-coalesce: 250ms``; under the drops profile the
last two give way to a resumable route (``resume: true``, bench/resume.py's config),
without and with ``Save-Data: on``. Every row streams the same ``--streams`` answers,
``--parallel`` at a time. Under drops a client without resume starts a dropped stream
over (up to ``--attempts`` requests); a resuming client re-sends the POST with
``Last-Event-ID`` after each drop.

Columns: time to first and last content token at the client; bytes on the link per
stream (the veth's counters, headers and retransmissions included: downlink / uplink);
the most the sender's kernel held for the client at once (its send queue: the link as
the gateway felt it); stalls the client saw (reads ≥ 1 s apart); streams complete
(``[DONE]`` and usage) and exact (their text is what the upstream generated); requests
per stream, sent by the client and received by the upstream; the gateway's or peer's
CPU time per stream (every thread of its processes, user and system).

Results go to bench/results/<date>-<machine>-weak.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench.peers import Peer, save_results
from bench.run import LOAD_CORE, PROXY_CORE
from bench.weak_client import ClientPlan
from bench.weak_link import PROFILES, Link, LinkUnavailable, Profile, check_tools
from bench.weak_peers import GATEWAY, MockUpstream, cpu_seconds, link_peers, warm_up
from bench.weak_report import summarize, table, targets

ROOT = Path(__file__).resolve().parents[1]
PLAIN = GATEWAY
SAVE_DATA = "filterproxy, Save-Data: on"
COALESCE = "filterproxy, x-stream-coalesce: 250ms"
RESUME = "filterproxy, resume"
#: A resuming client comes back after every drop until the stream's deadline.
RESUME_ATTEMPTS = 50


@dataclass(frozen=True)
class Row:
    """One row of a profile: who serves the client and what the client asks."""

    label: str
    peer: str
    headers: tuple[tuple[str, str], ...] = ()
    model: str = "bench"
    #: The client resumes a dropped stream (else it starts it over).
    resume: bool = False


def rows_for(profile: Profile) -> list[Row]:
    rows = [
        Row("direct", "direct"),
        Row("nginx", "nginx"),
        Row("envoy", "envoy"),
        Row(PLAIN, PLAIN),
    ]
    if profile.drop_every_s:
        return [
            *rows,
            Row(RESUME, PLAIN, model="bench-resume", resume=True),
            Row(
                f"{RESUME}, Save-Data: on",
                PLAIN,
                (("save-data", "on"),),
                model="bench-resume",
                resume=True,
            ),
        ]
    return [
        *rows,
        Row(SAVE_DATA, PLAIN, (("save-data", "on"),)),
        Row(COALESCE, PLAIN, (("x-stream-coalesce", "250ms"),)),
    ]


class SendQueueSampler(threading.Thread):
    """Samples `Link.send_queue` every 50 ms and keeps the most: the link felt by the
    sender (the gateway or peer, or the upstream for 'direct')."""

    def __init__(self, link: Link) -> None:
        super().__init__(daemon=True)
        self.link = link
        self.most = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.most = max(self.most, self.link.send_queue())

    def stop(self) -> None:
        self.done.set()
        self.join()


@dataclass
class Measured:
    """What one row's client saw, and what was measured beside it."""

    seen: dict[str, Any]
    seconds: float
    link_bytes: tuple[int, int]
    send_queue_max: int
    queue_drops: int
    cpu_s: float | None
    cpu_ticks_s: float | None


def run_client(link: Link, plan: ClientPlan, peer: Peer | None, timeout: float) -> Measured:
    """bench/weak_client.py in the link's namespace for *plan*; the gateway's or
    peer's CPU time, the link's bytes and the sender's send queue over its run."""
    cpu_before = cpu_seconds(peer) if peer is not None else 0.0
    ticks_before = peer.cpu_seconds() if peer is not None else 0.0
    down_before, up_before = link.counters()
    drops_before = link.queue_drops()
    started = time.monotonic()
    sampler = SendQueueSampler(link)
    sampler.start()
    command = ["taskset", "-c", str(LOAD_CORE), sys.executable, "-m", "bench.weak_client"]
    try:
        done = subprocess.run(
            link.in_namespace(*command, plan.to_json()),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        sampler.stop()
    seconds = time.monotonic() - started
    down_after, up_after = link.counters()
    if done.returncode != 0:
        raise RuntimeError(f"the client failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return Measured(
        seen=json.loads(done.stdout.strip().splitlines()[-1]),
        seconds=seconds,
        link_bytes=(down_after - down_before, up_after - up_before),
        send_queue_max=sampler.most,
        queue_drops=link.queue_drops() - drops_before,
        cpu_s=cpu_seconds(peer) - cpu_before if peer is not None else None,
        cpu_ticks_s=peer.cpu_seconds() - ticks_before if peer is not None else None,
    )


def run_row(
    link: Link,
    profile: Profile,
    row: Row,
    peer: Peer | None,
    upstream: MockUpstream,
    args: argparse.Namespace,
    tag: str,
) -> dict[str, Any]:
    """One row: *peer* started (None: the client goes to the upstream directly), warmed
    up on loopback, the streams run over the link, *peer* stopped."""
    names = [f"{tag} {profile.name} {row.label}#{n}" for n in range(args.streams)]
    plan_port = peer.listen_port if peer is not None else upstream.port
    plan = ClientPlan(
        profile=profile,
        target=(link.host_address, plan_port),
        names=names,
        model=row.model,
        headers=dict(row.headers),
        parallel=args.parallel,
        resume=row.resume,
        attempts=RESUME_ATTEMPTS if row.resume else args.attempts,
        deadline_s=args.deadline,
        seed=args.seed,
    )
    waves = -(-args.streams // args.parallel)
    if peer is not None:
        peer.start(str(PROXY_CORE))
    try:
        warm_up(plan_port, row.model)
        measured = run_client(link, plan, peer, waves * args.deadline + 60)
    finally:
        if peer is not None:
            peer.stop()
    streams = measured.seen["streams"]
    summary = summarize(streams, upstream.log(), measured.link_bytes, measured.cpu_s)
    ticks = measured.cpu_ticks_s
    return {
        "profile": profile.name,
        "row": row.label,
        "seconds": measured.seconds,
        **summary,
        "send_queue_max_kb": measured.send_queue_max / 1000,
        "downlink_queue_drops": measured.queue_drops,
        # The same from /proc/<pid>/stat (utime + stime, 10 ms ticks), for comparison.
        "cpu_ms_per_stream_ticks": ticks * 1000 / len(names) if ticks is not None else None,
        "relay": measured.seen["relay"],
        "streams_seen": [
            {k: v for k, v in s.items() if k != "text"} | {"chars": len(s["text"])} for s in streams
        ],
    }


def stop_on_sigterm() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so the link and the processes are removed."""

    def leave(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGHUP, leave)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", default=",".join(PROFILES), help="of " + ", ".join(PROFILES))
    parser.add_argument(
        "--rows", help="only the rows whose label contains one of these (comma-separated)"
    )
    parser.add_argument("--streams", type=int, default=4, help="streams per row")
    parser.add_argument("--parallel", type=int, default=2, help="streams at once")
    parser.add_argument("--tokens", type=int, default=300, help="content tokens per stream")
    parser.add_argument(
        "--attempts", type=int, default=3, help="requests per stream for a client that starts over"
    )
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds a stream may take")
    parser.add_argument(
        "--seed", type=int, default=7, help="jitter and drop times (the same every row)"
    )
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    try:
        check_tools()
    except LinkUnavailable as exc:
        sys.exit(f"bench-weak: {exc}")
    profiles = [PROFILES[name] for name in args.profiles.split(",")]
    wanted = args.rows.split(",") if args.rows else None
    stop_on_sigterm()
    os.sched_setaffinity(0, {LOAD_CORE})
    tag = secrets.token_hex(4)
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    started = time.monotonic()
    with Link() as link, tempfile.TemporaryDirectory() as tmp:
        upstream = MockUpstream(link, args.tokens)
        try:
            available = link_peers(Path(tmp), upstream.port, link.host_address)
            for profile in profiles:
                link.shape(profile)
                print(f"--- {profile.name}: {profile.describe()}", flush=True)
                for row in rows_for(profile):
                    if wanted and not any(w in row.label for w in wanted):
                        continue
                    if row.peer != "direct" and row.peer not in available:
                        skipped.append(f"{profile.name}/{row.label} ({row.peer} is not installed)")
                        continue
                    peer = available.get(row.peer)
                    result = run_row(link, profile, row, peer, upstream, args, tag)
                    results.append(result)
                    print(table([result]).splitlines()[-1], flush=True)
        finally:
            upstream.stop()
    took = time.monotonic() - started
    text = (
        table(results) + "\n\nTargets:\n\n" + "\n".join(targets(results, PLAIN, SAVE_DATA, RESUME))
    )
    if skipped:
        text += "\n\nNot run: " + "; ".join(skipped)
    header = (
        f"# Weak links, {datetime.date.today().isoformat()}\n\n"
        + "".join(f"- **{p.name}**: {p.describe()}\n" for p in profiles)
        + f"\n{args.streams} streams per row, {args.parallel} at a time, {args.tokens} tokens "
        f"each at 40 to 60 tokens/s (OpenAI chat chunks, usage, [DONE]); gateway or peer on core "
        f"{PROXY_CORE}, upstream, relay and client on core {LOAD_CORE}. Link bytes: the veth's "
        "counters (headers and retransmissions included). Under drops a client without "
        f"resume starts a dropped stream over (at most {args.attempts} requests). "
        f"The run took {took / 60:.1f} minutes.\n\n"
    )
    print("\n" + header + text)
    if not args.no_save:
        machine = (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        )
        path = save_results(
            "weak",
            header,
            text,
            {
                "args": vars(args),
                "machine": machine,
                "profiles": [asdict(p) for p in profiles],
                "rows": results,
            },
        )
        print(f"written: {path}")


if __name__ == "__main__":
    main()
