"""The resume filter in the real chain (`FilterHarness`) with a clock: the grace period,
a reader taking over, the read decision carried over the relay between workers, and the
budget cap applied only when a config goes in force."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.client import ResponseDone
from twisted.web.test.requesthelper import DummyRequest

from filterproxy.config import ConfigError
from filterproxy.extensions.builtin import load_config, parse_config
from filterproxy.extensions.resume import ResumeFilter
from filterproxy.extensions.resume.origin import OriginState, ResumeFilterConfig
from filterproxy.extensions.resume.relay import (
    DECISION_FIELD,
    RelayedRead,
    _site,
    decision_of,
)
from filterproxy.extensions.resume.streams import ReadOutcome, StreamRegistry
from filterproxy.filters.api import FilterContext
from filterproxy.filters.owner import owner_digest
from filterproxy.filters.resources import Resources
from filterproxy.observability.accesslog import access_record
from filterproxy.observability.metrics import Metrics
from filterproxy.server.service import GatewayService
from filterproxy.testing import FilterHarness

CONFIG = """
clusters: {upstream: {url: "http://upstream.test"}}
routes: [{cluster: upstream, resume: {grace: 2s, keep: 60s}}]
"""
AUTH = {"authorization": "Bearer sk-a"}
SSE = {"content-type": "text/event-stream"}


def delta(n: int) -> bytes:
    return b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"t%d"}}]}\n\n' % n


def configured(resources: Resources, extra: str = "") -> ResumeFilterConfig:
    context = FilterContext(
        config=parse_config(CONFIG + extra), path="filters[0]", environ={}, resources=resources
    )
    config = ResumeFilter.configure({}, context)
    ResumeFilter.activate(config, resources)
    return config


def origin(
    config: ResumeFilterConfig, headers: dict[str, str] | None = None
) -> tuple[FilterHarness, str]:
    """A request whose answer becomes a resumable stream, three events in."""
    h = FilterHarness(ResumeFilter(config))
    h.stream_info.route = parse_config(CONFIG).routes[0]
    h.request(b'{"model": "m", "stream": true}', headers={**AUTH, **(headers or {})})
    h.respond(200, SSE, [delta(1), delta(2), delta(3)], end=False)
    assert h.client.headers is not None
    stream_id = h.client.headers.get("x-stream-id")
    assert stream_id is not None
    return h, stream_id


def test_nobody_back_within_the_grace_period_stops_the_upstream() -> None:
    clock = Clock()
    config = configured(Resources(clock, clock))
    h, stream_id = origin(config)
    assert isinstance(h.filter, ResumeFilter) and h.filter.state is OriginState.LIVE
    h.manager.client_gone()
    assert h.filter.state is OriginState.DETACHED and not h.upstream.cancelled
    h.more([delta(4)], end=False)  # the upstream goes on into the buffer
    clock.advance(1.9)
    assert not h.upstream.cancelled and not h.done
    clock.advance(0.2)
    assert h.upstream.cancelled and h.done
    # What the access log's stream field and the metrics read:
    assert h.stream_info.outcome == "client_gone"
    annotation = access_record(None, h.stream_info, 0.0)["stream"]
    assert annotation["id"] == stream_id and annotation["role"] == "origin"
    assert annotation["expired"] is True and annotation["events"] == 4
    assert annotation["held"] > 0
    assert config.registry.get(stream_id) is None and config.registry.budget.held == 0
    assert clock.getDelayedCalls() == []


def test_the_resume_extension_counts_expiries_and_resumes_in_its_own_metrics() -> None:
    clock = Clock()
    resources = Resources(clock, clock)
    config = configured(resources)
    metrics = Metrics(resources.metrics)  # the service's, scraping what resume declared
    h, stream_id = origin(config)
    reader = FilterHarness(ResumeFilter(config))
    reader.request(
        method="GET",
        path=f"/v1/streams/{stream_id}",
        headers={**AUTH, "last-event-id": f"{stream_id}.1"},
    )
    h.more([delta(4)], end=True)
    assert reader.done
    h2, _ = origin(config)
    h2.manager.client_gone()
    clock.advance(2.1)
    assert h2.done
    gone = FilterHarness(ResumeFilter(config))
    gone.request(method="GET", path="/v1/streams/fps_nothere1", headers=AUTH)
    assert gone.client.status == 410 and gone.done
    assert access_record(None, gone.stream_info, 0.0)["stream"] == {
        "id": "fps_nothere1",
        "role": "resume",
        "outcome": "gone",
        "route": "none",
    }
    scraped = generate_latest(metrics.registry()).decode()
    assert 'filterproxy_stream_resumes_total{outcome="resumed",route="routes[0]"} 1.0' in scraped
    assert 'filterproxy_stream_resumes_total{outcome="gone",route="none"} 1.0' in scraped
    assert 'filterproxy_stream_grace_expiries_total{route="routes[0]"} 1.0' in scraped


def test_a_reader_takes_over_from_the_origins_client_and_gets_the_rest() -> None:
    clock = Clock()
    config = configured(Resources(clock, clock))
    h, stream_id = origin(config)
    reader = FilterHarness(ResumeFilter(config))
    reader.request(
        method="GET",
        path=f"/v1/streams/{stream_id}",
        headers={**AUTH, "last-event-id": f"{stream_id}.1"},
    )
    assert h.client.aborted and not h.upstream.cancelled  # its client closed, not the upstream
    assert reader.client.status == 200
    assert [e.id for e in reader.client.events()] == [f"{stream_id}.3"]  # 2 and 3, folded
    h.more([delta(4)], end=True)
    events = reader.client.events()
    assert [e.id for e in events][-1] == f"{stream_id}.4" and reader.client.ended
    assert access_record(None, reader.stream_info, 0.0)["stream"] == {
        "id": stream_id,
        "role": "resume",
        "outcome": "resumed",
        "route": "routes[0]",
        "after": 1,
        "replayed": 1,
    }
    assert clock.getDelayedCalls()  # kept for resume.keep


# -- a balancer's key in the id --------------------------------------------------------------

REQUEST_ID = "4f1c2a9e-53b0-4b6e-9d1d-0c2f8e7a6b51"


def test_a_stream_id_ends_with_the_affinity_headers_value() -> None:
    clock = Clock()
    config = configured(Resources(clock, clock), "resume_affinity_header: X-Request-ID\n")
    assert config.affinity_header == "x-request-id"
    h, stream_id = origin(config, {"x-request-id": REQUEST_ID})
    assert stream_id.startswith("fps_") and stream_id.endswith("-" + REQUEST_ID)
    assert [e.id for e in h.client.events()] == [f"{stream_id}.{n}" for n in (1, 2, 3)]
    # Read back by its path, and by the same POST again with its Last-Event-ID.
    reader = FilterHarness(ResumeFilter(config))
    reader.request(
        method="GET",
        path=f"/v1/streams/{stream_id}",
        headers={**AUTH, "last-event-id": f"{stream_id}.1"},
    )
    assert reader.client.status == 200
    assert [e.id for e in reader.client.events()] == [f"{stream_id}.3"]
    again = FilterHarness(ResumeFilter(config))
    again.request(
        b'{"model": "m", "stream": true}', headers={**AUTH, "last-event-id": f"{stream_id}.2"}
    )
    assert again.client.status == 200 and not again.upstream.pieces
    assert [e.id for e in again.client.events()] == [f"{stream_id}.3"]


@pytest.mark.parametrize("value", ["", "x" * 65, "a b", "a_b", "a.b", "key/../x"])
def test_a_value_that_cannot_end_an_id_is_left_out(value: str) -> None:
    clock = Clock()
    config = configured(Resources(clock, clock), "resume_affinity_header: x-affinity\n")
    _, stream_id = origin(config, {"x-affinity": value})
    assert "-" not in stream_id and len(stream_id) == 28
    _, stream_id = origin(config)  # no such header at all
    assert "-" not in stream_id and len(stream_id) == 28


def test_without_the_key_an_id_is_as_before_whatever_the_request_carries() -> None:
    clock = Clock()
    config = configured(Resources(clock, clock))
    assert config.affinity_header is None
    h, stream_id = origin(config, {"x-request-id": REQUEST_ID})
    assert "-" not in stream_id and len(stream_id) == 28
    assert [e.id for e in h.client.events()] == [f"{stream_id}.{n}" for n in (1, 2, 3)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("'x request id'", "resume_affinity_header: 'x request id' is not a valid header name"),
        ("authorization", "resume_affinity_header: a credential header"),
        ("x-api-key", "resume_affinity_header: a credential header"),
        ("[x-request-id]", "resume_affinity_header: expected a string"),
    ],
)
def test_a_bad_affinity_header_stops_the_config_naming_the_key(value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(CONFIG + f"resume_affinity_header: {value}\n")
    assert expected in str(raised.value)


def test_a_null_affinity_header_is_none() -> None:
    clock = Clock()
    config = configured(Resources(clock, clock), "resume_affinity_header: null\n")
    assert config.affinity_header is None


# -- the relay between workers --------------------------------------------------------------


class RelayRequest(DummyRequest):
    """A request to the relay, whose header values replace each other as
    `twisted.web.server.Request`'s do."""

    def __init__(self, postpath: list[bytes]) -> None:
        super().__init__(postpath)
        self.transport = StringTransport()

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.responseHeaders.setRawHeaders(name, [value])


