"""The admin listener's HTTP/1.1 handling: keep-alive, pipelining, bodies, bad requests,
limits and idle connections (the endpoints themselves are tested over real sockets in
tests/integration/test_operations.py)."""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from filterproxy.config import ConfigError
from filterproxy.filters.admin import AdminError, AdminReply, AdminRequest, AdminRoutes
from filterproxy.server.admin import (
    IDLE_TIMEOUT,
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    AdminConnection,
    AdminFactory,
    _Endpoint,
    _json,
)


def connect() -> tuple[AdminConnection, StringTransport, Clock, list[str]]:
    clock = Clock()
    calls: list[str] = []

    def reload() -> tuple[int, bytes, bytes]:
        calls.append("reload")
        return _json(200, {"status": "reloaded"})

    factory = AdminFactory(
        {
            b"/healthz": _Endpoint(get=lambda: _json(200, {"status": "ok"})),
            b"/reload": _Endpoint(post=reload),
            b"/broken": _Endpoint(get=lambda: 1 // 0),  # type: ignore[arg-type, return-value]
        },
        clock,
    )
    connection = factory.buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)
    return connection, transport, clock, calls


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split *raw* into (status, headers, body) by Content-Length."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        length = int(headers.get("content-length", "0"))
        status = int(lines[0].split()[1])
        if status == 100:
            out.append((status, headers, b""))
            raw = rest
            continue
        out.append((status, headers, rest[:length]))
        raw = rest[length:]
    return out


