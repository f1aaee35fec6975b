"""The filter engine through `filterproxy.testing.FilterHarness`: hooks that return a
Deferred, the stream-owner calls (`IStreamOwner`), the filters' clock, typed filter
state, and the explicit states of a request and of each direction of the chain."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import defer
from twisted.logger import LogEvent, globalLogPublisher

from filterproxy.chain.iteration import IterationState
from filterproxy.chain.manager import RequestState
from filterproxy.filters.api import (
    ContinueInsideHook,
    DataResult,
    FilterStatus,
    HeadersResult,
    IFilterCallbacks,
    RequestHead,
    ResponseHead,
    StreamFilter,
)
from filterproxy.filters.state import FilterState
from filterproxy.filters.stream_owner import IStreamOwner
from filterproxy.testing import FilterHarness

CONTINUE = FilterStatus.CONTINUE
STOP = FilterStatus.STOP_ITERATION
SSE = {"content-type": "text/event-stream"}


class Seen(StreamFilter):
    """Records what reaches it, passes everything on."""

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.seen: list[str] = []

    def decode_headers(self, head: RequestHead, end_stream: bool) -> HeadersResult:
        self.seen.append("headers")
        return CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        self.seen.append(f"data {data.decode()}{' end' if end_stream else ''}")
        return CONTINUE


class AwaitHeaders(StreamFilter):
    """Its request headers hook returns the Deferred a test controls."""

    def __init__(self, d: defer.Deferred[Any]) -> None:
        super().__init__(None)
        self.d = d
        self.data: list[bytes] = []

    def decode_headers(self, head: RequestHead, end_stream: bool) -> HeadersResult:
        return self.d

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        self.data.append(data)
        return CONTINUE


# -- hooks that return a Deferred ----------------------------------------------------------


def test_a_headers_hook_deferred_holds_the_request_until_it_fires() -> None:
    d: defer.Deferred[FilterStatus] = defer.Deferred()
    after = Seen()
    h = FilterHarness([AwaitHeaders(d), after])
    h.request([b"one ", b"two"])
    assert not h.upstream.reached and after.seen == []
    assert h.filter.data == []  # type: ignore[attr-defined]  # the body waits too
    assert h.manager.decoder.awaiting_at == 0
    d.callback(CONTINUE)
    assert after.seen == ["headers", "data one ", "data two end"]
    assert h.filter.data == [b"one ", b"two"]  # type: ignore[attr-defined]
    assert h.upstream.reached and h.upstream.body == b"one two" and h.upstream.ended
    assert h.manager.decoder.awaiting_at == -1


def test_what_waits_behind_a_pending_deferred_is_bounded_by_the_buffer_limit() -> None:
    # A hook waiting for a store (Redis, say) must not let a client pile up a body of
    # any size in front of it: past the chain's limit the request gets its 413.
    d: defer.Deferred[FilterStatus] = defer.Deferred()
    h = FilterHarness([AwaitHeaders(d), Seen()], buffer_limit=10)
    h.request([b"123456", b"789012", b"345"])
    assert h.client.status == 413
    assert h.client.json()["error"]["code"] == "request_too_large"
    assert not h.upstream.reached
    d.callback(CONTINUE)  # the answer comes after the reply: it changes nothing
    assert not h.upstream.reached and h.client.status == 413


def test_what_waited_behind_a_deferred_is_no_longer_counted_once_it_passes() -> None:
    d: defer.Deferred[FilterStatus] = defer.Deferred()
    h = FilterHarness([AwaitHeaders(d), Seen()], buffer_limit=10)
    h.request([b"123456", b"7890"])  # 10 bytes: at the limit, not past it
    d.callback(CONTINUE)
    assert h.upstream.body == b"1234567890" and h.upstream.ended
    assert h.manager.decoder.buffered_bytes == 0


def test_a_deferred_that_has_already_fired_goes_on_at_once() -> None:
    h = FilterHarness([AwaitHeaders(defer.succeed(CONTINUE)), Seen()])
    h.request(b'{"model": "m"}')
    assert h.upstream.reached and h.upstream.json() == {"model": "m"}
    h.respond(200, {"content-type": "application/json"}, b"{}")
    assert h.client.status == 200 and h.done


def test_a_deferred_that_fires_with_stop_holds_the_headers_like_stop() -> None:
    d: defer.Deferred[FilterStatus] = defer.Deferred()
    h = FilterHarness([AwaitHeaders(d), Seen()])
    h.request()
    d.callback(STOP)
    assert not h.upstream.reached
    h.filter.callbacks.continue_decoding()
    assert h.upstream.reached and h.upstream.ended


class Refuses(StreamFilter):
    """Asks a slow check, and answers 403 when it says no."""

    def __init__(self, check: defer.Deferred[bool]) -> None:
        super().__init__(None)
        self.check = check

    def decode_headers(self, head: RequestHead, end_stream: bool) -> HeadersResult:
        return self.check.addCallback(self._checked)

    def _checked(self, allowed: bool) -> FilterStatus:
        if allowed:
            return CONTINUE
        self.callbacks.send_local_reply(403, "not allowed", code="forbidden")
        return STOP


def test_a_deferred_hook_may_answer_the_request_itself() -> None:
    check: defer.Deferred[bool] = defer.Deferred()
    h = FilterHarness(Refuses(check))
    h.request(b"{}")
    check.callback(False)
    assert h.client.status == 403 and h.client.json()["error"]["code"] == "forbidden"
    assert not h.upstream.reached and h.done and h.stream_info.outcome == "local_reply"


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    """The log events emitted during the test."""
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_a_failed_deferred_answers_an_internal_error_naming_the_filter(
    logged: list[LogEvent],
) -> None:
    d: defer.Deferred[FilterStatus] = defer.Deferred()
    h = FilterHarness([AwaitHeaders(d), Seen()])
    h.request(b"x")
    d.errback(RuntimeError("the check broke"))
    assert h.client.status == 500 and h.client.json()["error"]["code"] == "internal_error"
    assert h.done and h.stream_info.outcome == "internal_error" and not h.upstream.reached
    failures = [e for e in logged if "log_failure" in e]
    assert len(failures) == 1 and failures[0]["label"] == "AwaitHeaders (filters[0])"
    assert failures[0]["log_failure"].check(RuntimeError)


def test_a_deferred_that_fires_with_no_status_is_an_internal_error() -> None:
    d: defer.Deferred[Any] = defer.Deferred()
    h = FilterHarness([AwaitHeaders(d), Seen()])
    h.request(b"x")
    d.callback(None)  # a callback that forgot to return the status
    assert h.client.status == 500 and h.stream_info.outcome == "internal_error"


def test_a_deferred_that_fires_after_the_client_left_changes_nothing() -> None:
    d: defer.Deferred[FilterStatus] = defer.Deferred()
    h = FilterHarness([AwaitHeaders(d), Seen()])
    h.request(b"x")
    h.hang_up()
    assert h.done and h.stream_info.outcome == "client_gone"
    d.callback(CONTINUE)
    assert not h.upstream.reached and h.client.status is None
    assert d.called and d.result is None  # the chain's callback ran, and kept nothing


def test_a_deferred_that_fails_after_the_request_ended_changes_nothing() -> None:
    d: defer.Deferred[FilterStatus] = defer.Deferred()
    h = FilterHarness([AwaitHeaders(d), Seen()])
    h.request(b"x")
    h.hang_up()
    d.errback(RuntimeError("too late"))
    assert h.client.status is None and h.stream_info.outcome == "client_gone"
    assert d.called and d.result is None  # the failure was taken, not left unhandled


class TimesOut(StreamFilter):
    """Answers 504 when its check takes longer than a second (on the filters' clock)."""

    def __init__(self, check: defer.Deferred[FilterStatus]) -> None:
        super().__init__(None)
        self.check = check

    def decode_headers(self, head: RequestHead, end_stream: bool) -> HeadersResult:
        self.timer = self.callbacks.clock.callLater(1.0, self._late)
        return self.check

    def _late(self) -> None:
        self.callbacks.send_local_reply(504, "the check took too long", code="timeout")


def test_a_deferred_that_fires_after_a_local_reply_changes_nothing() -> None:
    check: defer.Deferred[FilterStatus] = defer.Deferred()
    h = FilterHarness([TimesOut(check), Seen()])
    h.request(b"x")
    h.clock.advance(0.5)
    assert h.client.status is None
    h.clock.advance(0.5)
    assert h.client.status == 504 and h.done
    check.callback(CONTINUE)
    assert not h.upstream.reached and h.client.status == 504


class StoresAtTheEnd(StreamFilter):
    """Its response data hook waits for a store once it sees the word "end"."""

    def __init__(self, store: defer.Deferred[Any]) -> None:
        super().__init__(None)
        self.store = store
        self.seen: list[bytes] = []

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        self.seen.append(data)
        if b"end" in data:
            return self.store
        return CONTINUE


def test_a_data_hook_deferred_holds_the_response_and_what_follows() -> None:
    store: defer.Deferred[Any] = defer.Deferred()
    h = FilterHarness(StoresAtTheEnd(store))
    h.request(b"{}")
    h.respond(200, SSE, [b"a ", b"the end ", b"after"])
    assert h.client.pieces == [b"a "] and not h.client.ended
    assert h.filter.seen == [b"a ", b"the end "]  # type: ignore[attr-defined]
    store.callback(CONTINUE)
    assert h.client.pieces == [b"a ", b"the end ", b"after"] and h.client.ended
    assert h.filter.seen == [b"a ", b"the end ", b"after"]  # type: ignore[attr-defined]
    assert h.done and h.stream_info.outcome == "complete"


def test_a_data_hook_deferred_may_fire_with_replacement_data() -> None:
    store: defer.Deferred[Any] = defer.Deferred()
    h = FilterHarness(StoresAtTheEnd(store))
    h.request(b"{}")
    h.respond(200, SSE, [b"the end"])
    store.callback([b"THE ", b"END"])
    assert h.client.pieces == [b"THE ", b"END"] and h.client.ended


def test_a_data_hook_deferred_fired_at_once_passes_the_piece_on() -> None:
    h = FilterHarness(StoresAtTheEnd(defer.succeed(CONTINUE)))
    h.request(b"{}")
    h.respond(200, SSE, [b"a ", b"the end"])
    assert h.client.body == b"a the end" and h.client.ended


class ContinuesInside(StreamFilter):
    """Calls continue_decoding inside its own hook, then returns *status*."""

    def __init__(self, status: FilterStatus) -> None:
        super().__init__(None)
        self.status = status

    def decode_headers(self, head: RequestHead, end_stream: bool) -> HeadersResult:
        self.callbacks.continue_decoding()
        return self.status


def test_continue_inside_the_hook_that_returns_stop_is_an_error() -> None:
    h = FilterHarness([ContinuesInside(STOP), Seen()])
    h.request(b"x")
    # The call continued nothing (nothing was held yet): the request would hang.
    assert h.client.status == 500 and h.stream_info.outcome == "internal_error"
    assert not h.upstream.reached


def test_the_error_says_what_to_do() -> None:
    message = str(ContinueInsideHook("MyFilter"))
    assert "MyFilter" in message and "Deferred" in message and "CONTINUE" in message


def test_continue_inside_a_hook_that_returns_continue_is_harmless() -> None:
    h = FilterHarness([ContinuesInside(CONTINUE), Seen()])
    h.request(b"x")
    assert h.upstream.reached and h.upstream.body == b"x"


# -- the stream-owner calls ------------------------------------------------------------------


class Owner(StreamFilter):
    """Takes its stream over in encode_headers; records what it is told."""

    def __init__(self, keep_going: bool = False, flow: bool = False) -> None:
        super().__init__(None)
        self.keep_going = keep_going
        self.flow = flow
        self.events: list[str] = []
        self.pieces: list[bytes] = []

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> HeadersResult:
        self.owner = self.callbacks.own_stream()
        if self.keep_going:
            self.owner.keep_going_without_client(lambda: self.events.append("client gone"))
        if self.flow:
            self.owner.take_flow_control(
                lambda: self.events.append("pause"), lambda: self.events.append("resume")
            )
        return CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        self.pieces.append(data)
        return CONTINUE


def owned(**kwargs: bool) -> tuple[FilterHarness, Owner]:
    owner = Owner(**kwargs)
    h = FilterHarness(owner)
    h.request(b"{}")
    h.respond(200, SSE, [b"data: 1\n\n"], end=False)
    return h, owner


def test_own_stream_gives_the_stream_owner_calls_which_ordinary_filters_do_not_see() -> None:
    _h, owner = owned()
    assert IStreamOwner.providedBy(owner.owner)
    owner_calls = set(IStreamOwner.names())
    assert len(owner_calls) == 7 and not owner_calls & set(IFilterCallbacks.names())
    assert {"own_stream", "clock", "inject_encoded_data"} <= set(IFilterCallbacks.names())


def test_without_a_stream_owner_the_client_leaving_stops_the_upstream() -> None:
    h, _owner = owned()
    h.hang_up()
    assert h.producer.calls == ["stop"] and h.upstream.cancelled
    assert h.done and h.stream_info.outcome == "client_gone"


def test_keep_going_without_client_lets_the_response_go_on_to_nobody() -> None:
    h, owner = owned(keep_going=True)
    h.hang_up()
    assert owner.events == ["client gone"]
    assert h.manager.state is RequestState.DETACHED and not h.done
    assert not h.upstream.cancelled and not h.producer.stopped
    assert h.producer.calls == ["resume", "resume"]  # the client's end, then the detach
    h.more([b"data: 2\n\n"])
    assert owner.pieces == [b"data: 1\n\n", b"data: 2\n\n"]
    assert h.client.body == b"data: 1\n\n"  # nothing more reached the gone client
    assert h.done and h.stream_info.outcome == "complete"


def test_take_flow_control_gets_the_client_s_pause_and_resume() -> None:
    h, owner = owned(flow=True)
    h.client_slow()
    h.client_ready()
    assert owner.events == ["pause", "resume"]
    assert h.producer.calls == []  # the filter decides about the upstream


def test_without_flow_control_a_slow_client_pauses_the_upstream() -> None:
    h, _owner = owned()
    h.client_slow()
    assert h.producer.paused
    h.client_ready()
    assert h.producer.calls == ["pause", "resume"] and not h.producer.paused


def test_pause_and_resume_upstream() -> None:
    h, owner = owned(flow=True)
    owner.owner.pause_upstream()
    assert h.producer.paused
    owner.owner.resume_upstream()
    assert h.producer.calls == ["pause", "resume"]
    h.more([b"data: 2\n\n"])  # the upstream's end: its connection is no longer ours
    owner.owner.pause_upstream()
    assert h.producer.calls == ["pause", "resume"]


def test_drop_client_ends_the_request_when_nothing_keeps_it_going() -> None:
    h, owner = owned()
    owner.owner.drop_client()
    assert h.client.aborted and h.upstream.cancelled
    assert h.done and h.stream_info.outcome == "client_gone"


def test_drop_client_with_keep_going_detaches_the_response() -> None:
    h, owner = owned(keep_going=True)
    owner.owner.drop_client()
    assert h.client.aborted and not h.upstream.cancelled
    assert owner.events == ["client gone"] and h.manager.state is RequestState.DETACHED
    assert h.client.producer is None and h.producer.calls == ["resume"]
    owner.owner.abandon()
    assert h.upstream.cancelled and h.stream_info.outcome == "client_gone"


def test_abandon_ends_the_request_as_when_the_client_leaves() -> None:
    h, owner = owned()
    owner.owner.abandon()
    assert h.client.aborted and h.upstream.cancelled
    assert h.done and h.stream_info.outcome == "client_gone"


class LocalStream(StreamFilter):
    """Answers with an event stream of its own, one event per clock tick."""

    def decode_headers(self, head: RequestHead, end_stream: bool) -> HeadersResult:
        self.callbacks.own_stream().send_local_stream(200, [("content-type", "text/event-stream")])
        self.left = 2
        self.callbacks.clock.callLater(1.0, self._tick)
        return STOP

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        return CONTINUE  # (what it injects passes the encoders after it)

    def _tick(self) -> None:
        self.left -= 1
        self.callbacks.inject_encoded_data(b"data: tick\n\n", not self.left)
        if self.left:
            self.callbacks.clock.callLater(1.0, self._tick)


def test_send_local_stream_answers_with_the_filter_s_own_stream() -> None:
    h = FilterHarness(LocalStream)
    h.request(b"{}")
    assert h.client.status == 200 and h.client.headers is not None
    assert h.client.headers.get("content-type") == "text/event-stream"
    assert not h.upstream.reached and h.upstream.cancelled and not h.done
    h.clock.advance(1)
    assert h.client.body == b"data: tick\n\n" and not h.client.ended
    h.clock.advance(1)
    assert h.client.body == b"data: tick\n\n" * 2 and h.client.ended
    assert h.done and h.stream_info.outcome == "complete"


# -- the clock -----------------------------------------------------------------------------


def test_the_filters_clock_is_the_harness_s() -> None:
    h = FilterHarness(Seen)
    assert h.filter.callbacks.clock is h.clock
    h.clock.advance(5)
    assert h.filter.callbacks.clock.seconds() == 5


# -- typed filter state ----------------------------------------------------------------------


class Chosen:
    def __init__(self, name: str) -> None:
        self.name = name


class Chooses(StreamFilter):
    def decode_headers(self, head: RequestHead, end_stream: bool) -> HeadersResult:
        self.callbacks.stream_info.state.set(Chosen("fast"))
        return CONTINUE


class Reads(StreamFilter):
    def decode_headers(self, head: RequestHead, end_stream: bool) -> HeadersResult:
        chosen = self.callbacks.stream_info.state.get(Chosen)
        head.headers.set("x-chosen", chosen.name if chosen is not None else "none")
        return CONTINUE


def test_filters_share_typed_state_by_class() -> None:
    h = FilterHarness([Chooses, Reads])
    h.request(b"{}")
    assert h.upstream.head is not None and h.upstream.head.headers.get("x-chosen") == "fast"
    alone = FilterHarness(Reads)
    alone.request(b"{}")
    assert alone.upstream.head is not None
    assert alone.upstream.head.headers.get("x-chosen") == "none"


def test_filter_state() -> None:
    state = FilterState()
    assert state.get(Chosen) is None and Chosen not in state and len(state) == 0
    first = state.setdefault(Chosen, lambda: Chosen("a"))
    assert state.setdefault(Chosen, lambda: Chosen("b")) is first
    state.set(Chosen("c"))
    chosen = state.get(Chosen)
    assert chosen is not None and chosen.name == "c" and "Chosen" in repr(state)
    assert state.pop(Chosen) is chosen and state.get(Chosen) is None
    with pytest.raises(TypeError, match="made a str"):
        state.setdefault(Chosen, lambda: "not a Chosen")  # type: ignore[arg-type,return-value]


# -- states ----------------------------------------------------------------------------------


def test_a_request_goes_through_its_states() -> None:
    h = FilterHarness(Seen)
    assert h.manager.state is RequestState.DECODING
    assert h.manager.decoder.state is IterationState.HEADERS
    h.request(b"{}")
    assert h.manager.decoder.state is IterationState.BODY
    assert h.manager.state is RequestState.DECODING
    h.respond(200, SSE, [b"data: 1\n\n"], end=False)
    assert h.manager.state is RequestState.ENCODING and h.manager.response_started
    h.more([])
    assert h.manager.state is RequestState.DONE and h.done
    assert h.manager.decoder.state is IterationState.STOPPED
    assert h.manager.response_started  # still known once over (the observer reads it)


def test_stop_ends_a_direction_and_a_pass_under_way() -> None:
    h = FilterHarness(Seen)
    decoder = h.manager.decoder
    generation = decoder.generation
    decoder.stop()
    assert decoder.state is IterationState.STOPPED and decoder.stopped
    assert decoder.generation == generation + 1
    decoder.inject(0, b"late", True)  # nothing goes anywhere any more
    decoder.resume(0)
    assert h.upstream.pieces == []


# -- the harness's chains ----------------------------------------------------------------------


def test_the_harness_runs_a_chain_of_classes_options_and_instances() -> None:
    from filterproxy.extensions.header_rewrite.filter import HeaderRewriteFilter

    last = Seen()
    h = FilterHarness(
        [(HeaderRewriteFilter, {"request_headers": {"set": {"x-a": "1"}}}), Chooses, last]
    )
    h.request(b"{}")
    assert [type(f) for f in h.filters][1:] == [Chooses, Seen] and h.filters[2] is last
    assert h.upstream.head is not None and h.upstream.head.headers.get("x-a") == "1"
    assert last.seen == ["headers", "data {} end"]


def test_a_harness_request_object_is_freed_when_over() -> None:
    h = FilterHarness(Seen)
    h.request(b"{}")
    h.respond(200, {"content-type": "application/json"}, b"{}")
    assert h.manager.filters == [] and h.manager.decoder.filters == []


def test_a_chain_works_out_its_shape_once() -> None:
    from filterproxy.chain.manager import ChainShape
    from filterproxy.chain.registry import build_chain
    from filterproxy.extensions.builtin import parse_config
    from filterproxy.filters.resources import Resources

    chain = build_chain(
        parse_config(
            "clusters:\n  up: {url: 'http://up.test'}\n"
            "filters:\n  - type: body-accumulate\n  - type: route\n  - type: usage\n",
            environ={},
        ),
        Resources(),
    )
    assert chain.shape is chain.shape
    classes = tuple(type(spec.create()) for spec in chain.specs)
    assert chain.shape == ChainShape.of(classes)