class Response:
    """A relay answer as `twisted.web.client.Agent` gives it, from a rendered request."""

    def __init__(self, request: DummyRequest) -> None:
        self.headers = request.responseHeaders
        self.body = b"".join(request.written)
        self.finished = bool(request.finished)

    def deliverBody(self, protocol: Any) -> None:
        protocol.dataReceived(self.body)
        if self.finished:
            from twisted.python.failure import Failure

            protocol.connectionLost(Failure(ResponseDone()))


class LoopbackRelay:
    """The asking worker's relay client, answered by the holder's relay server in
    memory (the same signing and query as over the socket)."""

    def __init__(self, holder: StreamRegistry) -> None:
        self.holder = holder
        self.site = _site(holder)

    def read(
        self,
        port: int,
        method: str,
        stream_id: str,
        after: int,
        owner: str,
        body: str,
        counted: bool,
    ) -> defer.Deferred[RelayedRead]:
        by = "count" if counted else "id"
        request = RelayRequest([stream_id.encode()])
        request.method = method.encode()
        request.args = {
            b"after": [str(after).encode()],
            b"by": [by.encode()],
            b"owner": [owner.encode()],
            b"body": [body.encode()],
            b"sig": [self.holder.sign(method, stream_id, str(after), by, owner, body).encode()],
        }
        streams = self.site.resource.getStaticEntity(b"relay").getStaticEntity(b"streams")
        streams.render(request)
        return defer.succeed(RelayedRead(Response(request)))


