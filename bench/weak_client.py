"""The weak-link benchmark's client: one row's streams, read through the relay.

    ip netns exec fp-weak python -m bench.weak_client '<the row as JSON: see ClientPlan>'

Runs in the link's namespace (bench/weak_link.py), with the relay (bench/weak_relay.py)
in the same event loop: the client connects to the relay on loopback, the relay to the
gateway over the shaped link. It streams every name in the plan, ``parallel`` at a
time, with httpx (which decodes gzip, and br and zstd when brotli and zstandard are
installed, and says so in its Accept-Encoding), parses the event stream and keeps the
text of every content delta. When a connection dies it either resumes (``resume``:
the same POST again with ``Last-Event-ID``, the last event id it saw) or starts over
(the text so far is thrown away), within ``attempts`` requests and ``deadline_s``.
It prints one JSON object: each stream's `StreamResult` and the relay's counts.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from bench.weak_link import Profile
from bench.weak_relay import Relay

#: A gap between two reads at least this long is a stall the user saw.
STALL_GAP_S = 1.0
#: How long a client waits before it reconnects after its connection died.
RECONNECT_AFTER_S = 0.3


@dataclass(frozen=True)
class ClientPlan:
    """One row, as the orchestrator hands it over."""

    profile: Profile
    target: tuple[str, int]
    names: list[str]
    model: str
    headers: dict[str, str]
    parallel: int
    resume: bool
    attempts: int
    deadline_s: float
    seed: int

    @classmethod
    def from_json(cls, text: str) -> ClientPlan:
        raw = json.loads(text)
        return cls(
            **{
                **raw,
                "profile": Profile(**raw["profile"]),
                "target": (raw["target"][0], int(raw["target"][1])),
            }
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass
class StreamResult:
    """What the client saw of one stream (times in seconds from its first request)."""

    name: str
    first_token_s: float | None = None
    last_token_s: float | None = None
    text: str = ""
    done: bool = False
    usage: bool = False
    requests: int = 0
    reconnects: int = 0
    stalls: int = 0
    longest_gap_s: float = 0.0
    events: int = 0
    decoded_bytes: int = 0
    content_encoding: str | None = None
    error: str | None = None
    statuses: list[int] = field(default_factory=list)


class EventReader:
    """Events out of decoded event-stream bytes: (id or None, data)."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, data: bytes) -> list[tuple[str | None, str]]:
        self.pending += data.replace(b"\r\n", b"\n")
        *blocks, self.pending = self.pending.split(b"\n\n")
        events = []
        for block in blocks:
            event_id: str | None = None
            lines = []
            for line in block.decode().split("\n"):
                if line.startswith("data:"):
                    lines.append(line[5:].removeprefix(" "))
                elif line.startswith("id:"):
                    event_id = line[3:].strip()
            if lines or event_id is not None:
                events.append((event_id, "\n".join(lines)))
        return events


class StreamClient:
    """One stream of the plan, over as many requests as it takes."""

    def __init__(self, plan: ClientPlan, client: httpx.AsyncClient, name: str) -> None:
        self.plan = plan
        self.client = client
        self.result = StreamResult(name)
        self.body = {
            "model": plan.model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": name}],
        }
        self.loop = asyncio.get_running_loop()
        self.started = 0.0
        self.last_read: float | None = None
        self.stream_id: str | None = None
        self.last_event_id: str | None = None
        self.pieces: list[str] = []

    async def run(self) -> StreamResult:
        result = self.result
        self.started = self.loop.time()
        deadline = self.started + self.plan.deadline_s
        while result.requests < self.plan.attempts and self.loop.time() < deadline:
            result.requests += 1
            try:
                await asyncio.wait_for(self.request(), deadline - self.loop.time())
            except (httpx.TransportError, httpx.DecodingError, TimeoutError) as exc:
                result.error = f"{type(exc).__name__}: {exc}"[:200]
            if result.done or (result.error or "").startswith("HTTP"):
                break
            await asyncio.sleep(RECONNECT_AFTER_S)
        result.reconnects = result.requests - 1
        result.text = "".join(self.pieces)
        if result.done:
            result.error = None
        return result

    def request_headers(self) -> dict[str, str]:
        """The request's headers; a resuming client names the last event it saw (the
        stream's ``.0`` when it saw the answer begin but no event). One that lost its
        connection before the answer began cannot know the stream: it asks again, and
        the upstream gets a second request (counted)."""
        headers = {"authorization": "Bearer sk-client", **self.plan.headers}
        if self.plan.resume:
            if self.last_event_id is not None:
                headers["last-event-id"] = self.last_event_id
            elif self.stream_id is not None:
                headers["last-event-id"] = f"{self.stream_id}.0"
        return headers

    async def request(self) -> None:
        result = self.result
        if not self.plan.resume:
            self.pieces = []  # starting over: what came before is thrown away
            result.usage = False
        async with self.client.stream(
            "POST", "/v1/chat/completions", json=self.body, headers=self.request_headers()
        ) as response:
            result.statuses.append(response.status_code)
            if response.status_code == 204:  # a finished stream with nothing missed
                result.done = True
                return
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return
            self.stream_id = response.headers.get("x-stream-id") or self.stream_id
            result.content_encoding = response.headers.get("content-encoding")
            reader = EventReader()
            async for piece in response.aiter_bytes():
                if not piece:
                    continue
                now = self.loop.time()
                if self.last_read is not None:
                    gap = now - self.last_read
                    if gap >= STALL_GAP_S:
                        result.stalls += 1
                    result.longest_gap_s = max(result.longest_gap_s, gap)
                self.last_read = now
                result.decoded_bytes += len(piece)
                for event_id, data in reader.feed(piece):
                    self.event(event_id, data, now)
            if not result.done:
                raise httpx.RemoteProtocolError("the stream ended before [DONE]")

    def event(self, event_id: str | None, data: str, now: float) -> None:
        result = self.result
        result.events += 1
        if event_id is not None:
            self.last_event_id = event_id
        if data == "[DONE]":
            result.done = True
            return
        if not data:
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            result.error = f"not JSON: {data[:100]!r}"
            return
        if chunk.get("usage"):
            result.usage = True
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                if result.first_token_s is None:
                    result.first_token_s = now - self.started
                result.last_token_s = now - self.started
                self.pieces.append(content)


async def run(plan: ClientPlan) -> dict[str, Any]:
    relay = Relay(plan.profile, plan.target, plan.seed)
    port = await relay.start()
    lanes = asyncio.Semaphore(plan.parallel)
    timeout = httpx.Timeout(30.0, connect=10.0)
    limits = httpx.Limits(max_connections=plan.parallel, max_keepalive_connections=plan.parallel)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=timeout, limits=limits
        ) as client:

            async def lane(name: str) -> StreamResult:
                async with lanes:
                    return await StreamClient(plan, client, name).run()

            results = await asyncio.gather(*(lane(name) for name in plan.names))
    finally:
        relay.stop()
    return {"streams": [asdict(r) for r in results], "relay": asdict(relay.stats)}


def main() -> None:
    plan = ClientPlan.from_json(sys.argv[1])
    print(json.dumps(asyncio.run(run(plan))), flush=True)


if __name__ == "__main__":
    main()