def test_keep_alive_answers_request_after_request_on_one_connection() -> None:
    connection, transport, _, _ = connect()
    connection.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    connection.dataReceived(b"GET /healthz?probe=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    got = responses(transport.value())
    assert [status for status, _, _ in got] == [200, 200]
    assert json.loads(got[1][2]) == {"status": "ok"}
    assert got[0][1]["cache-control"] == "no-store"
    assert not transport.disconnecting


def test_pipelined_requests_are_answered_in_order() -> None:
    connection, transport, _, calls = connect()
    connection.dataReceived(
        b"POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert [status for status, _, _ in responses(transport.value())] == [200, 404, 200]
    assert calls == ["reload"]


def test_a_body_sent_in_pieces_and_chunked_is_read_before_the_answer() -> None:
    connection, transport, _, calls = connect()
    connection.dataReceived(
        b"POST /reload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    connection.dataReceived(b"3\r\nabc\r\n")
    assert transport.value() == b"" and calls == []
    connection.dataReceived(b"0\r\n\r\n")
    assert [status for status, _, _ in responses(transport.value())] == [200]


def test_http10_and_connection_close_end_the_connection_after_the_answer() -> None:
    for request in (
        b"GET /healthz HTTP/1.0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ):
        connection, transport, _, _ = connect()
        connection.dataReceived(request + b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        got = responses(transport.value())
        assert [(status, headers["connection"]) for status, headers, _ in got] == [(200, "close")]
        assert transport.disconnecting


def test_an_upgrade_is_declined_by_answering_in_http11_and_closing() -> None:
    for request in (
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
        b"POST /reload HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 2\r\n\r\n{}",
    ):
        connection, transport, _, _ = connect()
        connection.dataReceived(request)
        [(status, headers, _)] = responses(transport.value())
        assert (status, headers["connection"]) == (200, "close")
        assert transport.disconnecting


def test_head_states_the_length_without_the_body() -> None:
    connection, transport, _, _ = connect()
    connection.dataReceived(b"HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert body == b""
    assert b"content-length: %d" % len(_json(200, {"status": "ok"})[2]) in head


def test_wrong_method_unknown_path_and_a_failing_handler() -> None:
    connection, transport, _, _ = connect()
    connection.dataReceived(
        b"GET /reload HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /broken HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    (s1, h1, _), (s2, _, b2), (s3, _, b3) = responses(transport.value())
    assert (s1, h1["allow"]) == (405, "POST")
    assert s2 == 404 and "endpoints" in json.loads(b2)
    assert s3 == 500 and "log" in json.loads(b3)["error"]
    assert not transport.disconnecting


def test_a_malformed_request_gets_400_and_the_close() -> None:
    connection, transport, _, _ = connect()
    connection.dataReceived(b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n")
    [(status, headers, body)] = responses(transport.value())
    assert status == 400 and headers["connection"] == "close"
    assert "invalid HTTP request" in json.loads(body)["error"]
    assert transport.disconnecting


def test_an_oversized_head_or_body_is_refused() -> None:
    connection, transport, _, _ = connect()
    connection.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
    connection.dataReceived(b"X-Filler: " + b"a" * MAX_HEAD_BYTES + b"\r\n")
    [(status, _, body)] = responses(transport.value())
    assert status == 431 and str(MAX_HEAD_BYTES) in json.loads(body)["error"]
    assert transport.disconnecting

    connection, transport, _, calls = connect()
    connection.dataReceived(
        b"POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 10)
    )
    connection.dataReceived(b"x" * (MAX_BODY_BYTES + 10))
    [(status, _, body)] = responses(transport.value())
    assert status == 413 and calls == []
    assert transport.disconnecting


def test_expect_continue_is_answered_before_the_body() -> None:
    connection, transport, _, _ = connect()
    connection.dataReceived(
        b"POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    connection.dataReceived(b"{}")
    assert [status for status, _, _ in responses(transport.value())] == [100, 200]


def test_an_idle_connection_is_closed_and_activity_keeps_it_open() -> None:
    connection, transport, clock, _ = connect()
    clock.advance(IDLE_TIMEOUT - 1)
    connection.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    clock.advance(IDLE_TIMEOUT - 1)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting
    connection.connectionLost(None)
    assert clock.getDelayedCalls() == []


# -- management routes (`filterproxy.filters.admin`) ----------------------------------------

TOKEN = "s3cret-admin-token"


def managed(
    token: str | None = TOKEN,
) -> tuple[AdminConnection, StringTransport, AdminRoutes, list[Deferred[AdminReply]]]:
    """A connection to a factory with management routes: ``GET /things/{name}`` answers
    later (when the test fires the Deferred it left in the list), ``POST /things`` at
    once with what its body said."""
    routes = AdminRoutes()
    waiting: list[Deferred[AdminReply]] = []

    def later(request: AdminRequest) -> Deferred[AdminReply]:
        d: Deferred[AdminReply] = Deferred()
        waiting.append(d)
        return d

    def create(request: AdminRequest) -> AdminReply:
        body = request.json_object()
        if "name" not in body:
            raise AdminError(400, "name: missing")
        if body["name"] == "taken":
            raise AdminError(409, "a thing named 'taken' exists")
        if body["name"] == "bad":
            raise ConfigError("limits.rpm", "expected a whole number")
        if body["name"] == "boom":
            raise RuntimeError("a bug")
        return AdminReply.json({"created": body["name"], "query": dict(request.query)}, 201)

    routes.add("GET", "/things/{name}", later, owner="test")
    routes.add("POST", "/things", create, owner="test")
    factory = AdminFactory(
        {b"/healthz": _Endpoint(get=lambda: _json(200, {"status": "ok"}))},
        Clock(),
        routes,
        lambda: token,
    )
    connection = factory.buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)
    return connection, transport, routes, waiting


def request(method: str, path: str, body: bytes = b"", token: str | None = TOKEN) -> bytes:
    auth = b"Authorization: Bearer %s\r\n" % token.encode() if token else b""
    return b"%s %s HTTP/1.1\r\nHost: a\r\n%sContent-Length: %d\r\n\r\n%s" % (
        method.encode(),
        path.encode(),
        auth,
        len(body),
        body,
    )


def test_a_later_answer_keeps_the_order_of_pipelined_requests() -> None:
    connection, transport, _, waiting = managed()
    connection.dataReceived(
        request("GET", "/things/first")
        + request("POST", "/things?x=1", b'{"name": "second"}')
        + b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
        + request("GET", "/things/fourth%20one")
    )
    assert transport.value() == b""  # the first answer is not ready: nothing is written
    waiting[1].callback(AdminReply.json({"thing": "fourth"}))
    assert transport.value() == b""
    waiting[0].callback(AdminReply.json({"thing": "first"}))
    got = responses(transport.value())
    assert [status for status, _, _ in got] == [200, 201, 200, 200]
    assert json.loads(got[0][2]) == {"thing": "first"}
    assert json.loads(got[1][2]) == {"created": "second", "query": {"x": ["1"]}}
    assert json.loads(got[3][2]) == {"thing": "fourth"}
    assert not transport.disconnecting


def test_the_path_parameters_are_decoded() -> None:
    routes = AdminRoutes()
    routes.add("GET", "/keys/{name}/spend", lambda r: AdminReply.json(r.params), owner="t")
    route, params, _ = routes.find("GET", "/keys/al%40ce/spend")
    assert route is not None and params == {"name": "al@ce"}
    assert routes.find("GET", "/keys/alice/spend/more")[0] is None
    assert routes.find("DELETE", "/keys/alice/spend")[2] == ["GET", "HEAD"]


def test_a_client_that_leaves_before_its_answer_gets_nothing() -> None:
    connection, transport, _, waiting = managed()
    connection.dataReceived(request("GET", "/things/a"))
    connection.connectionLost(None)
    waiting[0].callback(AdminReply.json({"late": True}))
    assert transport.value() == b""


def test_a_close_after_a_later_answer_waits_for_it() -> None:
    connection, transport, _, waiting = managed()
    connection.dataReceived(
        request("GET", "/things/a").replace(b"Host: a\r\n", b"Host: a\r\nConnection: close\r\n")
        + b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert not transport.disconnecting
    waiting[0].callback(AdminReply.json({}))
    [(status, headers, _)] = responses(transport.value())
    assert (status, headers["connection"]) == (200, "close")
    assert transport.disconnecting


def test_management_routes_need_the_admin_token() -> None:
    connection, transport, _, waiting = managed()
    connection.dataReceived(
        request("POST", "/things", b'{"name": "x"}', token=None)
        + request("POST", "/things", b'{"name": "x"}', token="wrong")
        + request("POST", "/things", b'{"name": "x"}', token=TOKEN + "x")
        + b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    got = responses(transport.value())
    assert [status for status, _, _ in got] == [401, 401, 401, 200]
    assert all(
        headers["www-authenticate"].startswith(("Bearer", "Basic")) for _, headers, _ in got[:3]
    )
    assert waiting == []

    connection, transport, _, _ = managed(token=None)
    connection.dataReceived(request("POST", "/things", b'{"name": "x"}'))
    [(status, _, body)] = responses(transport.value())
    assert status == 403 and "admin.token" in json.loads(body)["error"]


def test_refusals_name_what_is_wrong() -> None:
    connection, transport, _, _ = managed()
    connection.dataReceived(
        request("POST", "/things", b"{not json")
        + request("POST", "/things", b"[1]")
        + request("POST", "/things", b"{}")
        + request("POST", "/things", b'{"name": "taken"}')
        + request("POST", "/things", b'{"name": "bad"}')
        + request("POST", "/things", b'{"name": "boom"}')
        + request("DELETE", "/things/a")
        + request("GET", "/nothing/here")
    )
    got = responses(transport.value())
    assert [status for status, _, _ in got] == [400, 400, 400, 409, 400, 500, 405, 404]
    errors = [json.loads(body).get("error") for _, _, body in got]
    assert "not valid JSON" in errors[0]
    assert "JSON object" in errors[1]
    assert errors[2] == "name: missing"
    assert "taken" in errors[3]
    assert errors[4] == "limits.rpm: expected a whole number"
    assert "log" in errors[5] and "bug" not in errors[5]
    assert got[6][1]["allow"] == "GET, HEAD"


def test_a_management_body_is_bounded() -> None:
    connection, transport, _, _ = managed()
    connection.dataReceived(
        b"POST /things HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer %s\r\n"
        b"Content-Length: %d\r\n\r\n" % (TOKEN.encode(), MAX_BODY_BYTES + 1)
    )
    connection.dataReceived(b"x" * (MAX_BODY_BYTES + 1))
    [(status, _, _)] = responses(transport.value())
    assert status == 413 and transport.disconnecting


def test_registering_again_replaces_and_clearing_forgets() -> None:
    routes = AdminRoutes()
    routes.add("GET", "/a", lambda r: AdminReply.json(1), owner="one")
    routes.add("GET", "/a", lambda r: AdminReply.json(2), owner="one")
    routes.add("POST", "/a", lambda r: AdminReply.json(3), owner="two")
    assert len(routes.routes) == 2
    routes.remove("two")
    assert [r.method for r in routes.routes] == ["GET"]
    routes.clear()
    assert not routes.routes