@pytest.fixture
def workers() -> tuple[ResumeFilterConfig, ResumeFilterConfig]:
    """Two workers' configs: the first holds the streams, the second is asked."""
    clock = Clock()
    holder = configured(Resources(clock, clock))
    asked_resources = Resources(clock, clock)
    asked = configured(asked_resources)
    holder.registry.serve_relay(1001, b"secret")
    asked.registry.serve_relay(1002, b"secret")
    relay: Any = LoopbackRelay(holder.registry)
    return holder, ResumeFilterConfig(asked.registry, relay, asked.max_event_bytes)


def ask(config: ResumeFilterConfig, method: str, path: str, **headers: str) -> FilterHarness:
    h = FilterHarness(ResumeFilter(config))
    h.request(method=method, path=path, headers={**AUTH, **headers})
    return h


def test_the_relay_names_the_holders_decision(
    workers: tuple[ResumeFilterConfig, ResumeFilterConfig],
) -> None:
    for outcome in ReadOutcome:
        assert decision_of([outcome.value.encode()]) is outcome
    assert decision_of(None) is None and decision_of([b"200"]) is None
    holder, _ = workers
    _, stream_id = origin(holder)
    relay = LoopbackRelay(holder.registry)
    owner = owner_digest(None, AUTH["authorization"])
    answers = {
        ("GET", 1, owner): ReadOutcome.REPLAY,
        ("GET", 7, owner): ReadOutcome.GONE,
        ("GET", 1, "someone else"): ReadOutcome.GONE,
        ("DELETE", 0, "someone else"): ReadOutcome.NOT_FOUND,
        ("DELETE", 0, owner): ReadOutcome.CANCEL,
    }
    for (method, after, who), outcome in answers.items():
        read = relay.read(1001, method, stream_id, after, who, "", False)
        answer: RelayedRead = read.result  # type: ignore[attr-defined]
        assert answer.outcome is outcome, (method, after, who)
        assert answer.response.headers.getRawHeaders(DECISION_FIELD) == [outcome.value.encode()]


