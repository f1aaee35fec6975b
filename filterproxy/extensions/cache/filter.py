"""The cache filter: answers from the cache, merges identical requests in flight, and
stores the complete, successful answers of the requests it sends on.

It is last in the chain, so that it sees the request as the upstream gets it (its key,
`keying`) and the upstream's answer before any filter rewrites it: what it stores and
replays are the upstream's bytes, and a replay passes every other filter's encode side as
the upstream's answer would — the translate filter rebuilds it in the client's API, the
usage filter reads its tokens.

Per request, one role (`Role`): passing (the route does not cache), bypassing (the
client's ``Cache-Control`` or a request that cannot repeat; a ``no-cache`` answer is
still stored), serving (a hit), following (waiting on an identical request's answer in
flight, `flight.Flight`) or leading (sending it upstream, its answer stored and shared).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

import orjson

from filterproxy.config import Node
from filterproxy.extensions.cache.admin import register_routes
from filterproxy.extensions.cache.config import CacheConfig, CacheSettings, cache_of
from filterproxy.extensions.cache.flight import Flight, Flights
from filterproxy.extensions.cache.keying import (
    KEYED_HEADERS,
    RequestShape,
    cache_key,
    decide,
    partition,
    request_shape,
)
from filterproxy.extensions.cache.metrics import CacheMetrics
from filterproxy.extensions.cache.shapes import (
    answer_from_stream,
    stream_from_answer,
    without_usage_chunk,
)
from filterproxy.extensions.cache.store import Entry, MemoryStore, RedisStore, marks_of
from filterproxy.filters.admin import AdminRoutes
from filterproxy.filters.api import (
    DataResult,
    FilterContext,
    FilterStatus,
    RequestHead,
    ResponseHead,
    StreamFilter,
)
from filterproxy.filters.owner import credential_of
from filterproxy.filters.records import CacheResult
from filterproxy.http.apis import CHAT, client_api
from filterproxy.http.encoding import IDENTITY

if TYPE_CHECKING:
    from filterproxy.filters.resources import Resources
    from filterproxy.filters.stream_owner import IStreamOwner

__all__ = ["CACHE_HEADER", "CacheFilter", "CacheFilterConfig", "Role"]

#: The response header that says what the cache did.
CACHE_HEADER: Final = "x-filterproxy-cache"
_EVENT_STREAM: Final = "text/event-stream"
_JSON: Final = "application/json"
#: The upstream's headers that each client of a shared answer gets too (what an error
#: says about trying again); the others are the first client's (its ids, its limits).
_SHARED: Final = ("retry-after", "retry-after-ms")


class Role(enum.Enum):
    """What the cache does with one request."""

    PASSING = "passing"
    BYPASSING = "bypassing"
    SERVING = "serving"
    FOLLOWING = "following"
    LEADING = "leading"


@dataclass(frozen=True)
class CacheFilterConfig:
    """The process's stores and flights, and the config's settings."""

    memory: MemoryStore
    flights: Flights
    metrics: CacheMetrics
    settings: CacheSettings
    #: The Redis store, when some route keeps its entries there.
    redis: RedisStore | None = None


class CacheFilter(StreamFilter):
    """Response cache and in-flight merging (see the module's description)."""

    provides = ("cache",)
    requires: ClassVar[Mapping[str, str]] = {
        "route": "its key is the request as the upstream gets it: after routing, aliases "
        "and translation, so it comes after the filters that make it",
    }

    config: CacheFilterConfig

    @classmethod
    def configure(cls, options: Mapping[str, Any], context: FilterContext) -> CacheFilterConfig:
        Node(dict(options), context.path, context.environ).mapping(set())
        config = context.config
        resources = context.resources
        redis = None
        if any(
            (c := cache_of(route)) is not None and c.store == "redis" for route in config.routes
        ):
            assert config.redis is not None  # the route's parser checked it
            redis = RedisStore(resources, config.redis)
        return CacheFilterConfig(
            resources.get(MemoryStore, MemoryStore.from_resources),
            resources.get(Flights, Flights.from_resources),
            CacheMetrics.of(resources),
            config.section(CacheSettings) or CacheSettings(),
            redis,
        )

    @classmethod
    def activate(cls, config: CacheFilterConfig, resources: Resources) -> None:
        """The config goes in force: the memory store's cap, the admin API."""
        config.memory.cap = config.settings.cache_memory
        config.memory.shrink()
        register_routes(
            resources.get(AdminRoutes, AdminRoutes), config.memory, config.flights, config.redis
        )

    def __init__(self, config: CacheFilterConfig) -> None:
        super().__init__(config)
        self.role = Role.PASSING
        self.route: CacheConfig | None = None
        self.head: RequestHead | None = None
        self.key = ""
        self.api: str | None = None
        self.model = ""
        self.shape = RequestShape(False)
        self.result: CacheResult | None = None
        #: The answer in flight this request leads or follows.
        self.flight: Flight | None = None
        #: A leader's answer as it comes (while it may be stored), its size, its marks.
        self.recording = False
        self.pieces: list[bytes] = []
        self.size = 0
        self.marks: list[tuple[int, int]] = []
        self.started_at = 0.0
        self.status = 0
        self.content_type = ""
        #: A hit's answer as sent (for those who waited on its Redis lookup).
        self.served = b""
        #: The client cannot take more now (a leader's or a follower's), and what waits.
        self.paused = False
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.upstream_paused = False
        self.detached = False
        #: A follower has sent its client the answer's head.
        self.answering = False
        self.own: IStreamOwner | None = None
        #: A paced hit's next piece (an `IDelayedCall`).
        self.timer: Any = None
        self.done = False

    # -- the request -----------------------------------------------------------------

    def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
        route = cache_of(self.callbacks.stream_info.route)
        if route is None or head.method != "POST" or end_stream:
            self.callbacks.pass_response_data()
            return FilterStatus.CONTINUE
        self.route = route
        self.head = head
        return FilterStatus.STOP_ITERATION  # decided once the whole body is in

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        if self.route is None or self.role is not Role.PASSING:
            return FilterStatus.CONTINUE
        if not end_stream:
            return FilterStatus.STOP_ITERATION_AND_BUFFER
        return self._decide()

    def _decide(self) -> DataResult:
        route, head = self.route, self.head
        assert route is not None and head is not None
        info = self.callbacks.stream_info
        body = self.callbacks.request_json()
        decision = decide(body, route, head.headers.get("cache-control"))
        if body is None:
            return self._bypass(decision.reason, store=False)
        self.api = client_api(head.path)
        model = body.get("model")
        self.model = model if isinstance(model, str) else ""
        self.shape = request_shape(body, self.api)
        keyed = [(n, v) for n in KEYED_HEADERS if (v := head.headers.get(n)) is not None]
        self.key = cache_key(
            partition(route.share, info.key_name, info.team_name, credential_of(head)),
            info.cluster or "",
            head.method,
            head.path,
            keyed,
            body,
        )
        if decision.bypass:
            return self._bypass(decision.reason, store=decision.write)
        if self._follow():
            return FilterStatus.STOP_ITERATION_AND_BUFFER
        redis = self.config.redis
        if route.store == "redis" and redis is not None:
            # Identical requests that come while Redis answers wait on this one: its
            # hit, or its answer from upstream.
            self._lead()
            d = redis.get(self.key, self.model, route.max_bytes)
            return d.addCallback(self._looked_up)
        entry = self.config.memory.get(self.key, self.callbacks.clock.seconds())
        if entry is not None and self._serve(entry):
            return FilterStatus.STOP_ITERATION
        return self._lead()

    @property
    def flight_id(self) -> str:
        shape = self.shape
        return f"{self.key}:{int(shape.stream)}{int(shape.usage)}"

    def _looked_up(self, entry: Entry | None) -> DataResult:
        """Redis's answer (this request leads the identical ones meanwhile): a hit is
        theirs too; else it goes upstream."""
        if self.done or self.role is not Role.LEADING:
            return FilterStatus.STOP_ITERATION  # (its client left; another leads)
        live = entry is not None and entry.expires_at > self.callbacks.clock.seconds()
        flight = self.flight
        if live and entry is not None and self._serve(entry):
            if flight is not None:
                self.flight = None
                flight.head(200, self.content_type)
                flight.data(self.served)
                flight.end()
            return FilterStatus.STOP_ITERATION
        return FilterStatus.CONTINUE

    def _bypass(self, reason: str | None, *, store: bool) -> DataResult:
        self._set_result(CacheResult("bypass", self.key, reason))
        if store:
            self.role = Role.LEADING  # its answer is stored; nobody joins it
        else:
            self.role = Role.BYPASSING
        return FilterStatus.CONTINUE

    def _lead(self) -> DataResult:
        assert self.route is not None
        self.role = Role.LEADING
        self.flight = self.config.flights.start(self.flight_id, self.route.max_bytes)
        self._set_result(CacheResult("miss", self.key))
        return FilterStatus.CONTINUE

    def _set_result(self, result: CacheResult) -> None:
        self.result = result
        self.callbacks.stream_info.state.set(result)

    def response_codings(self) -> frozenset[str] | None:
        # What is stored and shared is the upstream's answer as text.
        return IDENTITY if self.role is Role.LEADING else None

    # -- a hit ---------------------------------------------------------------------------

    def _serve(self, entry: Entry) -> bool:
        """Answer with *entry*, in the shape the request wants; False when it cannot
        (then the request goes upstream, and its answer replaces the entry)."""
        shape = self.shape
        body: bytes | None = entry.body
        api = entry.api
        limit = max(len(entry.body) * 4, 64 * 1024)
        if shape.stream and entry.streamed:
            if api == CHAT and not shape.usage and entry.usage:
                body = without_usage_chunk(entry.body)
            elif shape.usage and not entry.usage:
                return False
        elif shape.stream:
            if api is None:
                return False
            body = stream_from_answer(api, entry.body, include_usage=shape.usage, max_bytes=limit)
        elif entry.streamed:
            if api is None or not entry.usage:
                return False
            body = answer_from_stream(api, entry.body, max_bytes=limit)
        if body is None:
            return False
        self.role = Role.SERVING
        now = self.callbacks.clock.seconds()
        age = max(0.0, now - entry.stored_at)
        self._set_result(CacheResult("hit", self.key, age=age))
        headers = [
            (
                "content-type",
                entry.content_type
                if shape.stream == entry.streamed
                else (_EVENT_STREAM if shape.stream else _JSON),
            ),
            (CACHE_HEADER, "hit"),
            ("age", str(int(age))),
        ]
        if shape.stream:
            headers.append(("cache-control", "no-cache"))
        self.content_type = headers[0][1]
        self.served = body
        own = self.own = self.callbacks.own_stream()
        own.send_local_stream(200, headers)
        route = self.route
        if route is not None and route.pace and entry.marks and body is entry.body:
            self._pace(body, entry.marks, 0, now)
        else:
            self.callbacks.inject_encoded_data(body, True)
        return True

    def _pace(self, body: bytes, marks: tuple[tuple[int, int], ...], i: int, t0: float) -> None:
        """Send the pieces from mark *i* on at the pace they were recorded at."""
        self.timer = None
        if self.done:
            return
        clock = self.callbacks.clock
        start = marks[i - 1][0] if i else 0
        while i < len(marks):
            end, ms = marks[i]
            wait = t0 + ms / 1000 - clock.seconds()
            if wait > 0.001:
                self.timer = clock.callLater(wait, self._pace, body, marks, i, t0)
                return
            last = i == len(marks) - 1
            self.callbacks.inject_encoded_data(body[start : len(body) if last else end], last)
            start = end
            i += 1

    # -- following -------------------------------------------------------------------------

    def _follow(self) -> bool:
        """Wait on an identical request's answer in flight, if there is one to join."""
        flight = self.config.flights.find(self.flight_id)
        if flight is None:
            return False
        self.role = Role.FOLLOWING
        self.flight = flight
        self._set_result(CacheResult("coalesced", self.key))
        if not flight.join(self):
            self.role = Role.PASSING
            self.flight = None
            return False
        return True

    def started(self, status: int, content_type: str, shared: tuple[tuple[str, str], ...]) -> None:
        """flight.Follower: the answer's head came."""
        if self.done:
            return
        own = self.own = self.callbacks.own_stream()
        own.take_flow_control(self._slow, self._ready)
        headers = [("content-type", content_type or _JSON), (CACHE_HEADER, "coalesced")]
        headers += shared
        if content_type.startswith(_EVENT_STREAM):
            headers.append(("cache-control", "no-cache"))
        self.answering = True
        own.send_local_stream(status, headers)

    def push(self, data: bytes) -> None:
        """flight.Follower: a piece of the answer."""
        if self.done or not self.answering:
            return
        if not self.paused:
            self.callbacks.inject_encoded_data(data, False)
            return
        self.held.append(data)
        self.held_bytes += len(data)
        route = self.route
        if route is not None and self.held_bytes > route.max_bytes:
            self.held, self.held_bytes = [], 0
            flight = self.flight
            if flight is not None:
                flight.leave(self)
            self.flight = None
            self.callbacks.fail_response(
                502,
                "this client fell too far behind the answer it shares with identical "
                f"requests (more than {route.max_bytes} bytes waiting: the route's "
                "cache.max_bytes)",
            )

    def ended(self) -> None:
        """flight.Follower: the answer is complete."""
        self.flight = None
        if self.done or not self.answering:
            return
        held, self.held, self.held_bytes = self.held, [], 0
        self.callbacks.inject_encoded_data(b"".join(held), True)

    def failed(self, status: int, message: str) -> None:
        """flight.Follower: the answer failed."""
        self.flight = None
        if self.done:
            return
        if not self.answering:
            self.callbacks.send_local_reply(status, message, code="upstream_error")
            return
        held, self.held, self.held_bytes = self.held, [], 0
        if held:
            self.callbacks.inject_encoded_data(b"".join(held), False)
        self.callbacks.fail_response(status if status >= 500 else 502, message)

    def lead(self) -> None:
        """flight.Follower: the leader went before any answer; this request leads."""
        if self.done:
            return
        self.role = Role.LEADING
        self._set_result(CacheResult("miss", self.key))
        self.callbacks.continue_decoding()

    def _slow(self) -> None:
        self.paused = True

    def _ready(self) -> None:
        self.paused = False
        if self.held and not self.done:
            held, self.held, self.held_bytes = self.held, [], 0
            self.callbacks.inject_encoded_data(b"".join(held), False)
        if self.upstream_paused and not self.done:
            self.upstream_paused = False
            own = self.own
            if own is not None:
                own.resume_upstream()

    # -- leading: the upstream's answer ----------------------------------------------------

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> FilterStatus:
        result = self.result
        if result is not None:
            head.headers.set(CACHE_HEADER, result.status)
        if self.role is not Role.LEADING:
            self.callbacks.pass_response_data()
            return FilterStatus.CONTINUE
        info = self.callbacks.stream_info
        self.status = head.status
        self.content_type = head.headers.get("content-type") or ""
        coded = head.headers.get("content-encoding") not in (None, "identity")
        self.recording = head.status == 200 and not coded
        if not self.recording:
            self._unstored("status")
        self.started_at = self.callbacks.clock.seconds()
        flight = self.flight
        if flight is not None:
            if head.status >= 400 and info.error:
                # The gateway's own error (the upstream could not be reached): each
                # follower is told in its own API's shape.
                self.flight = None
                flight.fail(head.status, info.error)
            else:
                shared = tuple((n, v) for n in _SHARED if (v := head.headers.get(n)) is not None)
                flight.head(head.status, self.content_type, shared)
                if not end_stream:
                    own = self.own = self.callbacks.own_stream()
                    own.keep_going_without_client(self._client_gone)
                    own.take_flow_control(self._slow, self._ready)
        if end_stream:
            self._ended()
        return FilterStatus.CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        if self.role is not Role.LEADING:
            return FilterStatus.CONTINUE
        info = self.callbacks.stream_info
        if info.outcome:
            # The answer failed mid-way: what passes now is the gateway's error, after
            # what this request's client had not taken yet.
            self._fail(info.error or "the upstream's answer failed")
            self.role = Role.BYPASSING
            if self.held:
                held, self.held, self.held_bytes = self.held, [], 0
                return b"".join([*held, data])
            return FilterStatus.CONTINUE
        if data:
            if self.recording:
                self._record(data)
            flight = self.flight
            if flight is not None:
                flight.data(data)
        if end_stream:
            self._ended()
        if self.detached:
            return b""
        if not self.paused and not self.held:
            return FilterStatus.CONTINUE
        if end_stream:
            held, self.held, self.held_bytes = self.held, [], 0
            return b"".join([*held, data])
        if data:
            self.held.append(data)
            self.held_bytes += len(data)
            route = self.route
            limit = route.max_bytes if route is not None else 1024 * 1024
            if self.held_bytes > limit and not self.upstream_paused and self.own is not None:
                self.upstream_paused = True
                self.own.pause_upstream()
        return b""

    def _record(self, data: bytes) -> None:
        route = self.route
        assert route is not None
        self.size += len(data)
        if self.size > route.max_bytes:
            self.recording = False
            self.pieces, self.marks = [], []
            self._unstored("too_large")
            return
        self.pieces.append(data)
        if route.pace:
            elapsed = self.callbacks.clock.seconds() - self.started_at
            self.marks.append((self.size, int(elapsed * 1000)))

    def _ended(self) -> None:
        """The upstream's answer is complete: stored (when it may be), then shared."""
        if self.recording:
            self.recording = False
            self._store(b"".join(self.pieces))
            self.pieces = []
        flight, self.flight = self.flight, None
        if flight is not None:
            flight.end()

    def _store(self, body: bytes) -> None:
        route = self.route
        assert route is not None
        streamed = self.content_type.startswith(_EVENT_STREAM)
        api = self.api
        usage = _assessed(api, body, streamed, route.max_bytes)
        if usage is None:
            self._unstored("incomplete")
            return
        now = self.callbacks.clock.seconds()
        info = self.callbacks.stream_info
        entry = Entry(
            key=self.key,
            api=api,
            streamed=streamed,
            usage=usage,
            content_type=self.content_type or _JSON,
            body=body,
            model=self.model,
            route=info.route.name if info.route is not None else "",
            stored_at=now,
            expires_at=now + route.ttl,
            marks=marks_of(self.marks) if streamed else (),
        )
        route_name = entry.route or "none"
        if route.store == "redis" and self.config.redis is not None:
            self.config.redis.put(entry, route.ttl)
            self.config.metrics.stored.inc((route_name, "redis"))
        elif self.config.memory.put(entry):
            self.config.metrics.stored.inc((route_name, "memory"))
        else:
            self._unstored("too_large")

    def _unstored(self, reason: str) -> None:
        info = self.callbacks.stream_info
        route = info.route.name if info.route is not None else "none"
        self.config.metrics.unstored.inc((route, reason))

    def _fail(self, message: str) -> None:
        self.recording = False
        self.pieces = []
        self._unstored("incomplete")
        flight, self.flight = self.flight, None
        if flight is not None:
            flight.fail(502, message)

    def _client_gone(self) -> None:
        """The leader's client left: the answer goes on while others wait on it."""
        self.detached = True
        self.held, self.held_bytes = [], 0
        flight = self.flight
        if flight is None or not flight.followers:
            self._abandon()
        else:
            flight.lonely = self._abandon

    def _abandon(self) -> None:
        own = self.own
        if own is not None and not self.done:
            own.abandon()

    # -- the end ---------------------------------------------------------------------------

    def on_destroy(self) -> None:
        self.done = True
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        flight, self.flight = self.flight, None
        if flight is not None:
            if self.role is Role.FOLLOWING:
                flight.leave(self)
            elif self.role is Role.LEADING:
                flight.leader_gone()
        result = self.result
        if result is not None and self.callbacks.stream_info.outcome:
            self._count(result.status)  # (not for an attempt that moves to a fallback)

    def _count(self, status: str) -> None:
        info = self.callbacks.stream_info
        route = info.route.name if info.route is not None else "none"
        metrics = self.config.metrics
        metrics.requests.inc((route, status))
        if status == "hit" or status == "coalesced":
            if info.prompt_tokens:
                metrics.served_tokens.inc((route, "input"), info.prompt_tokens)
            if info.completion_tokens:
                metrics.served_tokens.inc((route, "output"), info.completion_tokens)


def _assessed(api: str | None, body: bytes, streamed: bool, max_bytes: int) -> bool | None:
    """Whether an answer reports usage, when it is complete and successful (only those
    are stored); None when it is not. One parse: a stream is read into the answer it
    amounts to (`answer_from_stream`), whose usage is the stream's."""
    if streamed:
        if api is None:
            return None
        answer = answer_from_stream(api, body, max_bytes=max_bytes * 4)
        if answer is None:
            return None
        body = answer
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or "error" in document:
        return None
    return isinstance(document.get("usage"), dict)
