"""The Bedrock scenario: CPU per chunk of a Bedrock event stream read back as a client's
API, next to a Messages stream passed through.

    make bench-bedrock
    .venv-bench/bin/python -m bench.bedrock --seconds 20 --rounds 3
    .venv-bench/bin/python -m bench.bedrock --profile 3     # cProfile of row 3
    .venv-bench/bin/python -m bench.bedrock --inprocess     # or --stages

The upstream (bench/bedrock_upstream.py) answers every request with the same answer —
``--chunks`` text deltas of four characters, as bench/translate.py's chat stream — in
the wire format the path asks for: Anthropic's Messages SSE (``…/messages``), Bedrock's
InvokeModelWithResponseStream (``/model/{id}/invoke-with-response-stream``: one AWS
event-stream ``chunk`` frame per Messages event, ``{"bytes": base64, "p": padding}``) or
ConverseStream (``/model/{id}/converse-stream``), as fast as the socket takes it.
Clients keep ``--users`` streams going at once for ``--seconds``. The gateway runs alone
on core 0 (the upstream and the clients share core 1); what is reported is its CPU time
(user + system) per text delta it carried, and per request. Rows:

0. a Messages client, an ``anthropic`` cluster, in a gateway without a Bedrock cluster
   (no bedrock filter in its chain);
1. a Messages client, an ``anthropic`` cluster (SSE passed through), in the gateway that
   also has a Bedrock cluster: the baseline of the rows below;
2. a Messages client, a Bedrock cluster, InvokeModel (frames → Messages SSE);
3. a chat client, the same (frames → Messages SSE → chat chunks): the issue's row;
4. a chat client, a Bedrock cluster, Converse (a model without ``anthropic.``: frames →
   Messages SSE → chat chunks);
5. a Messages client, Converse (frames → Messages SSE);
6. and 7. rows 1 and 3 on a third gateway, the same as the second but for its reactor:
   `GatewayReactor` installed before twistd reads the config. (Until 2026-12-07 reading a
   config with a Bedrock cluster imported Twisted's reactor — the bedrock filter took the
   clock then — so ``twistd filterproxy`` ran on Twisted's default epoll reactor; the
   table says which reactor each gateway runs on, and these rows check it stays so.)

The gateways use the default chain of their config and a Bedrock API key (a bearer: no
SigV4, which signs each request, not each chunk); all three run at once, pinned to core
0 (an idle one costs nothing). Every round runs every row once; the table has each
row's median over the rounds; the busy time of core 0 outside the gateway, and of
core 1 outside the upstream and the clients (other processes, interrupts), says how
much the machine disturbed the run. The target: row 3 at most 2x row 1.

After the run, and alone with ``--inprocess``: rows 0-5 in process, the gateway's own
objects on in-memory transports (no sockets, no reactor: steadier on a busy machine,
and only the Python-level work); with ``--stages``: each step a text delta takes, timed
alone. Both use the installed (compiled) modules: where the CPU of the Bedrock rows goes.

Results go to bench/results/<date>-<machine>-bedrock.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import os
import pstats
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

from bench import bedrock_upstream as wire
from bench.peers import BIN, Peer, free_port, save_results
from bench.run import LOAD_CORE, PROXY_CORE
from bench.translate import CLIENT_KEY, Case, load

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: The model of each path: the anthropic cluster's, InvokeModel's (Claude), Converse's.
MESSAGES_MODEL = "bench"
INVOKE_MODEL = "anthropic.claude-bench-v1:0"
CONVERSE_MODEL = "amazon.nova-bench-v1:0"
#: How many times as much CPU per chunk as the pass-through row the issue allows row 3.
TARGET = 2.0
TARGET_ROW, BASE_ROW = 3, 1

CLUSTERS = """
listeners: []
access_log: false
admin: {{listen: "tcp:{admin}:interface=127.0.0.1"}}
clusters:
  anthropic:
    provider: anthropic
    url: http://127.0.0.1:{upstream}
    api_key: sk-bench
    max_idle_connections: 1024
{bedrock}routes:
  - models: [{messages_model}]
    cluster: anthropic
{bedrock_route}"""
BEDROCK_CLUSTER = """  bedrock:
    provider: bedrock
    url: http://127.0.0.1:{upstream}
    region: us-east-1
    api_key: x
    max_idle_connections: 1024
