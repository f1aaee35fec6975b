"""The filter chain's iteration rules, without any I/O."""

from __future__ import annotations

import json

from filterproxy.chain.manager import FilterManager
from filterproxy.filters.api import FilterStatus, RequestHead, StreamFilter
from filterproxy.http.headers import Headers

from .fakes import Recorder, RecordingDownstream, RecordingRouter, build_manager, request_head

STOP = FilterStatus.STOP_ITERATION
BUFFER = FilterStatus.STOP_ITERATION_AND_BUFFER


build = build_manager


def test_decoders_run_in_order_and_encoders_in_reverse() -> None:
    log: list[str] = []
    manager, downstream, router = build(
        [Recorder("a", log), Recorder("b", log), Recorder("c", log)]
    )
    manager.decode_headers(request_head(), False)
    manager.decode_data(b"body", True)
    manager.encode_headers(200, Headers([("content-type", "text/plain")]), False)
    manager.encode_data(b"chunk", True)
    assert log == [
        "a.decode_headers",
        "b.decode_headers",
        "c.decode_headers",
        "a.decode_data(b'body',True)",
        "b.decode_data(b'body',True)",
        "c.decode_data(b'body',True)",
        "c.encode_headers",
        "b.encode_headers",
        "a.encode_headers",
        "c.encode_data(b'chunk',True)",
        "b.encode_data(b'chunk',True)",
        "a.encode_data(b'chunk',True)",
        "a.on_destroy",
        "b.on_destroy",
        "c.on_destroy",
    ]
    assert router.events == [("headers", "/v1/chat/completions", False), ("data", b"body", True)]
    assert [e[0] for e in downstream.events] == ["head", "data"]


def test_stopped_headers_are_held_until_the_filter_continues() -> None:
    log: list[str] = []
    holder = Recorder("a", log, decode_headers=STOP)
    manager, _, router = build([holder, Recorder("b", log)])
    manager.decode_headers(request_head(), True)
    assert log == ["a.decode_headers"]
    assert router.events == []
    holder.callbacks.continue_decoding()
    assert log == ["a.decode_headers", "b.decode_headers"]
    assert router.events == [("headers", "/v1/chat/completions", True)]


def test_buffered_data_is_passed_on_whole_when_the_filter_continues() -> None:
    log: list[str] = []

    class BufferUntilEnd(Recorder):
        def decode_data(self, data: bytes, end_stream: bool) -> FilterStatus:
            super().decode_data(data, end_stream)
            return FilterStatus.CONTINUE if end_stream else BUFFER

    manager, _, router = build([BufferUntilEnd("a", log, decode_headers=STOP), Recorder("b", log)])
    manager.decode_headers(request_head(), False)
    manager.decode_data(b"one,", False)
    manager.decode_data(b"two,", False)
    assert router.events == []
    assert "b.decode_headers" not in log
    manager.decode_data(b"three", True)
    # Headers are released first, then the whole body as one piece.
    assert log[-2:] == ["b.decode_headers", "b.decode_data(b'one,two,three',True)"]
    assert router.events == [
        ("headers", "/v1/chat/completions", False),
        ("data", b"one,two,three", True),
    ]


def test_data_reaches_only_filters_that_have_seen_the_headers() -> None:
    log: list[str] = []
    manager, _, router = build(
        [
            Recorder("a", log),
            Recorder("b", log, decode_headers=STOP, decode_data=BUFFER),
            Recorder("c", log),
        ]
    )
    manager.decode_headers(request_head(), False)
    manager.decode_data(b"x", True)
    assert "c.decode_headers" not in log and not any(entry.startswith("c.") for entry in log)
    assert router.events == []


