"""The workers' relay: how a resume that reaches one worker is served by another.

With ``--workers``, the kernel hands each new connection to any worker, so a client that
comes back for a resumable stream may reach one that does not hold it. Each worker with
resumable routes therefore also listens on a loopback port of its own, and puts that
port in its streams' ids, signed with a secret its supervisor gave every worker
(`filterproxy.filters.resume.StreamRegistry`). The worker a resume reaches checks the
signature, asks the holder over this relay — the client's owner digest, the event it
saw (or the chunks it counted), its body's digest, all signed — and passes the answer on
as it comes. The relay speaks plain HTTP/1.1 on 127.0.0.1 and answers only signed
requests.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from filterproxy.filters.resume import ResumableStream, StreamRegistry, replay

__all__ = ["start_relay"]

log = Logger(namespace="filterproxy.relay")


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


def _resource(registry: StreamRegistry) -> Any:
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
            if stream is not None and stream.owner != owner:
                stream = None
            if method == "DELETE":
                if stream is None:
                    request.setResponseCode(404)
                    return b""
                stream.cancel()
                return b""
            if stream is None:
                request.setResponseCode(410)
                return b""
            if body and stream.body_hash.hex() != body:
                request.setResponseCode(409)
                return b""
            events = replay(stream, int(after or 0), counted=by == "count")
            if events is None:
                request.setResponseCode(410)
                return b""
            if stream.done and not events:
                request.setResponseCode(204)
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


def start_relay(reactor: Any, registry: StreamRegistry, secret: str) -> None:
    """Listen on a loopback port for the other workers; this worker's stream ids carry
    it from then on."""
    site = _resource(registry)
    site.noisy = False
    site.log = lambda request: None  # the gateway's own access log says what matters

    def listening(port: Any) -> None:
        registry.serve_relay(port.getHost().port, secret.encode())
        log.info("resume relay for the other workers on port {port}", port=port.getHost().port)

    endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
    endpoint.listen(site).addCallbacks(
        listening,
        lambda f: log.error("cannot start the resume relay: {error}", error=f.getErrorMessage()),
    )