"""
BEDROCK_ROUTE = "  - cluster: bedrock\n"


def messages_body(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "stream": True,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "hi"}],
    }


def chat_body(model: str) -> dict[str, Any]:
    return {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}


MESSAGES, CHAT = "/v1/messages", "/v1/chat/completions"
CASES = [
    Case(
        "filterproxy",
        "Messages SSE passed through → Messages client (no Bedrock cluster in the gateway)",
        MESSAGES,
        messages_body(MESSAGES_MODEL),
        b"message_stop",
    ),
    Case(
        "filterproxy-bedrock",
        "Messages SSE passed through → Messages client",
        MESSAGES,
        messages_body(MESSAGES_MODEL),
        b"message_stop",
    ),
    Case(
        "filterproxy-bedrock",
        "Bedrock invoke stream → Messages client",
        MESSAGES,
        messages_body(INVOKE_MODEL),
        b"message_stop",
    ),
    Case(
        "filterproxy-bedrock",
        "Bedrock invoke stream → chat client",
        CHAT,
        chat_body(INVOKE_MODEL),
        b"[DONE]",
    ),
    Case(
        "filterproxy-bedrock",
        "Bedrock Converse stream → chat client",
        CHAT,
        chat_body(CONVERSE_MODEL),
        b"[DONE]",
    ),
    Case(
        "filterproxy-bedrock",
        "Bedrock Converse stream → Messages client",
        MESSAGES,
        messages_body(CONVERSE_MODEL),
        b"message_stop",
    ),
    Case(
        "filterproxy-bedrock-gateway-reactor",
        "row 1 on the gateway's reactor (installed before twistd reads the config)",
        MESSAGES,
        messages_body(MESSAGES_MODEL),
        b"message_stop",
    ),
    Case(
        "filterproxy-bedrock-gateway-reactor",
        "row 3 on the gateway's reactor (installed before twistd reads the config)",
        CHAT,
        chat_body(INVOKE_MODEL),
        b"[DONE]",
    ),
]


class Upstream:
    """bench/bedrock_upstream.py on the load core."""

    def __init__(self, chunks: int) -> None:
        self.process = subprocess.Popen(
            [
                "taskset",
                "-c",
                str(LOAD_CORE),
                sys.executable,
                str(HERE / "bedrock_upstream.py"),
                "--port",
                "0",
                "--chunks",
                str(chunks),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline().split()[1])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


#: twistd, with the gateway's reactor installed first (``python -c``: the source tree,
#: which ``-c`` puts first on the path, taken off it).
TWISTD_ON_GATEWAY_REACTOR = (
    "import sys; sys.path.pop(0); "
    "from filterproxy.runtime.reactor import install_if_unset; install_if_unset(); "
    "from twisted.scripts.twistd import run; sys.exit(run())"
)
#: The gateways: (name, with the Bedrock cluster, GatewayReactor installed before twistd
#: reads the config).
GATEWAYS = (
    ("filterproxy", False, False),
    ("filterproxy-bedrock", True, False),
    ("filterproxy-bedrock-gateway-reactor", True, True),
)


def gateway_peers(workdir: Path, upstream: int, extra: list[str] | None = None) -> dict[str, Peer]:
    """The gateways, each on a free port: one with the anthropic cluster only, one with
    the Bedrock cluster too, and the same with the gateway's reactor installed before
    twistd reads the config (*extra*: more twistd options, before the plugin's)."""
    found = {}
    for name, bedrock, preinstalled in GATEWAYS:
        conf = workdir / f"{name}.yaml"
        conf.write_text(
            CLUSTERS.format(
                upstream=upstream,
                admin=free_port(),
                messages_model=MESSAGES_MODEL,
                bedrock=BEDROCK_CLUSTER.format(upstream=upstream) if bedrock else "",
                bedrock_route=BEDROCK_ROUTE if bedrock else "",
            )
        )
        port = free_port()
        twistd = (
            [str(BIN / "python"), "-c", TWISTD_ON_GATEWAY_REACTOR]
            if preinstalled
            else [str(BIN / "twistd")]
        )
        found[name] = Peer(
            name,
            [
                *twistd,
                "-n",
                "--pidfile=",
                "-l",
                str(workdir / f"{name}.log"),
                *(extra or []),
                "filterproxy",
                "-c",
                str(conf),
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
            ],
            listen_port=port,
        )
    return found


def reactor_of(peer: Peer) -> str:
    """The reactor class twistd says the gateway runs on (its log's line)."""
    command = peer.command or []
    log = Path(command[command.index("-l") + 1])
    found = re.search(r"reactor class: ([\w.]+?)\.?$", log.read_text(), re.MULTILINE)
    return found.group(1) if found else "?"


def last_text(chunks: int) -> bytes:
    """The last text delta of the upstream's answer (as bench/bedrock_upstream.py makes
    it), JSON-encoded as the client gets it."""
    return b'"%d "' % (chunks - 1)


def warm_up(port: int, case: Case, chunks: int) -> None:
    """One request of *case*, which must end well and carry the answer's last delta."""
    deadline = time.monotonic() + 60
    while True:
        try:
            response = httpx.post(
                f"http://127.0.0.1:{port}{case.path}",
                json=case.body,
                timeout=30,
                headers={"authorization": f"Bearer {CLIENT_KEY}", "x-api-key": CLIENT_KEY},
            )
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
            continue
        if (
            response.status_code != 200
            or case.end not in response.content
            or last_text(chunks) not in response.content.replace(b"x", b"")
        ):
            raise RuntimeError(f"{case.label}: {response.status_code} {response.text[:600]}")
        return


def core_busy(core: int) -> float:
    """Seconds *core* has been busy (not idle, not waiting for I/O) since boot."""
    times = psutil.cpu_times(percpu=True)[core]
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def own_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of the processes *pids*."""
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def measure(
    peer: Peer,
    row: int,
    users: int,
    seconds: float,
    chunks: int,
    round_: int,
    load_pids: list[int],
) -> dict[str, Any]:
    """One row's figures: *users* streams for *seconds* after a warm-up. *load_pids*: the
    processes of the load core (this one, the upstream), whose CPU is not the others'."""
    case = CASES[row]
    warm_up(peer.port, case, chunks)
    asyncio.run(load(peer.port, case, users, 2.0))
    busy_before = core_busy(PROXY_CORE), core_busy(LOAD_CORE)
    cpu_before = peer.cpu_seconds(), own_cpu(load_pids)
    started = time.monotonic()
    done, failed = asyncio.run(load(peer.port, case, users, seconds))
    elapsed = time.monotonic() - started
    cpu = peer.cpu_seconds() - cpu_before[0]
    others = core_busy(PROXY_CORE) - busy_before[0] - cpu
    load_others = core_busy(LOAD_CORE) - busy_before[1] - (own_cpu(load_pids) - cpu_before[1])
    carried = done * chunks
    return {
        "row": row,
        "round": round_,
        "peer": peer.name,
        "case": case.label,
        "streams": done,
        "failed": failed,
        "chunks_per_s": carried / elapsed,
        "cpu_us_per_chunk": cpu / carried * 1e6 if carried else None,
        "cpu_us_per_request": cpu / done * 1e6 if done else None,
        "cpu_share": cpu / elapsed,
        "core_others_share": max(others, 0.0) / elapsed,
        "load_core_others_share": max(load_others, 0.0) / elapsed,
    }


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's medians over its rounds (and the range of its CPU per chunk)."""
    out = []
    for row in sorted({r["row"] for r in rows}):
        runs = [r for r in rows if r["row"] == row and r["cpu_us_per_chunk"]]
        per_chunk = [r["cpu_us_per_chunk"] for r in runs]
        out.append(
            {
                "row": row,
                "case": CASES[row].label,
                "rounds": len(runs),
                "streams": sum(r["streams"] for r in runs),
                "failed": sum(r["failed"] for r in rows if r["row"] == row),
                "chunks_per_s": statistics.median(r["chunks_per_s"] for r in runs)
                if runs
                else None,
                "cpu_us_per_chunk": statistics.median(per_chunk) if runs else None,
                "cpu_us_per_chunk_range": (min(per_chunk), max(per_chunk)) if runs else None,
                "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in runs)
                if runs
                else None,
                "core_others_share": statistics.median(r["core_others_share"] for r in runs)
                if runs
                else None,
                "load_core_others_share": statistics.median(
                    r["load_core_others_share"] for r in runs
                )
                if runs
                else None,
            }
        )
    return out


def ratios(rows: list[dict[str, Any]], row: int, base: int) -> list[float]:
    """*row*'s CPU per chunk over *base*'s, round by round."""
    found = []
    for round_ in sorted({r["round"] for r in rows}):
        pair = {r["row"]: r["cpu_us_per_chunk"] for r in rows if r["round"] == round_}
        if pair.get(row) and pair.get(base):
            found.append(pair[row] / pair[base])
    return found


def table(medians: list[dict[str, Any]]) -> str:
    lines = [
        "| # | request | streams | failed | chunks/s | CPU µs per chunk (range) | "
        f"CPU µs per request | vs row {BASE_ROW} | core {PROXY_CORE} busy outside the gateway | "
        f"core {LOAD_CORE} busy outside the benchmark |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = next(
        (m["cpu_us_per_chunk"] for m in medians if m["row"] == BASE_ROW and m["rounds"]), None
    )
    for m in medians:
        per = m["cpu_us_per_chunk"]
        if not per:
            lines.append(
                f"| {m['row']} | {m['case']} | 0 | {m['failed']} | — | — | — | — | — | — |"
            )
            continue
        low, high = m["cpu_us_per_chunk_range"]
        ratio = f"{per / base:.2f}x" if base else "—"
        lines.append(
            f"| {m['row']} | {m['case']} | {m['streams']} | {m['failed']} | "
            f"{m['chunks_per_s']:,.0f} | {per:.1f} ({low:.1f}-{high:.1f}) | "
            f"{m['cpu_us_per_request']:,.0f} | {ratio} | {m['core_others_share']:.0%} | "
            f"{m['load_core_others_share']:.0%} |"
        )
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]], medians: list[dict[str, Any]]) -> str:
    by_row = {m["row"]: m["cpu_us_per_chunk"] for m in medians}
    row, base = by_row.get(TARGET_ROW), by_row.get(BASE_ROW)
    if not row or not base:
        return f"Target: row {TARGET_ROW} at most {TARGET:g}x row {BASE_ROW}: not measured."
    ratio = row / base
    rounds = ", ".join(f"{r:.2f}" for r in ratios(rows, TARGET_ROW, BASE_ROW))
    text = (
        f"Target: row {TARGET_ROW} (the issue's: a Bedrock event stream to a chat client) "
        f"at most {TARGET:g}x row {BASE_ROW} (Messages passed through) per chunk: "
        f"**{'met' if ratio <= TARGET else 'missed'}**, {ratio:.2f}x "
        f"({row:.1f} vs {base:.1f} µs; rounds {rounds})."
    )
    if by_row.get(0):
        text += f" Against row 0 (no Bedrock cluster in the gateway): {row / by_row[0]:.2f}x."
    if by_row.get(6) and by_row.get(7):
        text += (
            f" On the gateway's reactor (rows 7 and 6): {by_row[7] / by_row[6]:.2f}x "
            f"({by_row[7]:.1f} vs {by_row[6]:.1f} µs)."
        )
    return text


