"""The cache's entries, their stored form, the memory store and the merging of
identical requests in flight (no sockets)."""

from __future__ import annotations

from dataclasses import replace

from filterproxy.extensions.cache.flight import Flights
from filterproxy.extensions.cache.store import (
    MAX_MARKS,
    Entry,
    MemoryStore,
    marks_of,
    redis_key,
    valid_prefix,
)


def entry(key: str = "ab12", size: int = 1000, model: str = "m", expires: float = 100.0) -> Entry:
    return Entry(
        key=key,
        api="chat",
        streamed=True,
        usage=True,
        content_type="text/event-stream",
        body=b"x" * size,
        model=model,
        route="r",
        stored_at=0.0,
        expires_at=expires,
        marks=((10, 0), (size, 5)),
    )


def test_an_entry_reads_back_as_it_was_stored() -> None:
    stored = replace(entry(), body=b"data: {}\n\ndata: [DONE]\n\n\xff\n")
    assert Entry.decode(stored.encode(), 1 << 20) == stored


def test_garbage_and_oversized_data_are_not_entries() -> None:
    assert Entry.decode(b"not an entry", 1 << 20) is None
    assert Entry.decode(b'{"key": 1}\nbody', 1 << 20) is None
    assert Entry.decode(entry(size=200_000).encode(), 1024) is None


def test_memory_store_expires_and_puts_the_least_recently_used_out() -> None:
    store = MemoryStore(cap=3 * entry().size)
    for key in ("a1", "b2", "c3"):
        assert store.put(entry(key))
    assert store.get("a1", now=1.0) is not None  # a1 is now the most recently used
    assert store.put(entry("d4"))
    assert store.get("b2", now=1.0) is None  # the least recently used went
    assert {k for k in store.entries} == {"a1", "c3", "d4"}
    assert store.held <= store.cap and store.evicted == 1
    assert store.get("a1", now=100.0) is None  # expired
    assert "a1" not in store.entries
    assert not store.put(entry("huge", size=10 * store.cap))


def test_invalidation_by_prefix_model_or_all() -> None:
    store = MemoryStore()
    store.put(entry("aa01", model="gpt"))
    store.put(entry("aa02", model="claude"))
    store.put(entry("bb03", model="gpt"))
    assert store.invalidate(prefix="aa", model="gpt") == 1
    assert store.invalidate(model="gpt") == 1
    assert store.invalidate() == 1
    assert store.held == 0 and not store.entries


def test_redis_keys_and_prefixes() -> None:
    assert redis_key("abc", "gpt").startswith("fp:cache:")
    assert redis_key("abc", "gpt") != redis_key("abc", "claude")
    assert redis_key("abc", "gpt").endswith(":abc")
    assert valid_prefix("09af") and not valid_prefix("*") and not valid_prefix("")


def test_pacing_marks_are_bounded() -> None:
    for count in (3 * MAX_MARKS, 3 * MAX_MARKS + 1):
        marks = [(i, i) for i in range(count)]
        kept = marks_of(marks)
        assert len(kept) <= MAX_MARKS
        assert list(kept) == sorted(kept)
        assert kept[-1] == marks[-1]


class Follower:
    def __init__(self) -> None:
        self.got: list[object] = []

    def started(self, status: int, content_type: str, shared: tuple[tuple[str, str], ...]) -> None:
        self.got.append(("head", status, *shared))

    def push(self, data: bytes) -> None:
        self.got.append(data)

    def ended(self) -> None:
        self.got.append("end")

    def failed(self, status: int, message: str) -> None:
        self.got.append(("failed", status))

    def lead(self) -> None:
        self.got.append("lead")


def test_followers_get_the_answer_late_joiners_from_the_start() -> None:
    flights = Flights()
    flight = flights.start("k", max_bytes=100)
    early = Follower()
    assert flight.join(early)
    flight.head(200, "text/event-stream")
    flight.data(b"one")
    late = Follower()
    assert flight.join(late)
    flight.data(b"two")
    flight.end()
    assert early.got == [("head", 200), b"one", b"two", "end"]
    assert late.got == [("head", 200), b"one", b"two", "end"]
    assert flights.find("k") is None
    assert not flight.join(Follower())


def test_past_the_bound_nobody_new_joins_and_those_there_go_on() -> None:
    flights = Flights()
    flight = flights.start("k", max_bytes=4)
    there = Follower()
    flight.join(there)
    flight.head(200, "text/event-stream")
    flight.data(b"12345")
    assert not flight.join(Follower())
    assert flights.find("k") is None
    flight.data(b"6")
    flight.end()
    assert there.got == [("head", 200), b"12345", b"6", "end"]


def test_a_failure_reaches_every_follower() -> None:
    flight = Flights().start("k", max_bytes=100)
    followers = [Follower() for _ in range(3)]
    for f in followers:
        flight.join(f)
    flight.head(200, "text/event-stream")
    flight.data(b"partial")
    flight.fail(502, "broke")
    for f in followers:
        assert f.got == [("head", 200), b"partial", ("failed", 502)]


def test_what_an_answers_head_shares_reaches_early_and_late_followers() -> None:
    flight = Flights().start("k", max_bytes=100)
    early, late = Follower(), Follower()
    flight.join(early)
    flight.head(429, "application/json", (("retry-after", "7"),))
    flight.join(late)
    assert early.got == late.got == [("head", 429, ("retry-after", "7"))]


def test_a_leader_gone_before_the_answer_hands_over_after_it_fails_them() -> None:
    flights = Flights()
    flight = flights.start("k", max_bytes=100)
    first, second = Follower(), Follower()
    flight.join(first)
    flight.join(second)
    flight.leader_gone()
    assert first.got == ["lead"] and second.got == []
    flight.head(200, "application/json")
    flight.leader_gone()
    assert second.got == [("head", 200), ("failed", 502)]


def test_the_last_follower_leaving_a_detached_leader_stops_it() -> None:
    flight = Flights().start("k", max_bytes=100)
    stopped: list[bool] = []
    follower = Follower()
    flight.join(follower)
    flight.lonely = lambda: stopped.append(True)
    flight.leave(follower)
    assert stopped == [True]