def test_a_read_that_reaches_another_worker_is_replayed_from_the_holder(
    workers: tuple[ResumeFilterConfig, ResumeFilterConfig],
) -> None:
    holder, asked = workers
    h, stream_id = origin(holder)
    assert asked.registry.elsewhere(stream_id) == 1001
    h.more([delta(4)], end=True)  # over: the relayed answer ends with it
    reader = ask(asked, "GET", f"/v1/streams/{stream_id}", **{"last-event-id": f"{stream_id}.2"})
    assert reader.client.status == 200 and reader.client.ended
    assert [e.id for e in reader.client.events()] == [f"{stream_id}.4"]
    annotation = access_record(None, reader.stream_info, 0.0)["stream"]
    assert annotation["outcome"] == "resumed" and annotation["replayed"] == 1
    ended = ask(asked, "GET", f"/v1/streams/{stream_id}", **{"last-event-id": f"{stream_id}.4"})
    assert ended.client.status == 204


@pytest.mark.parametrize(
    ("method", "path_of", "headers", "status", "code"),
    [
        ("GET", "{id}x", {}, 502, "stream_unavailable"),  # a forged id: unsigned, refused
        ("DELETE", "{id}", {}, 200, None),
        ("GET", "{id}", {"last-event-id": "{id}.9"}, 410, "stream_gone"),
    ],
)
def test_each_decision_of_the_holder_is_answered_by_the_asked_worker(
    workers: tuple[ResumeFilterConfig, ResumeFilterConfig],
    method: str,
    path_of: str,
    headers: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    holder, asked = workers
    h, stream_id = origin(holder)
    path = "/v1/streams/" + path_of.format(id=stream_id)
    given = {k: v.format(id=stream_id) for k, v in headers.items()}
    reader = ask(asked, method, path, **given)
    if path_of != "{id}":
        # Not signed for another worker: this one's own (unknown) stream.
        assert reader.client.status == 410
        return
    assert reader.client.status == status
    if code is not None:
        assert json.loads(reader.client.body)["error"]["code"] == code
    if method == "DELETE":
        assert json.loads(reader.client.body)["deleted"] is True
        assert h.upstream.cancelled and holder.registry.get(stream_id) is None


def test_another_owner_and_another_body_are_told_so_over_the_relay(
    workers: tuple[ResumeFilterConfig, ResumeFilterConfig],
) -> None:
    holder, asked = workers
    _, stream_id = origin(holder)
    other = FilterHarness(ResumeFilter(asked))
    other.request(method="DELETE", path=f"/v1/streams/{stream_id}", headers={"x-api-key": "b"})
    assert other.client.status == 404
    resent = FilterHarness(ResumeFilter(asked))
    resent.request(b'{"model": "other"}', headers={**AUTH, "last-event-id": f"{stream_id}.1"})
    assert resent.client.status == 409
    again = FilterHarness(ResumeFilter(asked))
    again.request(
        b'{"model": "m", "stream": true}', headers={**AUTH, "last-event-id": f"{stream_id}.1"}
    )
    assert again.client.status == 200 and not again.upstream.pieces and again.upstream.cancelled
    stream = holder.registry.get(stream_id)
    assert stream is not None and stream.owner == owner_digest(None, AUTH["authorization"])
    assert stream.body_hash == hashlib.sha256(b'{"model": "m", "stream": true}').digest()


# -- a config's process-wide change waits until it is in force ------------------------------


def write_config(path: Path, buffers: int, access_log: Path) -> None:
    path.write_text(
        "listeners: ['tcp:0:interface=127.0.0.1']\n"
        + CONFIG
        + f"resume_buffers: {buffers}\naccess_log: {access_log}\n"
    )


def test_a_reload_rejected_after_the_chain_was_built_leaves_the_budget_cap(
    tmp_path: Path,
) -> None:
    source = tmp_path / "gateway.yaml"
    write_config(source, 100_000, tmp_path / "access.log")
    clock = Clock()
    resources = Resources(clock, clock)
    service = GatewayService(load_config(str(source)), reactor=clock, resources=resources)
    registry = resources.get(StreamRegistry, StreamRegistry.from_resources)
    assert registry.budget.cap == 100_000
    # The access log cannot be opened: rejected after the chain was built.
    write_config(source, 200_000, tmp_path / "missing" / "access.log")
    assert service.reload() is not None
    assert registry.budget.cap == 100_000
    write_config(source, 300_000, tmp_path / "access.log")
    assert service.reload() is None
    assert registry.budget.cap == 300_000
    scraped = generate_latest(service.metrics.registry()).decode()
    assert "\nfilterproxy_resume_buffer_bytes 0.0\n" in scraped