def profile_text(path: Path, limit: int = 30) -> str:
    """A cProfile file's functions by own time, then by cumulative time."""
    stream = io.StringIO()
    stats = pstats.Stats(str(path), stream=stream)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return stream.getvalue()


def profile(row: int, users: int, seconds: float, chunks: int) -> None:
    """Row *row* once, its gateway under cProfile (twistd's ``--profile``); the profile
    sorted by own time, then by cumulative time. Functions compiled with mypyc are not
    seen by the profiler: their time is their nearest interpreted caller's."""
    case = CASES[row]
    upstream = Upstream(chunks)
    os.sched_setaffinity(0, {LOAD_CORE})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "gateway.prof"
            peer = gateway_peers(
                Path(tmp),
                upstream.port,
                ["--profile", str(out), "--profiler", "cprofile", "--savestats"],
            )[case.peer]
            peer.start(str(PROXY_CORE))
            try:
                result = measure(
                    peer, row, users, seconds, chunks, 0, [os.getpid(), upstream.process.pid]
                )
            finally:
                peer.stop()
            print(table(summary([result])))
            print(profile_text(out))
    finally:
        upstream.stop()


def per_call(fn: Any, count: int) -> float:
    """Microseconds per call of *fn* (the best of three passes of *count* calls)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(count):
            fn()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def minimal_frame_read(data: bytes) -> tuple[dict[str, str], bytes]:
    """What reading a frame takes at the least (both CRCs, the string headers, the
    payload sliced out), in the interpreter: the floor of the decoding step."""
    total, headers_length, prelude_crc = struct.unpack_from(">III", data)
    if zlib.crc32(data[:8]) != prelude_crc or zlib.crc32(data[: total - 4]) != int.from_bytes(
        data[total - 4 : total]
    ):
        raise ValueError("CRC")
    headers = {}
    at, end = 12, 12 + headers_length
    while at < end:
        name_length = data[at]
        name = data[at + 1 : at + 1 + name_length].decode()
        at += 1 + name_length + 1  # (the type byte: strings only here)
        value_length = int.from_bytes(data[at : at + 2])
        headers[name] = data[at + 2 : at + 2 + value_length].decode()
        at += 2 + value_length
    return headers, data[end : total - 4]


def stages(chunks: int, count: int) -> str:
    """The steps a text delta takes in the Bedrock rows, each timed alone in this process
    with the gateway's modules as installed, µs per delta: a table in Markdown."""
    # The installed package (the compiled build the gateway under test runs), not the
    # source tree this runs in, which ``python -m`` puts first on the path.
    assert "filterproxy" not in sys.modules
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    from botocore.eventstream import EventStreamBuffer

    from filterproxy.extensions.bedrock.eventstream import FrameReader
    from filterproxy.extensions.bedrock.wire import invoke_event
    from filterproxy.http.sse import SSEDecoder
    from filterproxy.translate import chat_over_messages
    from filterproxy.translate.converse import MessagesFromConverseStream

    def body(piece: bytes) -> bytes:  # an HTTP chunk's data
        return piece.split(b"\r\n", 1)[1][:-2]

    answers = wire.Answers(chunks, 4)
    invoke_frame = body(answers.invoke[2])  # the first text delta
    converse_frame = body(answers.converse[1])
    sse_event = body(answers.sse[2])
    reader = FrameReader(1 << 20)
    invoke_payload = reader.feed(invoke_frame)[0].payload
    converse_payload = reader.feed(converse_frame)[0].payload
    chat = chat_over_messages.ChatFromMessagesStream("bench", False)
    chat.feed(b"".join(body(p) for p in answers.sse[:2]))
    decoder = SSEDecoder()
    converse = MessagesFromConverseStream(CONVERSE_MODEL)
    converse.event("contentBlockDelta", json.loads(converse_payload))
    buffer = EventStreamBuffer()

    def botocore_read(data: bytes) -> Any:
        buffer.add_data(data)
        return next(buffer)

    def converse_step() -> bytes:  # as the bedrock filter does it
        document = orjson.loads(converse_payload)
        document.pop("p", None)
        return bytes(converse.event("contentBlockDelta", document))

    steps: list[tuple[str, int, Any]] = [
        (
            "frame read: FrameReader.feed (the gateway's reader)",
            len(invoke_frame),
            lambda: reader.feed(invoke_frame),
        ),
        (
            "for comparison: botocore's EventStreamBuffer (add_data, next)",
            len(invoke_frame),
            lambda: botocore_read(invoke_frame),
        ),
        (
            "frame read, at the least (CRCs, headers, payload; interpreted)",
            len(invoke_frame),
            lambda: minimal_frame_read(invoke_frame),
        ),
        (
            "CRC32 of the frame, twice (zlib)",
            len(invoke_frame),
            lambda: (zlib.crc32(invoke_frame[:8]), zlib.crc32(invoke_frame[:-4])),
        ),
        (
            "invoke chunk → Messages SSE event: wire.invoke_event",
            len(invoke_payload),
            lambda: invoke_event(invoke_payload),
        ),
        (
            "Messages SSE event → chat chunk: ChatFromMessagesStream.feed",
            len(sse_event),
            lambda: chat.feed(sse_event),
        ),
        (
            "… of which SSEDecoder.feed",
            len(sse_event),
            lambda: decoder.feed(sse_event),
        ),
        (
            "Converse event → Messages SSE: orjson.loads + MessagesFromConverseStream.event",
            len(converse_payload),
            converse_step,
        ),
        ("… of which orjson.loads", len(converse_payload), lambda: orjson.loads(converse_payload)),
    ]
    compiled = str(chat_over_messages.__file__).endswith(".so")
    lines = [
        "Modules: the installed package, "
        + ("compiled with mypyc where setup.py says." if compiled else "interpreted."),
        "",
        "| step, per text delta | bytes in | µs |",
        "|---|---:|---:|",
    ]
    for label, size, call in steps:
        lines.append(f"| {label} | {size} | {per_call(call, count):.2f} |")
    return "\n".join(lines)


