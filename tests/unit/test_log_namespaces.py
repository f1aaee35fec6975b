"""Every module's log events carry a namespace of their own — in the compiled build too,
where `Logger()` cannot infer it from a calling frame (it found ``importlib._bootstrap``).
JSON logs and log filters select on the namespace, so a module keeps the namespace it
had when it moves (the name users filter on is not the module's path)."""

from __future__ import annotations

import importlib

import pytest

#: Each module and the namespace of its events.
MODULES = {
    "filterproxy.server.admin": "filterproxy.admin",
    "filterproxy.runtime.deadlines": "filterproxy.deadlines",
    "filterproxy.downstream.h2": "filterproxy.downstream.h2",
    "filterproxy.downstream.http11": "filterproxy.downstream.http11",
    "filterproxy.chain.manager": "filterproxy.filters.manager",
    "filterproxy.demo.mock_upstream": "filterproxy.mock_upstream",
    "filterproxy.server.sdnotify": "filterproxy.sdnotify",
    "filterproxy.server.service": "filterproxy.service",
    "filterproxy.upstream.h2": "filterproxy.upstream.h2",
    "filterproxy.upstream.pool": "filterproxy.upstream.pool",
    "filterproxy.upstream.router": "filterproxy.upstream.router",
    "filterproxy.server.workers": "filterproxy.workers",
}


@pytest.mark.parametrize(("name", "namespace"), MODULES.items())
def test_a_modules_log_events_carry_its_namespace(name: str, namespace: str) -> None:
    assert importlib.import_module(name).log.namespace == namespace


def test_the_reactors_events_carry_the_reactors_name() -> None:
    from filterproxy.runtime import _epoll

    assert _epoll._log.namespace == "filterproxy.reactor"
