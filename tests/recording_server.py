"""What the tests' provider stand-ins (chat_server.py, messages_server.py) share: each
request is recorded for ``GET /control/last`` (path, headers, JSON body) and counted for
``/control/count``; the exact bytes of the last answer are ``/control/sent``. Each runs
as its own process and prints ``PORT <n>`` when listening."""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import reactor
from twisted.web import server
from twisted.web.resource import Resource

LAST: dict[str, Any] = {}
COUNT = [0]
SENT = [b""]


def record(request: server.Request) -> dict[str, Any]:
    """The request's JSON body, after recording the request."""
    body = json.loads(request.content.read())  # type: ignore[union-attr]
    COUNT[0] += 1
    LAST.clear()
    LAST.update(
        path=request.uri.decode(),
        headers={
            k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()
        },
        body=body,
    )
    return body  # type: ignore[no-any-return]


class Control(Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        if request.path == b"/control/sent":
            return SENT[0]
        request.setHeader(b"content-type", b"application/json")
        if request.path == b"/control/count":
            return json.dumps(COUNT[0]).encode()
        return json.dumps(LAST).encode()


def serve(api: type[Resource]) -> None:
    """Serve *api* (and ``/control``) on a free port until killed."""

    class Root(Resource):
        def getChild(self, path: bytes, request: server.Request) -> Resource:
            return Control() if path == b"control" else api()

    port = reactor.listenTCP(0, server.Site(Root()), interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"PORT {port.getHost().port}", flush=True)
    sys.stdout.flush()
    reactor.run()  # type: ignore[attr-defined]