def open_stream(gateway: Any, case: Case, answers: wire.Answers) -> Any:
    """A stream of *case* open through *gateway*'s own objects on in-memory transports,
    its first events already through; a function that feeds it one more text delta (the
    same one each time) and drops what reached the client."""
    from twisted.internet.testing import StringTransport

    from filterproxy.downstream.server import GatewayServerFactory
    from filterproxy.upstream.connection import HTTP11ClientConnection, State

    model = case.body["model"]
    cluster, head = "bedrock", wire.EVENT_STREAM_HEAD
    if model == MESSAGES_MODEL:
        cluster, head, pieces, opened = "anthropic", wire.SSE_HEAD, answers.sse, 2
    elif model == INVOKE_MODEL:
        pieces, opened = answers.invoke, 2  # message_start, content_block_start
    else:
        pieces, opened = answers.converse, 1  # messageStart (a delta opens the block)
    pool = gateway.clusters[cluster].endpoints[0].pool
    upstream = HTTP11ClientConnection(pool)
    upstream.makeConnection(StringTransport())
    pool.open_count = 1
    pool.idle.append(upstream)  # what the router takes for the request
    client_transport = StringTransport()
    client = GatewayServerFactory(gateway).buildProtocol(None)
    client.makeConnection(client_transport)
    body = json.dumps(case.body).encode()
    client.dataReceived(
        b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (case.path.encode(), len(body), body)
    )
    assert upstream.state is State.BUSY, case.label
    upstream.dataReceived(head + b"".join(pieces[:opened]))
    delta = pieces[opened]
    client_transport.clear()
    upstream.dataReceived(delta)
    assert b'0 "' in client_transport.value(), (case.label, client_transport.value())

    def one_delta() -> None:
        upstream.dataReceived(delta)
        client_transport.clear()

    return one_delta