def test_local_reply_answers_with_openai_shaped_json_and_stops_the_chain() -> None:
    log: list[str] = []

    class Deny(StreamFilter):
        def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
            self.callbacks.send_local_reply(403, "tenant not allowed", code="forbidden")
            return STOP

    manager, downstream, router = build([Deny(), Recorder("b", log)])
    manager.decode_headers(request_head(), True)
    assert log == ["b.on_destroy"]
    assert router.events == [] and router.cancelled
    (_, status, headers, _), (_, body, end) = downstream.events
    assert status == 403 and end
    assert headers.get("content-type") == "application/json"
    assert json.loads(body) == {
        "error": {
            "message": "tenant not allowed",
            "type": "invalid_request_error",
            "code": "forbidden",
        }
    }


def test_buffering_past_the_limit_is_413() -> None:
    manager, downstream, router = build([Recorder("a", [], decode_data=BUFFER)], limit=10)
    manager.decode_headers(request_head(), False)
    manager.decode_data(b"12345", False)
    manager.decode_data(b"678901", False)
    assert downstream.events[0][1] == 413
    assert router.cancelled


def test_response_data_skips_filters_that_do_not_touch_data() -> None:
    log: list[str] = []

    class HeadersOnly(StreamFilter):
        def encode_headers(self, head: object, end_stream: bool) -> FilterStatus:
            log.append("encode_headers")
            return FilterStatus.CONTINUE

    manager, downstream, _ = build([HeadersOnly(), StreamFilter()])
    assert manager.encoder is not None and manager.encoder.data_passthrough
    manager.decode_headers(request_head(), True)
    manager.encode_headers(200, Headers(), False)
    manager.encode_data(b"a", False)
    manager.encode_data(b"b", True)
    assert log == ["encode_headers"]
    assert downstream.body() == b"ab"


def test_a_filter_that_passes_data_in_its_headers_hook_skips_a_body_held_with_them() -> None:
    """A filter that held the response head and lets it go with the whole body (the
    translate filter with a JSON answer): a filter after it that says, in its headers
    hook, that it does not look at this response's data is not given the body."""
    seen: list[bytes] = []

    class NotMine(StreamFilter):  # runs after Holding in the encode order
        def encode_headers(self, head: object, end_stream: bool) -> FilterStatus:
            self.callbacks.pass_response_data()
            return FilterStatus.CONTINUE

        def encode_data(self, data: bytes, end_stream: bool) -> FilterStatus:
            seen.append(data)
            return FilterStatus.CONTINUE

    class Holding(StreamFilter):
        body = b""

        def encode_headers(self, head: object, end_stream: bool) -> FilterStatus:
            return STOP

        def encode_data(self, data: bytes, end_stream: bool) -> FilterStatus | bytes:
            self.body += data
            return self.body.upper() if end_stream else STOP

    manager, downstream, _ = build([NotMine(), Holding()])
    manager.decode_headers(request_head(), True)
    manager.encode_headers(200, Headers(), False)
    manager.encode_data(b"a", False)
    manager.encode_data(b"bc", True)
    assert downstream.body() == b"ABC" and seen == []


def test_no_encoders_means_no_encode_iteration_at_all() -> None:
    manager, downstream, _ = build([StreamFilter()])
    assert manager.encoder is None
    manager.decode_headers(request_head(), True)
    manager.encode_headers(200, Headers([("connection", "close"), ("x-a", "1")]), False)
    manager.encode_data(b"tok", True)
    (_, status, headers, _), data = downstream.events
    assert status == 200 and "connection" not in headers and headers.get("x-a") == "1"
    assert data == ("data", b"tok", True)


def test_encode_filter_can_replace_response_data() -> None:
    class Upper(StreamFilter):
        def encode_data(self, data: bytes, end_stream: bool) -> FilterStatus:
            self.callbacks.inject_encoded_data(data.upper(), end_stream)
            return STOP

    manager, downstream, _ = build([Upper()])
    manager.decode_headers(request_head(), True)
    manager.encode_headers(200, Headers(), False)
    manager.encode_data(b"abc", True)
    assert downstream.body() == b"ABC"


