"""The second pass of `make test` runs on the mypyc-compiled data path: make sure it
really does (a pure-Python import would silently test the wrong thing)."""

from __future__ import annotations

import importlib
import os

import pytest

COMPILED_MODULES = [
    "filterproxy.http.headers",
    "filterproxy.chain.manager",
    "filterproxy.chain.client_stream",
    "filterproxy.chain.iteration",
    "filterproxy.downstream.exchange",
    "filterproxy.upstream.connection",
    "filterproxy.downstream.http11",
    "filterproxy.upstream.router",
    "filterproxy.extensions.usage.filter",
    "filterproxy.observability.metrics",
    "filterproxy.runtime.deadlines",
    "filterproxy.http.sse",
    "filterproxy.extensions.translate.filter",
    "filterproxy.translate.messages_over_chat",
    "filterproxy.translate.chat_over_messages",
    "filterproxy.extensions.keys.filter",
    "filterproxy.extensions.keys.limits",
    "filterproxy.translate.responses_over_chat",
    "filterproxy.translate.responses_tools",
    "filterproxy.extensions.responses.filter",
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