def inprocess(count: int, chunks: int) -> str:
    """Rows 0-5's Python-level cost per text delta, without sockets or a reactor: the
    gateway's own objects (installed, compiled) on in-memory transports, one stream kept
    open, the same delta fed to its upstream connection again and again (as
    bench/inprocess.py measures pass-through). A table in Markdown."""
    assert "filterproxy" not in sys.modules
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    from bench.inprocess import _Clock
    from filterproxy.extensions.builtin import load_config
    from filterproxy.server.service import Gateway

    answers = wire.Answers(chunks, 4)
    lines = ["| # | request | µs per delta | vs row 1 |", "|---:|---|---:|---:|"]
    results: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        configs = {}
        for name, bedrock, _ in GATEWAYS[:2]:
            configs[name] = Path(tmp) / f"{name}.yaml"
            configs[name].write_text(
                CLUSTERS.format(
                    upstream=9,
                    admin=9,
                    messages_model=MESSAGES_MODEL,
                    bedrock=BEDROCK_CLUSTER.format(upstream=9) if bedrock else "",
                    bedrock_route=BEDROCK_ROUTE if bedrock else "",
                )
            )
        for row, case in enumerate(CASES[:6]):
            gateway = Gateway(load_config(configs[case.peer]), _Clock())
            results[row] = per_call(open_stream(gateway, case, answers), count)
            ratio = f"{results[row] / results[1]:.2f}x" if 1 in results else "-"
            lines.append(f"| {row} | {case.label} | {results[row]:.2f} | {ratio} |")
    return "\n".join(lines)


