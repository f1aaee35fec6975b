"""The router: the terminal decoder. It sends the request upstream — retrying and failing
over while nothing has reached the client — and pumps the response back through the
encoders, chunk by chunk, as it arrives.

An exchange goes through the phases of `Phase` (its ``phase``):

- CONNECTING: waiting for a pooled or new connection (``timeouts.connect``), or for the
  back-off before the next attempt.
- WAITING: the request is written; waiting for the response head (``timeouts.first_byte``).
  A failure here may be retried (`retry.decide`): on another endpoint of the cluster,
  then on the route's fallback clusters, after a jittered backoff.
- STREAMING: the head went to the client; each chunk is passed on as it arrives, and
  the gap between chunks is bounded by ``timeouts.idle``. Nothing is retried any more:
  a failure is reported to the client (an SSE ``event: error`` frame, then the
  connection ends).
- DONE: the response ended, failed or was given up (`cancel`); nothing more happens.

CONNECTING → WAITING → STREAMING → DONE; a retry goes from WAITING (or CONNECTING)
back to CONNECTING; any phase → DONE.

Backpressure: in STREAMING the upstream connection is the client stream's streaming
producer, so a slow client stops the reading of the upstream socket.

Cancellation: `cancel()` gives up a connection attempt or aborts the upstream
connection at once, so a client that hangs up stops the generation upstream.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from twisted.logger import Logger
from twisted.python.failure import Failure

from filterproxy.config import RouteConfig, UpstreamPlan
from filterproxy.filters.api import RequestHead
from filterproxy.filters.records import (
    AuthorizationFailed,
    UpstreamAuthorization,
    UpstreamAuthorizer,
)
from filterproxy.http.headers import Headers
from filterproxy.runtime.deadlines import RESOLUTION
from filterproxy.upstream.connection import ResponseHandler, UpstreamExchange, UpstreamFailure
from filterproxy.upstream.request import UpstreamRequest, build_request, connect_failure_reply
from filterproxy.upstream.retry import (
    FailureKind,
    backoff_delay,
    counts_against_health,
    decide,
    parse_retry_after,
)

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IDelayedCall

    from filterproxy.chain.manager import FilterManager
    from filterproxy.observability.metrics import Histogram, Metrics
    from filterproxy.runtime.deadlines import Deadlines
    from filterproxy.upstream.cluster import Cluster, Endpoint

__all__ = ["Phase", "Router", "RoutingGateway"]

log = Logger(namespace=__name__)

_UPSTREAM_FAILURE_KINDS = {
    UpstreamFailure.RESET_BEFORE_RESPONSE: FailureKind.RESET,
    UpstreamFailure.TLS_FAILURE: FailureKind.CONNECT_FAILURE,
    UpstreamFailure.PROTOCOL_ERROR: FailureKind.PROTOCOL_ERROR,
}


class Phase(enum.Enum):
    """Where a router's exchange is (see the module's description)."""

    CONNECTING = "connecting"
    WAITING = "waiting"
    STREAMING = "streaming"
    DONE = "done"


_CONNECTING: Final = Phase.CONNECTING
_WAITING: Final = Phase.WAITING
_STREAMING: Final = Phase.STREAMING
_DONE: Final = Phase.DONE


class RoutingGateway(Protocol):
    """What a router needs of the gateway in force (`filterproxy.server.service.Gateway`)."""

    @property
    def reactor(self) -> Any: ...

    @property
    def clusters(self) -> Mapping[str, Cluster]: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def deadlines(self) -> Deadlines: ...


class Router(ResponseHandler):
    """Sends one request upstream and streams the response back."""

    def __init__(self, manager: FilterManager, gateway: RoutingGateway) -> None:
        self.manager = manager
        self.gateway = gateway
        self.reactor = gateway.reactor
        self.head: RequestHead | None = None
        self.body_parts: list[bytes] = []
        self.body = b""
        self.plan: tuple[UpstreamPlan, ...] = ()
        self.plan_index = 0
        self.attempts_on_cluster = 0
        self.retries = 0
        #: Endpoint indexes of the current cluster that already failed this request.
        self.failed_endpoints: set[int] = set()
        self.endpoint: Endpoint | None = None
        self.pending: Deferred[UpstreamExchange] | None = None
        #: Waiting for the cluster's credentials (`UpstreamAuthorizer.ready`).
        self.authorizing: Deferred[None] | None = None
        #: The request was tried again once already after its credentials were refused.
        self.reauthorized = False
        self.connection: UpstreamExchange | None = None
        self.request: UpstreamRequest | None = None
        self.phase = _CONNECTING
        self.retried_stale = False
        #: The retry back-off (a precise timer); first-byte and idle limits are deadlines.
        self.timer: IDelayedCall | None = None
        self.deadlines = gateway.deadlines
        #: A first-byte or idle deadline is set.
        self.watching = False
        self.total_timer: IDelayedCall | None = None
        self.heartbeat_timer: IDelayedCall | None = None
        self.heartbeat: float | None = None
        #: The upstream's last piece of body (a heartbeat goes only after the end of an
        #: event); kept only when the route has a heartbeat.
        self.last_data = b""
        # Timestamps (time.monotonic) for the gateway-overhead metric, and the
        # chunk-gap histogram of this stream.
        self.chain_time = 0.0
        self.attempt_started = 0.0
        self.connect_wait = 0.0
        self.sent_at = 0.0
        #: The gateway's own time on this request, once the response head went out.
        self.overhead: float | None = None
        self.last_data_at = 0.0
        self.gap_histogram: Histogram | None = None
        #: When the last chunk came, on the deadlines' coarse clock (`Deadlines.now`):
        #: the idle deadline is moved when it expires, not on every chunk.
        self.data_seen_at = -1.0

    # -- terminal decoder -------------------------------------------------------------

    def on_request_headers(self, head: RequestHead, end_stream: bool) -> None:
        self.head = head
        if end_stream:
            self._send(b"")

    def on_request_data(self, data: bytes, end_stream: bool) -> None:
        if data:
            self.body_parts.append(data)
        if end_stream:
            parts, self.body_parts = self.body_parts, []
            self._send(parts[0] if len(parts) == 1 else b"".join(parts))

    def _send(self, body: bytes) -> None:
        manager, head = self.manager, self.head
        assert head is not None
        if self.plan:
            # The request again, shaped by the filters for a fallback cluster
            # (`_fail_over`): its attempt.
            self.body = body
            self._attempt()
            return
        if manager.request_read_at:
            self.chain_time = time.monotonic() - manager.request_read_at
        route: RouteConfig | None = manager.stream_info.route
        if route is None or not route.plan:
            manager.send_local_reply(
                404, f"no route for {head.method} {head.path}", code="route_not_found"
            )
            return
        self.plan = route.plan
        self.heartbeat = route.heartbeat
        self.body = body
        total = self.plan[0].timeouts.total
        if total is not None:
            self.total_timer = self.reactor.callLater(total, self._total_timeout, total)
        self._attempt()

    # -- attempts -----------------------------------------------------------------------

    def _attempt(self, *, fresh: bool = False) -> None:
        self.timer = None
        self.phase = _CONNECTING
        assert self.head is not None
        self.attempt_started = time.monotonic()
        self.connect_wait = 0.0
        step = self.plan[self.plan_index]
        cluster = self.gateway.clusters[step.cluster]
        endpoint = cluster.pick(self.failed_endpoints)
        self.endpoint = endpoint
        self.attempts_on_cluster += 1
        info = self.manager.stream_info
        info.cluster = step.cluster
        info.endpoint = endpoint.config.url
        info.attempts += 1
        if info.attempts > 1:
            self.gateway.metrics.retries.inc((step.cluster,))
        authorization = info.state.get(UpstreamAuthorization)
        authorizer = None
        if authorization is not None and authorization.cluster == step.cluster:
            # Credentials fetched off the reactor (AWS, Google): wait for them, then
            # sign this attempt (every attempt anew; never another cluster's).
            authorizer = authorization.authorizer
            waiting = authorizer.ready()
            if waiting is not None:
                self.authorizing = waiting
                waiting.addCallbacks(self._authorized, self._authorization_failed, (fresh,))
                return
        self._request_for(endpoint, authorizer, fresh)

    def _authorized(self, _: object, fresh: bool) -> None:
        self.authorizing = None
        if self.phase is _DONE or self.endpoint is None:
            return
        authorization = self.manager.stream_info.state.get(UpstreamAuthorization)
        assert authorization is not None
        self._request_for(self.endpoint, authorization.authorizer, fresh)

    def _authorization_failed(self, failure: Failure) -> None:
        self.authorizing = None
        if self.phase is _DONE:
            return
        error = failure.value
        status = error.status if isinstance(error, AuthorizationFailed) else 503
        # The authorizer's message names the cluster and its credentials' source.
        message = failure.getErrorMessage()
        log.warn("{message}", message=message)
        self.endpoint = None  # not the endpoint's fault: its health is not charged
        self._attempt_failed(
            FailureKind.CONNECT_FAILURE, None, status, message, "upstream_credentials"
        )

    def _credentials_refused(self, cluster: str, status: int, headers: Headers) -> bool:
        authorization = self.manager.stream_info.state.get(UpstreamAuthorization)
        return (
            authorization is not None
            and authorization.cluster == cluster
            and authorization.authorizer.refused(status, headers)
        )

    def _request_for(
        self, endpoint: Endpoint, authorizer: UpstreamAuthorizer | None, fresh: bool
    ) -> None:
        assert self.head is not None
        has_body = bool(self.body) or self.head.method in ("POST", "PUT", "PATCH")
        self.request = build_request(
            self.head,
            endpoint.config,
            len(self.body) if has_body else None,
            self.manager.stream_info.model,
            authorizer,
            self.body,
        )
        step = self.plan[self.plan_index]
        idle = None if fresh else endpoint.pool.take_idle()
        if idle is not None:
            self._connected(idle)
            return
        self.connect_wait = -time.monotonic()  # made positive when the connection comes
        self.pending = endpoint.pool.acquire(step.timeouts.connect, fresh=fresh)
        self.pending.addCallbacks(self._connected, self._connect_failed)

    def _fail_over(self) -> None:
        """The next attempt goes to another cluster: a fresh request for it. The filters
        after the route filter shape the request again for that cluster (its header
        rules, credentials, path, API and translation) and pass it back here (`_send`);
        a chain that kept nothing to shape again sends the request it has."""
        self.timer = None
        self.phase = _CONNECTING
        self.body_parts = []
        if not self.manager.redecode(self.plan[self.plan_index].cluster):
            self._attempt()

    def _connected(self, connection: UpstreamExchange) -> None:
        self.pending = None
        if self.phase is _DONE:
            connection.release_unused()
            return
        assert self.head is not None and self.request is not None
        if self.connect_wait < 0:
            self.connect_wait += time.monotonic()
            self.gateway.metrics.connect.get((self.plan[self.plan_index].cluster,)).observe(
                self.connect_wait
            )
        self.connection = connection
        self.phase = _WAITING
        connection.send_request(self.request, self.body, self, is_head=self.head.method == "HEAD")
        self.sent_at = time.monotonic()
        self.watching = True
        self.deadlines.set(
            self, self.plan[self.plan_index].timeouts.first_byte, self._first_byte_timeout
        )

    def _connect_failed(self, failure: Failure) -> None:
        self.pending = None
        if self.phase is _DONE:
            return
        status, message, code = connect_failure_reply(failure, self.plan[self.plan_index].cluster)
        if code == "upstream_tls_failure":
            log.warn("{message}", message=message)  # never a silent fallback: say it
        self._attempt_failed(FailureKind.CONNECT_FAILURE, None, status, message, code)

    def _attempt_failed(
        self,
        kind: FailureKind,
        status: int | None,
        reply_status: int,
        message: str,
        code: str,
        retry_after: float | None = None,
    ) -> None:
        """An attempt failed before anything reached the client: retry, fail over or answer."""
        endpoint = self.endpoint
        if (
            endpoint is not None
            and counts_against_health(kind, status)
            and endpoint.health.record_failure(self.reactor.seconds())
        ):
            self.gateway.metrics.ejections.inc(
                (self.plan[self.plan_index].cluster, endpoint.config.url)
            )
            log.warn(
                "endpoint {endpoint} of cluster {cluster} ejected after {n} consecutive failures",
                endpoint=endpoint.config.url,
                cluster=self.plan[self.plan_index].cluster,
                n=endpoint.health.policy.consecutive_failures,
            )
        decision = decide(self.plan, self.plan_index, self.attempts_on_cluster, kind, status)
        info = self.manager.stream_info
        info.error = message
        if not decision.retry:
            self._cancel_timers()
            self.phase = _DONE
            outcome = "timeout" if code.endswith("timeout") else "upstream_error"
            self.manager.fail_response(reply_status, message, code, outcome)
            return
        if decision.fallback:
            previous = self.plan[self.plan_index].cluster
            self.plan_index = decision.plan_index
            self.attempts_on_cluster = 0
            self.failed_endpoints = set()
            if self.plan[self.plan_index].cluster != previous:
                self.timer = self.reactor.callLater(0, self._fail_over)
                log.info(
                    "request {request_id}: {message}; failing over to cluster {cluster}",
                    request_id=info.request_id,
                    message=message,
                    cluster=self.plan[self.plan_index].cluster,
                )
                return
            delay = 0.0
        else:
            if endpoint is not None:
                self.failed_endpoints.add(endpoint.index)
            self.retries += 1
            policy = self.plan[self.plan_index].retry
            delay = backoff_delay(policy, self.retries, random.random(), retry_after)
        log.info(
            "request {request_id}: {message}; attempt {attempt} in {delay:.3f}s on cluster {cluster}",
            request_id=info.request_id,
            message=message,
            attempt=info.attempts + 1,
            delay=delay,
            cluster=self.plan[self.plan_index].cluster,
        )
        self.timer = self.reactor.callLater(delay, self._attempt)

    # -- IUpstreamHandler ---------------------------------------------------------------

    def on_response_head(self, status: int, headers: Headers) -> None:
        self._cancel_timer()
        step = self.plan[self.plan_index]
        if (
            status in (401, 403)
            and not self.reauthorized
            and self._credentials_refused(step.cluster, status, headers)
        ):
            # Credentials the upstream refused (a token revoked or expired early): once
            # more, with fresh ones.
            self.reauthorized = True
            connection, self.connection = self.connection, None
            if connection is not None:
                connection.abort()
            log.info(
                "request {request_id}: cluster {cluster} refused its credentials ({status}); "
                "trying once more with fresh ones",
                request_id=self.manager.stream_info.request_id,
                cluster=step.cluster,
                status=status,
            )
            self.timer = self.reactor.callLater(0, self._attempt)
            return
        if (
            status >= 400
            and decide(
                self.plan, self.plan_index, self.attempts_on_cluster, FailureKind.STATUS, status
            ).retry
        ):
            connection, self.connection = self.connection, None
            if connection is not None:
                connection.abort()  # drop the error body; the next attempt is what counts
            retry_after = parse_retry_after(headers.get("retry-after"), time.time())
            message = f"upstream cluster {step.cluster!r} answered {status}"
            self._attempt_failed(
                FailureKind.STATUS, status, 502, message, "upstream_status", retry_after
            )
            return
        if self.endpoint is not None:
            if status >= 500:
                self.endpoint.health.record_failure(self.reactor.seconds())
            else:
                self.endpoint.health.record_success()
        self.phase = _STREAMING
        manager = self.manager
        head_received = time.monotonic()
        manager.stream_info.time_to_first_byte = head_received - manager.stream_info.started
        if self.connection is not None:
            manager.register_producer(self.connection)
        self.watching = True
        self.deadlines.set(self, step.timeouts.idle, self._idle_timeout)
        manager.encode_headers(status, headers, False)
        self.overhead = (
            self.chain_time
            + max(0.0, self.sent_at - self.attempt_started - self.connect_wait)
            + (time.monotonic() - head_received)
        )
        if manager.event_stream:
            route = manager.stream_info.route
            self.gap_histogram = self.gateway.metrics.chunk_gap.get(
                (route.name if route is not None else "none",)
            )
        if (
            self.heartbeat is not None
            and manager.event_stream
            and not manager.upstream_coded
            and not manager.done
        ):
            self.heartbeat_timer = self.reactor.callLater(self.heartbeat, self._heartbeat)

    def on_response_data(self, data: bytes, end_stream: bool) -> None:
        if data:
            now = time.monotonic()
            if self.last_data_at:
                if self.gap_histogram is not None:
                    self.gap_histogram.observe(now - self.last_data_at)
            else:
                info = self.manager.stream_info
                info.time_to_first_token = now - info.started
            self.last_data_at = now
        if end_stream:
            self.connection = None
            self.phase = _DONE
            self._cancel_timers()
        else:
            self.data_seen_at = self.deadlines.now
            if self.heartbeat_timer is not None:
                self.heartbeat_timer.reset(self.heartbeat)  # type: ignore[arg-type]
                if data:
                    self.last_data = data
        self.manager.encode_data(data, end_stream)

    def on_read_start(self) -> None:
        self.manager.downstream.hold()

    def on_read_done(self) -> None:
        self.manager.downstream.flush()

    def on_upstream_failure(self, kind: UpstreamFailure, detail: str) -> None:
        connection, self.connection = self.connection, None
        cluster = self.plan[self.plan_index].cluster
        if (
            kind is UpstreamFailure.RESET_BEFORE_RESPONSE
            and connection is not None
            and connection.requests_served > 0
            and not self.retried_stale
        ):
            # A pooled keep-alive connection the upstream had closed while it was idle:
            # the request never reached the upstream, so send it again on a new one.
            self._cancel_timer()
            self.retried_stale = True
            self.manager.stream_info.attempts -= 1
            self.attempts_on_cluster -= 1
            self._attempt(fresh=True)
            return
        message = f"upstream cluster {cluster!r}: {detail}"
        if self.phase is _STREAMING:
            self._cancel_timers()
            self.phase = _DONE
            self.manager.fail_response(502, message, kind.value)
            return
        self._cancel_timer()
        self._attempt_failed(
            _UPSTREAM_FAILURE_KINDS.get(kind, FailureKind.RESET), None, 502, message, kind.value
        )

    # -- timeouts -----------------------------------------------------------------------

    def _first_byte_timeout(self) -> None:
        self.watching = False
        seconds = self.plan[self.plan_index].timeouts.first_byte
        if self.endpoint is not None:
            self.endpoint.health.record_failure(self.reactor.seconds())
        self._time_out(
            f"sent no response within {seconds:g}s (timeouts.first_byte)",
            "upstream_first_byte_timeout",
        )

    def _idle_timeout(self) -> None:
        seconds = self.plan[self.plan_index].timeouts.idle
        # The last chunk came at or after data_seen_at, and before it plus RESOLUTION:
        # the limit is counted from the latest moment it may have come (never early).
        remaining = self.data_seen_at + RESOLUTION + seconds - self.deadlines.now
        if remaining > 0:
            self.deadlines.set(self, remaining, self._idle_timeout)
            return
        self.watching = False
        self._time_out(
            f"sent nothing for {seconds:g}s mid-response (timeouts.idle)", "upstream_idle_timeout"
        )

    def _total_timeout(self, seconds: float) -> None:
        self._time_out(
            f"took longer than {seconds:g}s in all (timeouts.total)", "upstream_total_timeout"
        )

    def _time_out(self, what: str, code: str) -> None:
        """A timeout fired: abandon the exchange and tell the client (not retried)."""
        cluster = self.plan[self.plan_index].cluster
        self.cancel()
        self.manager.fail_response(504, f"upstream cluster {cluster!r} {what}", code, "timeout")

    def _heartbeat(self) -> None:
        """Silence in an event stream: send an SSE comment so proxies in front keep the
        connection open — through the filters' encoders, as if the upstream had sent it,
        so only between two of the upstream's events (otherwise the next beat will)."""
        assert self.heartbeat is not None
        self.heartbeat_timer = self.reactor.callLater(self.heartbeat, self._heartbeat)
        last = self.last_data
        if not last or last.endswith((b"\n\n", b"\r\n\r\n", b"\r\r")):
            self.manager.send_heartbeat()

    # -- cancellation -------------------------------------------------------------------

    def _abort_connection(self) -> None:
        if self.connection is not None:
            connection, self.connection = self.connection, None
            connection.abort()

    def _cancel_timer(self) -> None:
        if self.watching:
            self.watching = False
            self.deadlines.clear(self)
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None

    def _cancel_timers(self) -> None:
        self._cancel_timer()
        for timer in (self.total_timer, self.heartbeat_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self.total_timer = self.heartbeat_timer = None

    def cancel(self) -> None:
        """Abandon the upstream exchange at once (client gone, local reply, total timeout)."""
        self.phase = _DONE
        self._cancel_timers()
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.cancel()
        self.authorizing = None  # shared by other requests: not cancelled, just left
        self._abort_connection()
