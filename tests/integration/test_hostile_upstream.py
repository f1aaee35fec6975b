"""An upstream that misbehaves on purpose (tests/hostile_server.py), through every kind of
route: plain pass-through, gateway keys (the usage filter reads the stream to take the
usage chunk out), translated each way (a Messages client in front of a chat upstream, a
chat client in front of a Messages upstream), the Responses API, and a resumable route.

For every case:

- memory stays bounded: the gateway's peak resident set (``VmHWM``, reset before the
  case) and what it holds after are measured, and bounded generously;
- time is bounded: the client's timeout is the bound (not a timing claim);
- the client is told the truth: an error status in its API's shape, or its API's error
  event and an answer that does not end cleanly — never a clean end of a broken answer,
  never a 200 made up for one. A plain pass-through route passes what the upstream sent
  byte for byte (nothing there reads it), and keeps it flowing, unheld;
- the pool is unharmed: an ordinary request on the same route right after gets its
  answer.
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from filterproxy.extensions.keys.config import hash_key
from filterproxy.http.sse import SSEDecoder

from .conftest import Gateway, LocalServer, Process, start_gateway

HOSTILE_SCRIPT = Path(__file__).resolve().parent.parent / "hostile_server.py"
MiB = 1024 * 1024
#: How much more than before a case the gateway may hold at its peak, and after.
PEAK_BOUND = 60 * MiB
AFTER_BOUND = 60 * MiB
KEY = "fpk-hostile-test-key-0123456789"
#: What each case's numbers were (printed with -s, for the record).
MEASURED: list[str] = []


@dataclass(frozen=True)
class Kind:
    """A kind of route: which gateway, the client's path and API, the model."""

    name: str
    keys: bool
    path: str
    api: str  # chat, messages or responses: the client's
    model: str

    def body(self, stream: bool) -> dict[str, Any]:
        message = [{"role": "user", "content": "hi"}]
        if self.api == "messages":
            return {"model": self.model, "max_tokens": 50, "messages": message, "stream": stream}
        if self.api == "responses":
            return {"model": self.model, "input": "hi", "stream": stream}
        return {"model": self.model, "messages": message, "stream": stream}


KINDS = {
    k.name: k
    for k in (
        Kind("plain", False, "/v1/chat/completions", "chat", "plain"),
        Kind("keys", True, "/v1/chat/completions", "chat", "plain"),
        Kind("resumable", False, "/v1/chat/completions", "chat", "resumable"),
        Kind("messages-to-chat", False, "/v1/messages", "messages", "to-chat"),
        Kind("chat-to-messages", False, "/v1/chat/completions", "chat", "to-messages"),
        Kind("responses", False, "/v1/responses", "responses", "to-chat"),
    )
}

#: What the client must get, per case and kind (`check`):
#: error  — an error status (>= 400) with an error document in the client's API shape;
#: event  — a 200 event stream carrying the client API's error event, cut off (no clean end);
#: cut    — a 2xx answer cut off: a compressed body passed as the upstream sent it, which the
#:          gateway cannot put an event into;
#: passed — the upstream's answer as it came, to its end (nothing on the route reads it).
EXPECTED: dict[str, dict[str, str]] = {
    "no-line-end": {"plain": "passed", "*": "event"},
    "huge-event": {"plain": "passed", "*": "event"},
    "gzip-json": {"plain": "cut", "keys": "cut", "resumable": "cut", "*": "error"},
    "gzip-sse": {"plain": "cut", "resumable": "cut", "*": "event"},
    "text-plain": {"plain": "passed", "keys": "passed", "resumable": "passed", "*": "error"},
    "html-200": {"plain": "passed", "keys": "passed", "resumable": "passed", "*": "error"},
    "paused-read": {"*": "error"},
    "stall": {"*": "event"},
    "reset-before-head": {"*": "error"},
    "reset-after-head": {"*": "event"},
    "reset-mid-event": {"*": "event"},
    "reset-mid-chunk-length": {"*": "event"},
}
#: What the error the client gets says, per case (where it gets one).
SAYS = {
    "no-line-end": "max_event_bytes",
    "huge-event": "max_event_bytes",
    "gzip-json": "inflates to more than 200 times",
    "gzip-sse": "inflates to more than 200 times",
    "text-plain": "text/plain",
    "html-200": "Service Unavailable",
    "paused-read": "timeouts.first_byte",
    "stall": "timeouts.idle",
    "reset-before-head": "closed the connection before sending a response",
    "reset-after-head": "closed the connection mid-response",
    "reset-mid-event": "closed the connection mid-response",
    "reset-mid-chunk-length": "closed the connection mid-response",
}
#: Cases whose request asks for a whole (non-streamed) answer.
WHOLE = {"gzip-json"}