def test_a_filter_that_raises_gets_a_500_not_a_hang() -> None:
    class Broken(StreamFilter):
        def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
            raise RuntimeError("bug")

    manager, downstream, _ = build([Broken()])
    manager.decode_headers(request_head(), True)
    assert downstream.events[0][1] == 500
    assert downstream.events[-1][2] is True


def test_upstream_failure_after_the_response_started_aborts_the_client() -> None:
    manager, downstream, _ = build([StreamFilter()])
    manager.decode_headers(request_head(), True)
    manager.encode_headers(200, Headers(), False)
    manager.encode_data(b"partial", False)
    manager.fail_response(502, "reset", "reset")
    assert downstream.events[-1] == ("abort",)
    assert manager.done


def test_client_gone_cancels_the_router_and_destroys_filters_once() -> None:
    log: list[str] = []
    manager, _, router = build([Recorder("a", log)])
    manager.decode_headers(request_head(), True)
    manager.client_gone()
    manager.client_gone()
    assert router.cancelled
    assert log.count("a.on_destroy") == 1


class RecordingObserver:
    def __init__(self) -> None:
        self.events: list[str] = []

    def request_started(self, manager: FilterManager) -> None:
        self.events.append("started")

    def stream_started(self, manager: FilterManager) -> None:
        self.events.append("stream")

    def request_finished(self, manager: FilterManager) -> None:
        self.events.append(f"finished:{manager.stream_info.outcome}")


def test_the_observer_hears_of_start_and_end_once() -> None:
    observer = RecordingObserver()
    downstream = RecordingDownstream()
    manager = FilterManager(downstream, [StreamFilter()], RecordingRouter, 1000, observer=observer)  # type: ignore[arg-type]
    manager.decode_headers(request_head(), True)
    manager.encode_headers(200, Headers([("content-type", "text/event-stream")]), False)
    manager.client_gone()
    manager.client_gone()
    assert observer.events == ["started", "stream", "finished:client_gone"]


def test_request_id_and_trace_context_go_upstream_and_the_id_comes_back() -> None:
    manager, downstream, _ = build([StreamFilter()])
    head = request_head()
    head.headers.set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    manager.decode_headers(head, True)
    info = manager.stream_info
    assert len(info.request_id) == 32
    assert head.headers.get("x-request-id") == info.request_id
    assert info.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert info.span_id != "b7ad6b7169203331"
    assert head.headers.get("traceparent") == f"00-{info.trace_id}-{info.span_id}-01"
    manager.encode_headers(200, Headers([("content-length", "0")]), True)
    sent = downstream.events[0][2]
    assert sent.get("x-request-id") == info.request_id


def test_a_clients_request_id_is_kept_unless_it_could_break_a_log_line() -> None:
    for given, kept in (("req-123_abc", True), ('bad"id', False), ("x" * 200, False)):
        manager, _, _ = build([StreamFilter()])
        head = request_head()
        head.headers.set("x-request-id", given)
        manager.decode_headers(head, True)
        assert (manager.stream_info.request_id == given) is kept
        assert head.headers.get("x-request-id") == manager.stream_info.request_id


def test_the_providers_own_request_id_is_returned_as_it_is() -> None:
    manager, downstream, _ = build([StreamFilter()])
    manager.decode_headers(request_head(), True)
    manager.encode_headers(200, Headers([("x-request-id", "req_provider")]), True)
    assert downstream.events[0][2].get_all("x-request-id") == ["req_provider"]
    assert manager.stream_info.upstream_request_id == "req_provider"


