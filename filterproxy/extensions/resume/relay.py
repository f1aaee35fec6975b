"""The workers' relay: how a resume that reaches one worker is served by another.

With ``--workers``, the kernel hands each new connection to any worker, so a client that
comes back for a resumable stream may reach one that does not hold it. Each worker with
resumable routes therefore also listens on a loopback port of its own, and puts that
port in its streams' ids, signed with a secret its supervisor gave every worker
(`filterproxy.extensions.resume.streams.StreamRegistry`). The worker a resume reaches
checks the signature, asks the holder over this relay — the client's owner digest, the
event it saw (or the chunks it counted), its body's digest, all signed — and passes the
answer on as it comes. The relay speaks plain HTTP/1.1 on 127.0.0.1 and answers only
signed requests.

The holder decides the read (`decide_read`, as for a reader of its own) and names the
decision in the answer's ``x-read-decision`` field (a `ReadOutcome` value); the asking
worker acts on that, as it would on its own decision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from filterproxy.extensions.resume.streams import (
    ReadOutcome,
    ResumableStream,
    StreamRegistry,
    decide_read,
)

if TYPE_CHECKING:
    from filterproxy.filters.resources import Resources

__all__ = ["DECISION_FIELD", "RelayClient", "RelayServer", "RelayedRead", "decision_of"]

log = Logger(namespace="filterproxy.relay")

#: The answer's field that names the holder's `ReadOutcome`.
DECISION_FIELD = b"x-read-decision"


class _WebReader:
    """A stream's reader that is another worker, over the relay."""

    def __init__(self, request: Any, stream: ResumableStream) -> None:
        self.request = request
        self.stream = stream
        self.done = False
        request.notifyFinish().addBoth(self._ended)

    def _ended(self, _: object) -> None:
        self.done = True
        self.stream.detach(self)

    def push(self, data: bytes) -> None:
        if not self.done:
            self.request.write(data)

    def finish(self, complete: bool) -> None:
        if self.done:
            return
        if complete:
            self.request.finish()
        else:
            self.request.transport.abortConnection()

    def taken_over(self) -> None:
        if not self.done:
            self.request.transport.abortConnection()


def _body_hash(text: str) -> bytes | None:
    """The digest a relayed re-sent request names (hex), or None for a GET's none."""
    if not text:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""  # matches no stream's body


def _site(registry: StreamRegistry) -> Any:
    from twisted.web import server
    from twisted.web.resource import Resource

    class Streams(Resource):
        isLeaf = True

        def render(self, request: server.Request) -> bytes | int:
            def arg(name: bytes) -> str:
                values = request.args.get(name) if request.args else None
                return values[0].decode() if values else ""

            method = request.method.decode()
            stream_id = request.postpath[-1].decode() if request.postpath else ""
            after, by, owner, body = arg(b"after"), arg(b"by"), arg(b"owner"), arg(b"body")
            if arg(b"sig") != registry.sign(method, stream_id, after, by, owner, body):
                request.setResponseCode(403)
                return b"unsigned"
            request.setHeader(b"content-type", b"application/json")
            stream = registry.get(stream_id)
            decision = decide_read(
                stream,
                method=method,
                owner=owner,
                after=int(after or 0),
                counted=by == "count",
                body_hash=_body_hash(body),
            )
            request.setHeader(DECISION_FIELD, decision.outcome.value.encode())
            outcome = decision.outcome
            if outcome is ReadOutcome.CANCEL and stream is not None:
                stream.cancel()
            if stream is None or outcome not in (ReadOutcome.REPLAY, ReadOutcome.ENDED):
                return b""
            events = stream.caught_up(decision)
            if outcome is ReadOutcome.ENDED:
                return b""
            request.setHeader(b"content-type", stream.content_type.encode())
            request.setHeader(b"x-replayed", str(len(events)).encode())
            if stream.config.gzip:
                request.setHeader(b"x-gzip", b"1")  # the route offers gzip to its clients
            request.write(b"".join(events))
            if stream.done:
                request.finish()
            else:
                stream.attach(_WebReader(request, stream))
            return server.NOT_DONE_YET

    root = Resource()
    relay = Resource()
    root.putChild(b"relay", relay)
    relay.putChild(b"streams", Streams())
    return server.Site(root)