@pytest.fixture(scope="module")
def hostile() -> Iterator[LocalServer]:
    process = Process([sys.executable, str(HOSTILE_SCRIPT)])
    try:
        yield LocalServer(process, int(process.wait_for(r"PORT (\d+)").group(1)))
    finally:
        process.stop()


def cluster(url: str, apis: str = "") -> str:
    return (
        f'{{url: "{url}", {apis} timeouts: {{connect: 2s, first_byte: 1500ms, idle: 1500ms}},'
        " retry: {base_interval: 10ms, max_interval: 20ms}}"
    )


@pytest.fixture(scope="module")
def gateways(
    hostile: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[bool, Gateway]]:
    """One gateway for the routes without keys, one with a key that has limits (its
    streams are asked for usage, and the usage chunk is taken out of them)."""
    routes = f"""
        clusters:
          plain: {cluster(hostile.url)}
          chat-only: {cluster(hostile.url, "apis: [chat],")}
          messages-only: {cluster(hostile.url, "apis: [messages],")}
        routes:
          - {{models: [plain], cluster: plain}}
          - {{models: [resumable], cluster: plain, resume: {{grace: 1s, keep: 5s}}}}
          - {{models: [to-chat], cluster: chat-only}}
          - {{models: [to-messages], cluster: messages-only}}
    """
    keys = f"""
        clusters:
          plain: {cluster(hostile.url)}
        keys:
          - {{name: hostile, hash: "sha256:{hash_key(KEY)}", limits: {{tokens_per_minute: 100000000}}}}
    """
    plain = start_gateway(routes, tmp_path_factory.mktemp("hostile"))
    keyed = start_gateway(keys, tmp_path_factory.mktemp("hostile-keys"))
    try:
        yield {False: plain, True: keyed}
    finally:
        plain.process.stop()
        keyed.process.stop()
        print("\n".join(["", "gateway RSS per case (before / peak / after, MiB):", *MEASURED]))


# -- measuring --------------------------------------------------------------------------


def _status(gateway: Gateway) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{gateway.process.pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                fields[name] = int(value.split()[0]) * 1024
    return fields


def reset_peak(gateway: Gateway) -> int:
    """Start measuring the gateway's peak resident set from now; its resident set now."""
    with open(f"/proc/{gateway.process.pid}/clear_refs", "w") as f:
        f.write("5")
    return _status(gateway)["VmRSS"]


def peak_and_now(gateway: Gateway) -> tuple[int, int]:
    status = _status(gateway)
    return status["VmHWM"], status["VmRSS"]


# -- one exchange ---------------------------------------------------------------------------


@dataclass
class Outcome:
    status: int
    headers: httpx.Headers
    #: Bytes received as they came (not decoded), in all; the first and last 256 KiB.
    received: int
    start: bytes
    end: bytes
    #: The body ended properly (not cut off).
    clean: bool

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def error_document(self) -> dict[str, Any]:
        return json.loads(self.start)  # type: ignore[no-any-return]

    def text_end(self) -> bytes:
        """The end of the body, inflated when it is compressed."""
        if self.headers.get("content-encoding") in ("gzip", "deflate") and self.received:
            assert self.received == len(self.start), "a compressed body read whole"
            inflater = zlib.decompressobj(31 if self.headers["content-encoding"] == "gzip" else 15)
            return inflater.decompress(self.start, 64 * MiB)[-256 * 1024 :]
        return self.end


def exchange(
    gateway: Gateway, kind: Kind, case: str, *, stream: bool = True, read_late: bool = False
) -> Outcome:
    headers = {"x-hostile": case} if case else {}
    if kind.keys:
        headers["authorization"] = f"Bearer {KEY}"
    keep = 256 * 1024
    start = bytearray()
    end = b""
    received = 0
    clean = True
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", gateway.url + kind.path, json=kind.body(stream), headers=headers
        ) as response,
    ):
        try:
            for piece in response.iter_raw():
                received += len(piece)
                if len(start) < keep:
                    start += piece[: keep - len(start)]
                end = (end + piece)[-keep:]
                if read_late and received >= MiB and received - len(piece) < MiB:
                    time.sleep(0.6)  # the client stops reading for a while
        except (httpx.RemoteProtocolError, httpx.ReadError) as e:
            clean = False
            end += f"\n[cut: {e}]".encode()
    return Outcome(response.status_code, response.headers, received, bytes(start), end, clean)


