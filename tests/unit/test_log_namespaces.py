"""Every module's log events carry the module's name as their namespace — in the compiled
build too, where `Logger()` cannot infer it from a calling frame (it found
``importlib._bootstrap``). JSON logs and log filters select on the namespace."""

from __future__ import annotations

import importlib

import pytest

MODULES = [
    "filterproxy.admin",
    "filterproxy.deadlines",
    "filterproxy.downstream.h2",
    "filterproxy.downstream.http11",
    "filterproxy.filters.manager",
    "filterproxy.mock_upstream",
    "filterproxy.sdnotify",
    "filterproxy.service",
    "filterproxy.upstream.h2",
    "filterproxy.upstream.pool",
    "filterproxy.upstream.router",
    "filterproxy.workers",
]


@pytest.mark.parametrize("name", MODULES)
def test_a_modules_log_events_carry_its_name(name: str) -> None:
    assert importlib.import_module(name).log.namespace == name


def test_the_reactors_events_carry_the_reactors_name() -> None:
    from filterproxy import _epoll

    assert _epoll._log.namespace == "filterproxy.reactor"
