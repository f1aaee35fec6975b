"""The second pass of `make test` runs on the mypyc-compiled data path: make sure it
really does (a pure-Python import would silently test the wrong thing)."""

from __future__ import annotations

import importlib
import os

import pytest

COMPILED_MODULES = [
    "filterproxy.http.headers",
    "filterproxy.filters.manager",
    "filterproxy.filters.client",
    "filterproxy.filters.iteration",
    "filterproxy.downstream.exchange",
    "filterproxy.upstream.connection",
    "filterproxy.downstream.http11",
    "filterproxy.upstream.router",
    "filterproxy.filters.usage",
    "filterproxy.metrics",
    "filterproxy.deadlines",
    "filterproxy.http.sse",
    "filterproxy.filters.translate",
    "filterproxy.translate.messages_client",
    "filterproxy.translate.chat_client",
    "filterproxy.filters.keys",
    "filterproxy.limits",
    "filterproxy.translate.responses_client",
    "filterproxy.translate.responses_tools",
    "filterproxy.filters.responses",
    "filterproxy.extensions.resume.framing",
    "filterproxy.extensions.resume.streams",
    "filterproxy.extensions.resume.reader",
    "filterproxy.extensions.resume.origin",
]


@pytest.mark.skipif(os.environ.get("FILTERPROXY_EXPECT_COMPILED") != "1", reason="pure-Python pass")
@pytest.mark.parametrize("name", COMPILED_MODULES)
def test_the_data_path_is_the_compiled_one(name: str) -> None:
    module = importlib.import_module(name)
    assert str(module.__file__).endswith(".so"), module.__file__