def error_events(outcome: Outcome, api: str) -> list[dict[str, Any]]:
    """The error events of the client's API at the end of *outcome*'s stream."""
    text = outcome.text_end()
    cut = text.rfind(b"\n[cut: ")
    if cut >= 0:
        text = text[:cut]
    # The end may start inside an event: decode from the first blank line on.
    first = text.find(b"\n\n")
    decoder = SSEDecoder()
    events = decoder.feed(
        text[first + 2 :] if first >= 0 and outcome.received > len(text) else text
    )
    found = []
    for event in events:
        if event.data is None or event.data == "[DONE]":
            continue
        try:
            document = json.loads(event.data)
        except ValueError:
            continue
        if not isinstance(document, dict):
            continue
        if api == "messages":
            is_error = event.event == "error" and document.get("type") == "error"
        elif api == "chat":
            is_error = isinstance(document.get("error"), dict)
        else:
            is_error = event.event in ("error", "response.failed")
        if is_error:
            found.append(document)
    return found


def check(outcome: Outcome, kind: Kind, expected: str, says: str) -> None:
    """The client was told the truth, as *expected* says it must be; its error (if it
    gets one) *says* what went wrong."""
    summary = (
        f"{outcome.status} {outcome.content_type!r} clean={outcome.clean} "
        f"received={outcome.received} end={outcome.end[-300:]!r}"
    )
    if expected == "error":
        assert outcome.status >= 400, summary
        assert outcome.clean, summary
        document = outcome.error_document()
        if kind.api == "messages":
            assert document["type"] == "error", summary
        assert says in document["error"]["message"], summary
        return
    assert 200 <= outcome.status < 300, summary
    if expected == "passed":
        assert outcome.clean, summary
        return
    assert not outcome.clean, summary  # never a clean end of a broken answer
    if expected == "event":
        assert outcome.content_type.startswith("text/event-stream"), summary
        errors = error_events(outcome, kind.api)
        assert errors and says in json.dumps(errors), summary
        if kind.api == "responses":
            assert {"error", "response.failed"} <= {e.get("type") for e in errors}, summary


def ordinary(gateway: Gateway, kind: Kind) -> None:
    """An ordinary request on the same route gets its whole answer (the pool is fine)."""
    outcome = exchange(gateway, kind, "", stream=True)
    assert outcome.status == 200 and outcome.clean, outcome
    text = outcome.start
    if kind.api == "messages":
        assert b"message_stop" in text and b'"fi"' in text and b'"ne"' in text, text
    elif kind.api == "responses":
        assert b"response.completed" in text and b"fine" in text.replace(b'"', b""), text
    else:
        assert b"[DONE]" in text, text
        content = [
            json.loads(e.data)["choices"][0]["delta"].get("content")
            for e in SSEDecoder().feed(text)
            if e.data and e.data.startswith("{") and json.loads(e.data).get("choices")
        ]
        assert "".join(c for c in content if c) == "fine", text


def expected_for(case: str, kind: str) -> str:
    table = EXPECTED[case]
    return table.get(kind, table["*"])


#: The upstream that stays silent: each of these takes a timeout, so they run at once.
SILENT = ("paused-read", "stall")
CASES = [(case, kind) for case in EXPECTED if case not in SILENT for kind in KINDS]


@pytest.mark.parametrize(("case", "kind_name"), CASES, ids=[f"{c}-{k}" for c, k in CASES])
def test_a_hostile_upstream_is_bounded_and_the_client_told_the_truth(
    gateways: dict[bool, Gateway], case: str, kind_name: str
) -> None:
    kind = KINDS[kind_name]
    gateway = gateways[kind.keys]
    before = reset_peak(gateway)
    outcome = exchange(gateway, kind, case, stream=case not in WHOLE)
    peak, after = peak_and_now(gateway)
    MEASURED.append(
        f"{case:24} {kind_name:18} {before / MiB:6.1f} / {peak / MiB:6.1f} / {after / MiB:6.1f}"
        f"   client got {outcome.received} bytes"
    )
    check(outcome, kind, expected_for(case, kind_name), SAYS[case])
    assert peak - before < PEAK_BOUND, MEASURED[-1]
    assert after - before < AFTER_BOUND, MEASURED[-1]
    ordinary(gateway, kind)


def test_a_silent_upstream_is_timed_out_on_every_route(gateways: dict[bool, Gateway]) -> None:
    """An upstream that stops reading the request, or stops mid-stream: the client gets
    the timeout's error (``timeouts.first_byte``, ``timeouts.idle``) — all routes at once."""
    befores = {keys: reset_peak(gateway) for keys, gateway in gateways.items()}
    work = [(case, kind) for case in SILENT for kind in KINDS.values()]
    with ThreadPoolExecutor(len(work)) as pool:
        outcomes = list(pool.map(lambda w: exchange(gateways[w[1].keys], w[1], w[0]), work))
    for (case, kind), outcome in zip(work, outcomes, strict=True):
        check(outcome, kind, expected_for(case, kind.name), SAYS[case])
    for keys, gateway in gateways.items():
        peak, after = peak_and_now(gateway)
        MEASURED.append(
            f"{'silent (all at once)':24} {'keys' if keys else 'the others':18} "
            f"{befores[keys] / MiB:6.1f} / {peak / MiB:6.1f} / {after / MiB:6.1f}"
        )
        assert peak - befores[keys] < PEAK_BOUND, MEASURED[-1]
    for kind in KINDS.values():
        ordinary(gateways[kind.keys], kind)