def breakdown(chunks: int) -> str:
    """Where the CPU goes: ``--inprocess`` and ``--stages``, each in a process of its own
    (they import the installed gateway), as Markdown."""
    parts = []
    for option, title in (
        ("--inprocess", "In process (no sockets, no reactor), µs per text delta"),
        ("--stages", "Each step of a text delta alone, in process"),
    ):
        found = subprocess.run(
            [sys.executable, "-m", "bench.bedrock", option, "--chunks", str(chunks)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        parts.append(f"## {title}\n\n{found.stdout.strip()}")
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", default=",".join(str(i) for i in range(len(CASES))))
    parser.add_argument("--profile", type=int, metavar="ROW", help="profile one row instead")
    parser.add_argument(
        "--stages", action="store_true", help="time each step of a delta in process instead"
    )
    parser.add_argument(
        "--inprocess",
        action="store_true",
        help="time each row's delta in process (no sockets, no reactor) instead",
    )
    parser.add_argument(
        "--no-breakdown",
        action="store_true",
        help="leave out the in-process tables (--inprocess, --stages) after the run",
    )
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    if args.stages:
        os.sched_setaffinity(0, {PROXY_CORE})
        print(stages(args.chunks, 20000))
        return
    if args.inprocess:
        os.sched_setaffinity(0, {PROXY_CORE})
        print(inprocess(20000, args.chunks))
        return
    if args.profile is not None:
        profile(args.profile, args.users, args.seconds, args.chunks)
        return
    wanted = [int(r) for r in args.rows.split(",")]
    upstream = Upstream(args.chunks)
    os.sched_setaffinity(0, {LOAD_CORE})
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            peers = gateway_peers(Path(tmp), upstream.port)
            needed = [p for p in peers.values() if any(CASES[r].peer == p.name for r in wanted)]
            for peer in needed:
                peer.start(str(PROXY_CORE))
            reactors = {peer.name: reactor_of(peer) for peer in needed}
            print("reactors:", reactors, flush=True)
            try:
                for round_ in range(args.rounds):
                    for row in wanted:
                        peer = peers[CASES[row].peer]
                        rows.append(
                            measure(
                                peer,
                                row,
                                args.users,
                                args.seconds,
                                args.chunks,
                                round_,
                                [os.getpid(), upstream.process.pid],
                            )
                        )
                        print(f"round {round_ + 1}:", table(summary(rows[-1:])).splitlines()[-1])
            finally:
                for peer in needed:
                    peer.stop()
    finally:
        upstream.stop()
    medians = summary(rows)
    text = f"{table(medians)}\n\n{verdict(rows, medians)}"
    print(text)
    if not args.no_breakdown:
        text += "\n\n" + breakdown(args.chunks)
        print(text.split("\n\n", 2)[-1])
    if not args.no_save:
        load_after = os.getloadavg()
        header = (
            f"# Bedrock event streams, {datetime.date.today().isoformat()}\n\n"
            f"{args.users} streams at once, {args.chunks} text deltas of 4 characters each, "
            f"{args.seconds:.0f} s per row, {args.rounds} rounds (every row once per round; "
            f"medians, and the range over the rounds); gateway on core {PROXY_CORE}, "
            f"upstream and clients on core {LOAD_CORE}. Load average "
            f"{load_before[0]:.1f} before the run, {load_after[0]:.1f} after. Reactors: "
            + "; ".join(f"{name}: {reactor}" for name, reactor in reactors.items())
            + ".\n\n"
        )
        save_results(
            "bedrock",
            header,
            text,
            {"args": vars(args), "reactors": reactors, "rows": rows, "medians": medians},
        )


if __name__ == "__main__":
    main()
