"""Connection failures map to 502 / 504 with an OpenAI-shaped error."""

from __future__ import annotations

import json

from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from filterproxy.extensions.builtin import parse_config
from filterproxy.server.service import Gateway
from filterproxy.upstream.request import connect_failure_reply

from .harness import ClientSide

CONFIG = """
clusters:
  slow: {url: 'http://127.0.0.1:8000', timeouts: {connect: 3s}, retry: {max_attempts: 1}}
routes: [{cluster: slow}]
"""


def test_connect_timeout_is_504_naming_the_cluster_and_the_limit() -> None:
    reactor = MemoryReactorClock()
    gateway = Gateway(parse_config(CONFIG, environ={}), reactor)
    transport = StringTransport()
    ClientSide(gateway, transport).protocol.dataReceived(
        b"POST /v1/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}"
    )
    assert reactor.tcpClients, "a connection attempt was started"
    assert transport.value() == b""
    reactor.advance(3.01)
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 504 Gateway Timeout")
    document = json.loads(body)
    assert document["error"]["code"] == "upstream_connect_timeout"
    assert "'slow'" in document["error"]["message"] and "3s" in document["error"]["message"]


def test_connect_timeouts_are_retried_up_to_max_attempts_then_504() -> None:
    reactor = MemoryReactorClock()
    config = parse_config(CONFIG.replace("max_attempts: 1", "max_attempts: 3"), environ={})
    gateway = Gateway(config, reactor)
    transport = StringTransport()
    ClientSide(gateway, transport).protocol.dataReceived(
        b"POST /v1/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}"
    )
    for _ in range(40):
        reactor.advance(0.5)
    assert len(reactor.tcpClients) == 3
    assert transport.value().startswith(b"HTTP/1.1 504 Gateway Timeout")


def test_refused_is_502() -> None:
    status, message, code = connect_failure_reply(Failure(error.ConnectionRefusedError()), "openai")
    assert (status, code) == (502, "upstream_connect_refused")
    assert "openai" in message


def test_tls_verification_failure_says_so() -> None:
    failure = Failure(Exception("certificate verify failed: hostname mismatch"))
    status, message, code = connect_failure_reply(failure, "openai")
    assert (status, code) == (502, "upstream_tls_failure")
    assert "certificate verification failed" in message