class RelayServer:
    """This worker's relay listener (one per process, kept in its `Resources`)."""

    def __init__(self, reactor: Any, registry: StreamRegistry) -> None:
        self.reactor = reactor
        self.registry = registry
        self.port: Any = None

    @classmethod
    def started(cls, resources: Resources, registry: StreamRegistry, secret: str) -> RelayServer:
        """A relay listener for *registry*, starting to listen now."""
        relay = cls(resources.reactor, registry)
        relay.start(secret)
        return relay

    def start(self, secret: str) -> defer.Deferred[None]:
        """Listen on a loopback port for the other workers; this worker's stream ids
        carry it from then on."""
        site = _site(self.registry)
        site.noisy = False
        site.log = lambda request: None  # the gateway's own access log says what matters

        def listening(port: Any) -> None:
            self.port = port
            self.registry.serve_relay(port.getHost().port, secret.encode())
            log.info("resume relay for the other workers on port {port}", port=port.getHost().port)

        # Imported here: Twisted's endpoints import its TCP and TLS support, which a
        # config without TLS (and without workers) never loads (see runtime.lazytls).
        from twisted.internet.endpoints import serverFromString

        endpoint = serverFromString(self.reactor, "tcp:0:interface=127.0.0.1")
        d: defer.Deferred[Any] = endpoint.listen(site)
        return d.addCallbacks(
            listening,
            lambda f: log.error(
                "cannot start the resume relay: {error}", error=f.getErrorMessage()
            ),
        )

    def close(self) -> defer.Deferred[Any] | None:
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


class RelayedRead:
    """The holder's answer to a relayed read: its decision, and the head of a replay."""

    def __init__(self, response: Any) -> None:
        self.response = response
        headers = response.headers
        #: The holder's decision; None when it gave none (it refused the request).
        self.outcome = decision_of(headers.getRawHeaders(DECISION_FIELD))
        replayed = headers.getRawHeaders(b"x-replayed") or [b"0"]
        self.replayed = int(replayed[0])
        kind = headers.getRawHeaders(b"content-type") or [b"text/event-stream"]
        self.content_type = kind[0].decode()
        self.gzip = headers.getRawHeaders(b"x-gzip") is not None


def decision_of(values: list[bytes] | None) -> ReadOutcome | None:
    """The `ReadOutcome` an answer's `DECISION_FIELD` names, or None."""
    if not values or values[0] not in _OUTCOMES:
        return None
    return _OUTCOMES[values[0]]


_OUTCOMES = {outcome.value.encode(): outcome for outcome in ReadOutcome}


class RelayClient:
    """Asks the worker that holds a stream (one per process, in its `Resources`)."""

    def __init__(self, resources: Resources, registry: StreamRegistry) -> None:
        #: Where the reactor is (looked up when a request is relayed).
        self.resources = resources
        self.registry = registry

    @staticmethod
    def from_resources(resources: Resources) -> RelayClient:
        return RelayClient(resources, resources.get(StreamRegistry, StreamRegistry.from_resources))

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
        """Ask the worker on relay *port* for *stream_id* (as *owner*; *after* counts
        chunks when *counted*; *body* is a re-sent request's digest, in hex)."""
        from twisted.web.client import Agent

        by = "count" if counted else "id"
        query = urlencode(
            {
                "after": str(after),
                "by": by,
                "owner": owner,
                "body": body,
                "sig": self.registry.sign(method, stream_id, str(after), by, owner, body),
            }
        )
        url = f"http://127.0.0.1:{port}/relay/streams/{stream_id}?{query}"
        d: defer.Deferred[Any] = Agent(self.resources.reactor).request(
            method.encode(), url.encode()
        )
        return d.addCallback(RelayedRead)


class Pipe(Protocol):
    """Another worker's answer, passed on to a reader as it comes."""

    def __init__(self, push: Any, finish: Any) -> None:
        self.push = push
        self.finish = finish

    def dataReceived(self, data: bytes) -> None:
        self.push(data)

    def connectionLost(self, reason: Any = None) -> None:
        from twisted.web.client import ResponseDone

        self.finish(reason is not None and reason.check(ResponseDone) is not None)


class Discard(Protocol):
    def dataReceived(self, data: bytes) -> None:
        pass