def _routed_chain(log: list[str], plan: tuple[str, ...]) -> tuple[FilterManager, RecordingRouter]:
    """before → a route-choosing filter (plan: the clusters it may use) → after, where
    `after` is made by a factory (it records the cluster it shaped the request for)."""
    from filterproxy.config import RouteConfig, UpstreamPlan
    from filterproxy.config._types import RetryPolicy, Timeouts

    made: list[int] = []

    class Routing(Recorder):
        chooses_cluster = True

        def decode_data(self, data: bytes, end_stream: bool) -> FilterStatus:
            super().decode_data(data, end_stream)
            info = self.callbacks.stream_info
            info.route = RouteConfig(
                name="r",
                cluster=plan[0],
                plan=tuple(UpstreamPlan(c, Timeouts(), RetryPolicy()) for c in plan),
            )
            info.cluster = plan[0]
            self.callbacks.set_request_json({"model": "m", "routed": True})
            return FilterStatus.CONTINUE

    class Shaping(Recorder):
        def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
            cluster = self.callbacks.stream_info.cluster
            seen = head.headers.get("authorization")
            log.append(f"after#{made.index(id(self))}.headers for {cluster} ({seen})")
            head.headers.set("authorization", f"key of {cluster}")
            head.path = f"/{cluster}"
            return FilterStatus.CONTINUE

        def decode_data(self, data: bytes, end_stream: bool) -> FilterStatus:
            document = self.callbacks.request_json()
            assert document is not None
            document["shaped_for"] = self.callbacks.stream_info.cluster
            self.callbacks.set_request_json(document)
            return FilterStatus.CONTINUE

        def on_destroy(self) -> None:
            log.append(f"after#{made.index(id(self))}.on_destroy")

    def make_after() -> Shaping:
        instance = Shaping("after", [])
        made.append(id(instance))
        return instance

    before, routing = Recorder("before", log), Routing("route", [], decode_headers=STOP)
    filters: list[StreamFilter] = [before, routing, make_after()]
    downstream = RecordingDownstream()
    routers: list[RecordingRouter] = []

    def router_factory(manager: FilterManager) -> RecordingRouter:
        routers.append(RecordingRouter(manager))
        return routers[0]

    manager = FilterManager(
        downstream,  # type: ignore[arg-type]
        filters,  # type: ignore[arg-type]
        router_factory,  # type: ignore[arg-type]
        1000,
        factories=(lambda: Recorder("before", log), lambda: routing, make_after),
    )
    return manager, routers[0]


def test_a_fallback_cluster_gets_the_filters_after_the_route_anew() -> None:
    log: list[str] = []
    manager, router = _routed_chain(log, ("primary", "backup"))
    manager.decode_headers(request_head(authorization="client key"), False)
    manager.decode_data(b'{"model": "m"}', True)
    assert router.events[-2][1] == "/primary"
    assert json.loads(router.events[-1][1]) == {
        "model": "m",
        "routed": True,
        "shaped_for": "primary",
    }
    log.clear()
    assert manager.redecode("backup") is True
    # The head as it left the route filter: not what the first shaping set.
    assert log == ["after#0.on_destroy", "after#1.headers for backup (client key)"]
    assert router.events[-2][1] == "/backup"
    # The request as it left the route filter, shaped for the backup alone.
    assert json.loads(router.events[-1][1]) == {
        "model": "m",
        "routed": True,
        "shaped_for": "backup",
    }
    assert manager.stream_info.cluster == "backup"


def test_a_route_with_one_cluster_keeps_nothing_to_shape_again() -> None:
    log: list[str] = []
    manager, _ = _routed_chain(log, ("primary",))
    manager.decode_headers(request_head(), False)
    manager.decode_data(b'{"model": "m"}', True)
    assert manager.decoder.kept_head is None
    assert manager.redecode("primary") is False


def test_a_body_a_filter_grows_past_the_request_limit_is_a_413_not_sent() -> None:
    class Growing(StreamFilter):
        def decode_data(self, data: bytes, end_stream: bool) -> FilterStatus:
            self.callbacks.set_request_json({"model": "m", "padding": "x" * 2000})
            return FilterStatus.CONTINUE

    manager, downstream, router = build([Growing()], limit=1000)
    manager.decode_headers(request_head(), False)
    manager.decode_data(b'{"model": "m"}', True)
    assert not any(e[0] == "data" for e in router.events)
    status, body = downstream.events[0][1], downstream.body()
    assert status == 413
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large"
    assert "over the gateway's limit of 1000 bytes (max_request_bytes)" in error["message"]