@pytest.mark.parametrize("kind_name", ["plain", "keys", "resumable", "messages-to-chat"])
def test_a_client_that_reads_late_holds_little_and_the_pool_stays_usable(
    gateways: dict[bool, Gateway], kind_name: str
) -> None:
    kind = KINDS[kind_name]
    gateway = gateways[kind.keys]
    before = reset_peak(gateway)
    outcome = exchange(gateway, kind, "big-stream", read_late=True)
    peak, after = peak_and_now(gateway)
    MEASURED.append(
        f"{'big-stream, read late':24} {kind_name:18} {before / MiB:6.1f} / {peak / MiB:6.1f}"
        f" / {after / MiB:6.1f}   client got {outcome.received} bytes"
    )
    assert outcome.status == 200 and outcome.clean and outcome.received > 20 * MiB, outcome
    assert peak - before < PEAK_BOUND, MEASURED[-1]
    ordinary(gateway, kind)


def test_pass_through_keeps_a_line_without_end_flowing(gateways: dict[bool, Gateway]) -> None:
    """Nothing on a plain route reads the stream: 64 MiB without a line end reach the
    client as they came, never held (the peak stays far below what was sent)."""
    gateway = gateways[False]
    before = reset_peak(gateway)
    outcome = exchange(gateway, KINDS["plain"], "no-line-end")
    peak, _ = peak_and_now(gateway)
    assert outcome.clean and outcome.received >= 64 * MiB
    assert outcome.start.startswith(b"data: xxxx")
    assert peak - before < 16 * MiB


def test_a_compressed_stream_that_breaks_gets_nothing_of_the_gateways_in_it(
    gateways: dict[bool, Gateway],
) -> None:
    """A gzip event stream passed as it came, reset mid-stream: the gateway cannot put an
    error event into the upstream's gzip, so the client gets the upstream's bytes alone
    — they inflate to its events, nothing else — and a body cut off, never a clean end."""
    outcome = exchange(gateways[False], KINDS["plain"], "gzip-reset")
    assert outcome.status == 200 and not outcome.clean, outcome
    assert outcome.headers["content-encoding"] == "gzip"
    cut = outcome.end.rfind(b"\n[cut: ")
    raw = outcome.start if cut < 0 else outcome.end[:cut]
    inflated = zlib.decompressobj(31).decompress(raw)  # raises on bytes not of the gzip
    assert inflated.startswith(b"data: ") and b"fi" in inflated, inflated
    assert b"error" not in inflated, inflated


# -- what the official SDKs make of it ------------------------------------------------------


def test_the_sdks_raise_on_an_event_past_the_limit(gateways: dict[bool, Gateway]) -> None:
    gateway = gateways[False]
    claude = anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0, timeout=30)
    with (
        pytest.raises(anthropic.APIStatusError) as raised,
        claude.messages.stream(
            model="to-chat",
            max_tokens=50,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-hostile": "no-line-end"},
        ) as stream,
    ):
        for _ in stream.text_stream:
            pass
    assert "max_event_bytes" in str(raised.value)
    oai = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0, timeout=30)
    with pytest.raises(openai.APIError) as failed:
        for _ in oai.chat.completions.create(
            model="to-messages",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"x-hostile": "huge-event"},
        ):
            pass
    assert "max_event_bytes" in str(failed.value)


def test_the_sdks_get_a_502_for_an_answer_that_is_not_what_it_claims(
    gateways: dict[bool, Gateway],
) -> None:
    gateway = gateways[False]
    claude = anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0, timeout=30)
    with pytest.raises(anthropic.APIStatusError) as raised:
        claude.messages.create(
            model="to-chat",
            max_tokens=50,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-hostile": "html-200"},
        )
    assert raised.value.status_code == 502 and "Service Unavailable" in raised.value.message
    oai = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0, timeout=30)
    with pytest.raises(openai.APIStatusError) as failed:
        oai.chat.completions.create(
            model="to-messages",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"x-hostile": "text-plain"},
        )
    assert failed.value.status_code == 502 and "text/plain" in failed.value.message
    with pytest.raises(openai.APIStatusError) as bombed:
        oai.responses.create(model="to-chat", input="hi", extra_headers={"x-hostile": "gzip-json"})
    assert bombed.value.status_code == 502 and "inflate" in bombed.value.message
