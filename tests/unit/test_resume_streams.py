"""A resumable stream and its registry on a clock (no sockets, no sleeping): the grace
period, how long an ended stream is kept, a new reader taking over, the budget — and
the one read decision, row by row."""

from __future__ import annotations

import hashlib

import pytest
from twisted.internet.task import Clock

from filterproxy.extensions.resume.config import ResumeConfig
from filterproxy.extensions.resume.streams import (
    NO_LONGER,
    ReadDecision,
    ReadOutcome,
    ResumableStream,
    StreamRegistry,
    affinity_key,
    decide_read,
)
from filterproxy.filters.resources import Resources

BODY = hashlib.sha256(b'{"stream": true}').digest()


class RecordingOrigin:
    """The origin request, as the stream sees it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def abandon(self) -> None:
        self.calls.append("abandon")

    def expire(self) -> None:
        self.calls.append("expire")

    def taken_over(self) -> None:
        self.calls.append("taken_over")


class RecordingReader:
    def __init__(self) -> None:
        self.pushed: list[bytes] = []
        self.finished: bool | None = None
        self.taken = False

    def push(self, data: bytes) -> None:
        self.pushed.append(data)

    def finish(self, complete: bool) -> None:
        self.finished = complete

    def taken_over(self) -> None:
        self.taken = True


def event(n: int, stream: ResumableStream) -> bytes:
    return b'data: {"n": %d}\nid: %s.%d\n\n' % (n, stream.id.encode(), n)


def make_stream(
    registry: StreamRegistry,
    *,
    grace: float = 1.5,
    keep: float = 60.0,
    buffer: int = 1 << 20,
    owner: str = "alice",
) -> tuple[ResumableStream, RecordingOrigin]:
    config = ResumeConfig(grace=grace, keep=keep, buffer=buffer)
    stream = ResumableStream(
        registry, registry.new_id(), owner, BODY, config, "routes[0]", "text/event-stream"
    )
    origin = RecordingOrigin()
    stream.origin = origin
    registry.add(stream)
    return stream, origin


def numbered(stream: ResumableStream, count: int) -> list[bytes]:
    framer = stream.framer
    framer.feed(b"".join(b'data: {"n": %d}\n\n' % n for n in range(1, count + 1)))
    return framer.take()


# -- the stream on a clock ------------------------------------------------------------------


def test_the_grace_period_stops_the_upstream_and_forgets_the_stream() -> None:
    clock = Clock()
    registry = StreamRegistry(clock)
    stream, origin = make_stream(registry, grace=1.5)
    stream.keep(numbered(stream, 3))
    assert registry.budget.held > 0
    stream.client_gone()
    clock.advance(1.4)
    assert origin.calls == [] and registry.get(stream.id) is stream  # still resumable
    clock.advance(0.2)
    assert origin.calls == ["expire"]
    assert registry.get(stream.id) is None and registry.budget.held == 0
    assert clock.getDelayedCalls() == []


def test_a_reader_within_the_grace_period_keeps_the_stream_until_it_leaves() -> None:
    clock = Clock()
    registry = StreamRegistry(clock)
    stream, origin = make_stream(registry, grace=1.5)
    stream.client_gone()
    clock.advance(1.0)
    reader = RecordingReader()
    stream.attach(reader)
    assert clock.getDelayedCalls() == []  # the grace period is over: someone is reading
    clock.advance(10)
    assert origin.calls == [] and registry.get(stream.id) is stream
    stream.detach(reader)  # and the reader goes too: a new grace period
    clock.advance(1.49)
    assert origin.calls == []
    clock.advance(0.02)
    assert origin.calls == ["expire"] and registry.get(stream.id) is None


def test_an_ended_stream_is_kept_for_keep_then_evicted() -> None:
    clock = Clock()
    registry = StreamRegistry(clock)
    stream, origin = make_stream(registry, keep=30)
    stream.keep(numbered(stream, 2))
    reader = RecordingReader()
    stream.attach(reader)
    stream.ended(complete=True)
    assert reader.finished is True and stream.done and stream.origin is None
    clock.advance(29.9)
    assert registry.get(stream.id) is stream
    clock.advance(0.2)
    assert registry.get(stream.id) is None and registry.budget.held == 0
    assert origin.calls == ["taken_over"]  # (the reader took over from its client)


def test_a_new_reader_takes_over_from_the_one_before_and_from_the_origins_client() -> None:
    registry = StreamRegistry(Clock())
    stream, origin = make_stream(registry)
    first, second = RecordingReader(), RecordingReader()
    stream.attach(first)
    assert origin.calls == ["taken_over"] and not stream.origin_attached
    stream.attach(second)
    assert first.taken and not second.taken and stream.reader is second
    assert origin.calls == ["taken_over"]  # the origin's client was closed once
    stream.detach(first)  # the old reader's end changes nothing
    assert stream.reader is second


def test_a_stream_past_the_budget_is_no_longer_resumable() -> None:
    clock = Clock()
    registry = StreamRegistry(clock)
    registry.budget.cap = 100
    stream, origin = make_stream(registry)
    reader = RecordingReader()
    stream.attach(reader)
    stream.keep(numbered(stream, 1))
    assert stream.resumable and registry.budget.held > 0
    stream.keep(numbered(stream, 5))
    assert not stream.resumable and registry.budget.held == 0
    assert reader.pushed == [NO_LONGER]
    # Nobody can ever read the rest: when its reader goes, the upstream stops at once.
    stream.detach(reader)
    assert origin.calls == ["taken_over", "abandon"] and clock.getDelayedCalls() == []


def test_a_stream_past_its_own_buffer_is_no_longer_resumable() -> None:
    registry = StreamRegistry(Clock())
    stream, _ = make_stream(registry, buffer=40)
    stream.keep(numbered(stream, 4))
    assert not stream.resumable and registry.budget.held == 0


def test_cancel_closes_the_reader_stops_the_upstream_and_forgets_the_stream() -> None:
    registry = StreamRegistry(Clock())
    stream, origin = make_stream(registry)
    reader = RecordingReader()
    stream.attach(reader)
    stream.cancel()
    assert reader.taken and origin.calls == ["taken_over", "abandon"]
    assert registry.get(stream.id) is None


def test_closing_the_registry_leaves_no_timer() -> None:
    clock = Clock()
    registry = StreamRegistry(clock)
    for _ in range(3):
        stream, _ = make_stream(registry)
        stream.keep(numbered(stream, 2))
        stream.client_gone()
    assert len(clock.getDelayedCalls()) == 3
    registry.close()
    assert clock.getDelayedCalls() == [] and registry.streams == {}
    assert registry.budget.held == 0


def test_the_registry_of_a_process_takes_its_clock_from_the_resources() -> None:
    clock = Clock()
    resources = Resources(clock, clock)
    registry = resources.get(StreamRegistry, StreamRegistry.from_resources)
    assert resources.get(StreamRegistry, StreamRegistry.from_resources) is registry
    stream, origin = make_stream(registry, grace=2)
    stream.client_gone()
    clock.advance(2)
    assert origin.calls == ["expire"]
    stream, _ = make_stream(registry)
    stream.client_gone()
    resources.close()  # at stop: nothing is left to fire
    assert clock.getDelayedCalls() == []


# -- stream ids ---------------------------------------------------------------------------

UUID = "4f1c2a9e-53b0-4b6e-9d1d-0c2f8e7a6b51"


def test_an_id_ends_with_the_balancers_key_only_when_given_one() -> None:
    registry = StreamRegistry(Clock())
    plain = registry.new_id()
    assert plain.startswith("fps_") and "-" not in plain and len(plain) == 28
    keyed = registry.new_id(UUID)
    assert keyed.startswith("fps_") and keyed.endswith("-" + UUID)
    # The key is whatever follows the first dash: the id's own part has none.
    assert keyed.partition("-")[2] == UUID and len(keyed.partition("-")[0]) == 28
    assert registry.new_id(UUID) != keyed  # the nonce still makes each id


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (UUID, UUID),
        ("a", "a"),
        ("x" * 64, "x" * 64),
        ("0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
        (None, None),
        ("", None),
        ("x" * 65, None),  # too long for an id
        ("a b", None),
        ("a_b", None),  # the id's own separator
        ("a.b", None),  # the separator of an event's number in Last-Event-ID
        ("a/b", None),
        ("a\nid: forged", None),
        ("caf\u00e9", None),
        (" a", None),
    ],
)
def test_only_a_key_of_letters_digits_and_dashes_may_end_an_id(
    value: str | None, key: str | None
) -> None:
    assert affinity_key(value) == key


def test_a_worker_finds_the_holder_of_an_id_that_ends_with_a_key() -> None:
    holder, other = StreamRegistry(Clock()), StreamRegistry(Clock())
    holder.serve_relay(1001, b"secret")
    other.serve_relay(1002, b"secret")
    keyed = holder.new_id(UUID)
    place, _, key = keyed.partition("-")
    assert key == UUID and place.startswith("fps_3e9_")  # 1001, in hex
    assert other.elsewhere(keyed) == 1001 and other.elsewhere(place) == 1001
    assert holder.elsewhere(keyed) is None  # its own
    # The key is not signed (it is routing, not a secret), the rest still is.
    assert other.elsewhere(place + "-another-key") == 1001
    forged = place.rsplit("_", 1)[0] + "_0000000000000000-" + UUID
    assert other.elsewhere(forged) is None
    assert StreamRegistry(Clock()).elsewhere(keyed) is None  # no workers


# -- the read decision --------------------------------------------------------------------


def decide(
    stream: ResumableStream | None,
    method: str = "GET",
    owner: str = "alice",
    after: int = 0,
    counted: bool = False,
    body_hash: bytes | None = None,
) -> ReadDecision:
    return decide_read(
        stream, method=method, owner=owner, after=after, counted=counted, body_hash=body_hash
    )


@pytest.fixture
def stream() -> ResumableStream:
    stream, _ = make_stream(StreamRegistry(Clock()))
    stream.keep(numbered(stream, 3))
    return stream


def test_another_owners_stream_is_not_there(stream: ResumableStream) -> None:
    assert decide(stream, owner="mallory").outcome is ReadOutcome.GONE
    assert decide(stream, "DELETE", owner="mallory").outcome is ReadOutcome.NOT_FOUND
    assert decide(stream, owner="mallory", body_hash=b"x").outcome is ReadOutcome.GONE


def test_delete_cancels_ones_own_stream_or_is_not_found(stream: ResumableStream) -> None:
    assert decide(stream, "DELETE").outcome is ReadOutcome.CANCEL
    assert decide(None, "DELETE").outcome is ReadOutcome.NOT_FOUND
    assert stream.origin is not None  # deciding changes nothing


def test_nothing_held_is_gone(stream: ResumableStream) -> None:
    assert decide(None).outcome is ReadOutcome.GONE
    assert decide(stream, after=4).outcome is ReadOutcome.GONE  # never handed out
    stream.give_up()
    assert decide(stream, after=1).outcome is ReadOutcome.GONE  # dropped


def test_a_body_that_did_not_start_the_stream_is_a_mismatch(stream: ResumableStream) -> None:
    assert decide(stream, body_hash=b"other").outcome is ReadOutcome.MISMATCH
    assert decide(stream, body_hash=BODY).outcome is ReadOutcome.REPLAY


def test_an_ended_stream_with_nothing_new_has_ended(stream: ResumableStream) -> None:
    stream.ended(complete=True)
    assert decide(stream, after=3).outcome is ReadOutcome.ENDED
    decision = decide(stream, after=1)
    assert decision.outcome is ReadOutcome.REPLAY and len(decision.events) == 2


def test_otherwise_the_events_after_the_readers_are_replayed(stream: ResumableStream) -> None:
    decision = decide(stream, after=1)
    assert decision == ReadDecision(
        ReadOutcome.REPLAY, 1, False, (event(2, stream), event(3, stream))
    )
    assert decide(stream, after=3) == ReadDecision(ReadOutcome.REPLAY, 3, False, ())
    assert stream.caught_up(decision) == [event(2, stream), event(3, stream)]


def test_a_count_of_chunks_is_taken_to_the_event_it_ended_with() -> None:
    stream, _ = make_stream(StreamRegistry(Clock()))
    deltas = [
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"%d"}}]}\n\n' % n
        for n in range(1, 6)
    ]
    stream.framer.feed(b"".join(deltas))
    events = stream.framer.take()
    stream.keep(events)
    # The delivery filter sent the origin's client events 1-3 as one chunk.
    stream.folded(f"{stream.id}.3", 3)
    decision = decide(stream, after=1, counted=True)  # one chunk: event 3
    assert decision.outcome is ReadOutcome.REPLAY and decision.events == tuple(events[3:])
    assert decide(stream, after=1).events == tuple(events[1:])  # an id is an id
    # Catching up starts a new run of chunks after the first.
    assert len(stream.caught_up(decision)) == 1
    assert decide(stream, after=2, counted=True).events == ()
