"""The cache filter in the real chain (`FilterHarness`), several requests of one process
sharing its stores and flights (one `Resources`), on one clock: a paced hit, followers
and a leader whose clients fall behind, a leader that goes before its answer came, and
answers that are shared but not stored."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from twisted.internet.task import Clock

from filterproxy.config import Config
from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.cache.filter import CACHE_HEADER, CacheFilter
from filterproxy.extensions.cache.flight import Flights
from filterproxy.extensions.cache.metrics import CacheMetrics
from filterproxy.extensions.cache.store import MemoryStore
from filterproxy.filters.api import DataResult, FilterStatus, ResponseHead, StreamFilter
from filterproxy.filters.resources import Resources
from filterproxy.testing import ClientResponse, FilterHarness

CLUSTERS = 'clusters: {upstream: {url: "http://upstream.test"}}\n'
PACED = CLUSTERS + "routes: [{cluster: upstream, cache: {pace: true}}]\n"
#: The smallest bound a route may have: a few of `filler`'s pieces pass it.
MAX_BYTES = 1024
SMALL = CLUSTERS + f"routes: [{{cluster: upstream, cache: {{max_bytes: {MAX_BYTES}}}}}]\n"
AUTH = {"authorization": "Bearer sk-a"}
SSE = {"content-type": "text/event-stream"}
BODY = {
    "model": "m",
    "temperature": 0,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    """A chat stream's event: a delta of *content*, or the *finish* reason."""
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    doc = {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
ANSWER = [chunk("Hel"), chunk("lo"), chunk(finish="stop"), DONE]


def filler(n: int) -> bytes:
    """A delta of about 300 bytes (the *n*th: each is different)."""
    return chunk(f"{n:03d}" + "x" * 200)


@dataclass
class Process:
    """One gateway process: its config, clock and shared things (the cache's stores
    and flights are in `resources`)."""

    text: str
    clock: Clock = field(default_factory=Clock)
    config: Config = field(init=False)
    resources: Resources = field(init=False)

    def __post_init__(self) -> None:
        self.config = parse_config(self.text)
        self.resources = Resources(clock=self.clock)

    def request(self, *front: type) -> FilterHarness:
        """A request on the cached route, through its own chain: the filters *front*,
        then the cache filter."""
        h = FilterHarness(
            [*front, CacheFilter], config=self.config, clock=self.clock, resources=self.resources
        )
        h.stream_info.route = self.config.routes[0]
        h.request(json.dumps(BODY).encode(), headers=AUTH)
        return h

    @property
    def memory(self) -> MemoryStore:
        return self.resources.get(MemoryStore, MemoryStore.from_resources)

    @property
    def flights(self) -> Flights:
        return self.resources.get(Flights, Flights.from_resources)

    def unstored(self, reason: str) -> float:
        """How many answers of the route were not stored for *reason*."""
        metrics = CacheMetrics.of(self.resources)
        return metrics.unstored.series.get(("routes[0]", reason), 0)


class Seen(StreamFilter):
    """A filter before the cache's that reads the response (as usage or translate do)."""

    def __init__(self, config: object) -> None:
        super().__init__(config)
        self.heads: list[int] = []
        self.data: list[bytes] = []

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> FilterStatus:
        self.heads.append(head.status)
        head.headers.set("x-seen", str(head.status))
        return FilterStatus.CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        self.data.append(data)
        return FilterStatus.CONTINUE


def cache_status(client: ClientResponse) -> str | None:
    assert client.headers is not None
    return client.headers.get(CACHE_HEADER)


# -- a paced hit ---------------------------------------------------------------------------


def recorded(process: Process) -> None:
    """A first request's answer, its pieces at 0, 0.25, 0.75 and 1s after its head."""
    first = process.request()
    assert first.upstream.reached
    process.clock.advance(0.5)  # the upstream takes its time to answer: not counted
    first.respond(200, SSE, [ANSWER[0]], end=False)
    process.clock.advance(0.25)
    first.more([ANSWER[1]], end=False)
    process.clock.advance(0.5)
    first.more([ANSWER[2]], end=False)
    process.clock.advance(0.25)
    first.more([ANSWER[3]])
    assert first.done and first.client.body == b"".join(ANSWER)
    assert cache_status(first.client) == "miss"
    assert len(process.memory.entries) == 1


def test_a_paced_hit_sends_the_pieces_at_the_offsets_they_came_at() -> None:
    process = Process(PACED)
    recorded(process)
    process.clock.advance(30)
    hit = process.request()
    assert not hit.upstream.reached and cache_status(hit.client) == "hit"
    got = hit.client.pieces
    assert got == ANSWER[:1]
    process.clock.advance(0.125)
    assert got == ANSWER[:1]
    process.clock.advance(0.125)  # 0.25
    assert got == ANSWER[:2]
    process.clock.advance(0.25)  # 0.5
    assert got == ANSWER[:2] and not hit.client.ended
    process.clock.advance(0.25)  # 0.75
    assert got == ANSWER[:3]
    process.clock.advance(0.25)  # 1.0
    assert got == ANSWER and hit.client.ended and hit.done
    assert process.clock.getDelayedCalls() == []


def test_nothing_of_a_paced_hit_is_sent_once_its_client_left() -> None:
    process = Process(PACED)
    recorded(process)
    hit = process.request()
    process.clock.advance(0.25)
    assert hit.client.pieces == ANSWER[:2]
    assert process.clock.getDelayedCalls()  # the next piece's timer
    hit.hang_up()
    assert hit.done and hit.stream_info.outcome == "client_gone"
    assert process.clock.getDelayedCalls() == []
    process.clock.advance(5)
    assert hit.client.pieces == ANSWER[:2] and not hit.client.ended


# -- followers and leaders whose clients fall behind ---------------------------------------


def test_a_paused_followers_pieces_wait_and_come_in_order_when_it_resumes() -> None:
    process = Process(SMALL)
    leader, slow, other = process.request(), process.request(), process.request()
    assert leader.upstream.reached
    assert not slow.upstream.reached and not other.upstream.reached
    leader.respond(200, SSE, [], end=False)
    assert slow.client.status == 200 and cache_status(slow.client) == "coalesced"
    assert slow.client.producer is not None  # the chain tells the filter of its client
    slow.client_slow()
    leader.more([ANSWER[0], ANSWER[1]], end=False)
    assert slow.client.pieces == [] and not slow.done
    assert other.client.body == b"".join(ANSWER[:2])
    assert leader.client.body == b"".join(ANSWER[:2])
    slow.client_ready()
    assert slow.client.body == b"".join(ANSWER[:2])
    leader.more([ANSWER[2]], end=False)
    assert slow.client.body == b"".join(ANSWER[:3])  # live again
    leader.more([ANSWER[3]])
    for h in (leader, slow, other):
        assert h.client.body == b"".join(ANSWER) and h.client.ended and h.done
    assert cache_status(other.client) == "coalesced"
    assert process.flights.flights == {}


def test_a_paused_follower_gets_what_was_held_with_the_end() -> None:
    process = Process(SMALL)
    leader, slow = process.request(), process.request()
    leader.respond(200, SSE, [ANSWER[0]], end=False)
    slow.client_slow()
    leader.more(ANSWER[1:3], end=False)
    assert slow.client.body == ANSWER[0]
    leader.more(ANSWER[3:])
    assert slow.client.body == b"".join(ANSWER) and slow.client.ended and slow.done


def test_a_follower_too_far_behind_fails_while_the_others_go_on() -> None:
    process = Process(SMALL)
    leader, slow, other = process.request(), process.request(), process.request()
    leader.respond(200, SSE, [filler(0)], end=False)
    assert slow.client.body == filler(0)
    slow.client_slow()
    sent = [filler(0)]
    n = 1
    while sum(len(p) for p in sent[1:]) + len(filler(n)) <= MAX_BYTES:
        sent.append(filler(n))
        leader.more([filler(n)], end=False)
        n += 1
    # Held up to the bound: still waiting, nothing more sent.
    assert not slow.done and slow.client.body == filler(0)
    sent.append(filler(n))
    leader.more([filler(n)], end=False)  # one piece more: past it
    assert slow.done and slow.client.aborted and not slow.client.ended
    events = slow.client.events()
    assert events[-1].event == "error"
    assert "cache.max_bytes" in json.loads(events[-1].data or "")["error"]["message"]
    assert slow.stream_info.outcome == "upstream_error"
    # The leader's client and the other follower get the whole answer, and end cleanly.
    rest = [chunk(finish="stop"), DONE]
    leader.more(rest)
    whole = b"".join(sent + rest)
    for h in (leader, other):
        assert h.client.body == whole and h.client.ended and not h.client.aborted and h.done
    assert slow.client.body.startswith(filler(0))
    assert filler(n).rstrip() not in slow.client.body  # what was held was dropped


def test_the_leaders_slow_client_does_not_hold_up_its_followers() -> None:
    process = Process(SMALL)
    leader, follower = process.request(), process.request()
    leader.respond(200, SSE, [], end=False)
    leader.client_slow()
    sent: list[bytes] = []
    n = 0
    while sum(len(p) for p in sent) + len(filler(n)) <= MAX_BYTES:
        sent.append(filler(n))
        leader.more([filler(n)], end=False)
        n += 1
        assert follower.client.body == b"".join(sent)  # each piece as it comes
    assert leader.client.body == b"" and leader.client.status == 200
    assert leader.producer.calls == []  # held for the leader, the upstream read on
    sent.append(filler(n))
    leader.more([filler(n)], end=False)  # past max_bytes held
    assert follower.client.body == b"".join(sent)
    assert leader.producer.calls == ["pause"] and leader.client.body == b""
    leader.client_ready()
    assert leader.client.body == b"".join(sent)
    assert leader.producer.calls == ["pause", "resume"]
    rest = [chunk(finish="stop"), DONE]
    leader.more(rest)
    for h in (leader, follower):
        assert h.client.body == b"".join(sent + rest) and h.client.ended and h.done


def test_shared_answers_pass_the_filters_before_the_cache_as_the_upstreams_would() -> None:
    process = Process(PACED)
    leader, follower = process.request(Seen), process.request(Seen)
    leader.respond(200, SSE, [ANSWER[0]], end=False)
    process.clock.advance(0.25)
    leader.more(ANSWER[1:])
    hit = process.request(Seen)
    process.clock.advance(0.25)
    for h in (leader, follower, hit):
        seen = h.filters[0]
        assert isinstance(seen, Seen)
        assert seen.heads == [200] and b"".join(seen.data) == b"".join(ANSWER)
        assert h.client.headers is not None and h.client.headers.get("x-seen") == "200"
        assert h.client.body == b"".join(ANSWER) and h.client.ended
    assert [cache_status(h.client) for h in (leader, follower, hit)] == ["miss", "coalesced", "hit"]


# -- a leader that goes before its answer came ---------------------------------------------


def test_the_first_follower_leads_when_the_leader_leaves_before_the_head() -> None:
    process = Process(SMALL)
    leader, first, second = process.request(), process.request(), process.request()
    assert not first.upstream.reached and not second.upstream.reached
    leader.hang_up()
    assert leader.done and leader.upstream.cancelled
    assert first.upstream.reached and first.upstream.ended
    assert first.upstream.json() == BODY
    assert not second.upstream.reached and not second.done
    first.respond(200, SSE, ANSWER)
    assert cache_status(first.client) == "miss" and first.client.body == b"".join(ANSWER)
    assert second.client.status == 200 and cache_status(second.client) == "coalesced"
    assert second.client.body == b"".join(ANSWER) and second.client.ended
    assert not second.upstream.reached
    later = process.request()  # the new leader's answer was stored
    assert not later.upstream.reached and cache_status(later.client) == "hit"
    assert later.client.body == b"".join(ANSWER)


# -- answers shared but not stored ---------------------------------------------------------


def test_an_error_answer_reaches_followers_with_its_status_and_is_not_stored() -> None:
    process = Process(SMALL)
    leader, follower = process.request(), process.request()
    error = {"error": {"message": "slow down", "type": "rate_limit_error", "code": None}}
    body = json.dumps(error).encode()
    leader.respond(429, {"content-type": "application/json", "retry-after": "7"}, [body])
    assert leader.client.status == 429 and leader.client.json() == error
    assert follower.client.status == 429 and cache_status(follower.client) == "coalesced"
    assert follower.client.headers.get("retry-after") == "7"
    assert follower.client.json() == error and follower.client.ended and follower.done
    assert process.memory.entries == {} and process.unstored("status") == 1
    later = process.request()
    assert later.upstream.reached
    later.respond(200, SSE, ANSWER)
    assert cache_status(later.client) == "miss"


@pytest.mark.parametrize(
    ("pieces", "stored"),
    [
        pytest.param(ANSWER[:2], False, id="no-finish-no-done"),
        pytest.param(ANSWER[:3], False, id="no-done"),
        pytest.param([*ANSWER[:2], DONE], False, id="no-finish"),
        pytest.param(ANSWER, True, id="complete"),
    ],
)
def test_a_stream_without_its_final_events_is_not_stored(pieces: list[bytes], stored: bool) -> None:
    process = Process(SMALL)
    first = process.request()
    first.respond(200, SSE, pieces)
    assert first.client.body == b"".join(pieces) and first.client.ended
    assert len(process.memory.entries) == int(stored)
    assert process.unstored("incomplete") == int(not stored)
    later = process.request()
    assert later.upstream.reached is not stored
    if not stored:
        later.respond(200, SSE, ANSWER)
    assert cache_status(later.client) == ("hit" if stored else "miss")
    assert later.client.body == b"".join(ANSWER if not stored else pieces)
