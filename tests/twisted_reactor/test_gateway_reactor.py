"""Twisted's own reactor tests — its reactor-builder test cases for TCP, time and the
reactor core — run against `GatewayReactor`.

`filterproxy.runtime._epoll` replaces the epoll reactor's main loop and its TCP read path, and
leans on attributes Twisted keeps private (`filterproxy.runtime._private_apis` lists them). A
Twisted release that changes what those rely on fails these tests, not a user's gateway.
"""

from __future__ import annotations

import unittest
from collections.abc import Callable
from typing import Any

from twisted.internet.test import test_core, test_tcp, test_time

REACTOR = "filterproxy.runtime._epoll.GatewayReactor"

#: Tests of behaviour GatewayReactor leaves out on purpose, and why.
DIFFERENCES = {
    "test_logPrefix": (
        "GatewayReactor dispatches reads without Twisted's legacy logging context "
        "(filterproxy.runtime.reactor: about 1 µs per event), so a line logged through "
        "twisted.python.log inside dataReceived carries no logPrefix; the gateway logs "
        "through twisted.logger namespaces instead"
    ),
}


def _skipped(reason: str) -> Callable[[Any], None]:
    @unittest.skip(reason)
    def test(self: Any) -> None:
        pass

    return test


BUILDERS: list[Any] = [
    test_tcp.TCP4ClientTestsBuilder,
    test_tcp.TCP6ClientTestsBuilder,
    test_tcp.TCPPortTestsBuilder,
    test_tcp.TCPFDPortTestsBuilder,
    test_tcp.TCPConnectionTestsBuilder,
    test_tcp.TCP4ConnectorTestsBuilder,
    test_tcp.TCP6ConnectorTestsBuilder,
    test_tcp.TCPTransportTestsBuilder,
    test_tcp.AdoptStreamConnectionTestsBuilder,
    test_tcp.TestBindAddressBuilder,
    test_tcp.AbortConnectionTests,
    test_time.TimeTestsBuilder,
    test_core.SystemEventTestsBuilder,
]


def _for_gateway_reactor(builder: Any) -> dict[str, Any]:
    """*builder*'s test cases, made for `GatewayReactor` only."""
    attributes: dict[str, Any] = {"_reactors": [REACTOR]}
    for name, reason in DIFFERENCES.items():
        if hasattr(builder, name):
            attributes[name] = _skipped(reason)
    only_ours = type(builder.__name__, (builder,), attributes)
    only_ours.__module__ = __name__
    return only_ours.makeTestCaseClasses()  # type: ignore[no-any-return]


for _builder in BUILDERS:
    globals().update(_for_gateway_reactor(_builder))
del _builder
