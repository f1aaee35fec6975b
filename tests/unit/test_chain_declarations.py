"""What filters declare of their place in the chain (``requires``, ``precedes``,
``provides``) is checked when the chain is built, and what they can read of the
response (``response_codings``) decides, once, the Accept-Encoding the upstream gets."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import ClassVar

import pytest

from filterproxy.chain.registry import build_chain
from filterproxy.config import ConfigError
from filterproxy.extensions.body_accumulate.filter import BodyAccumulateFilter
from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.header_rewrite.filter import HeaderRewriteFilter
from filterproxy.extensions.resume import ResumeFilter
from filterproxy.extensions.route.filter import RouteFilter
from filterproxy.extensions.translate.filter import TranslateFilter
from filterproxy.extensions.usage.filter import UsageFilter
from filterproxy.filters.api import StreamFilter
from filterproxy.filters.resources import Resources
from filterproxy.testing import FilterHarness

CLUSTERS = """
clusters:
  openai: {url: "http://openai.test"}
  anthropic: {url: "http://anthropic.test", apis: [messages]}
routes:
  - {models: [claude], cluster: anthropic}
  - {cluster: openai, resume: true}
"""


def chain_error(filters: str) -> str:
    with pytest.raises(ConfigError) as raised:
        build_chain(parse_config(CLUSTERS + "filters:\n" + filters, environ={}), Resources())
    return str(raised.value)


def test_translate_before_route_is_refused_with_both_entries_named() -> None:
    # It used to be accepted, and translate then passed everything through.
    message = chain_error("  - type: translate\n  - type: route\n")
    assert message.startswith("filters[0]")
    assert "needs a 'route' filter before it" in message
    assert "put '- type: route' before it" in message


def test_resume_after_a_filter_that_rewrites_the_answer_is_refused() -> None:
    message = chain_error(
        "  - type: body-accumulate\n  - type: route\n  - type: translate\n  - type: resume\n"
    )
    assert message.startswith("filters[3]")
    assert "must come before translate (filters[2])" in message
    assert "numbers the events" in message


def test_responses_after_translate_is_refused() -> None:
    message = chain_error("  - type: route\n  - type: translate\n  - type: responses\n")
    assert message.startswith("filters[2]")
    assert "must come before translate (filters[1])" in message


def test_the_default_chains_keep_every_rule() -> None:
    chain = build_chain(parse_config(CLUSTERS, environ={}), Resources())
    assert [spec.type_name for spec in chain.specs] == [
        "delivery",
        "body-accumulate",
        "resume",
        "responses",
        "route",
        "translate",
        "header-rewrite",
        "usage",
    ]


class NeedsKeys(StreamFilter):
    requires: ClassVar[Mapping[str, str]] = {"keys": "it reads the caller's key"}


def test_a_users_filter_declares_its_requirements_too() -> None:
    message = chain_error(
        "  - type: route\n  - type: tests.unit.test_chain_declarations:NeedsKeys\n"
    )
    assert message.startswith("filters[1]")
    assert "needs a 'keys' filter before it in the chain (it reads the caller's key)" in message


def chat(model: str = "gpt") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()


def sent_encoding(harness: FilterHarness, model: str, accept: str | None) -> str | None:
    headers = {} if accept is None else {"accept-encoding": accept}
    upstream = harness.request(chat(model), headers=headers)
    assert upstream.head is not None
    return upstream.head.headers.get("accept-encoding")


def test_usage_asks_the_upstream_only_for_what_it_can_read() -> None:
    harness = FilterHarness([RouteFilter, UsageFilter], config=parse_config(CLUSTERS, environ={}))
    assert sent_encoding(harness, "gpt", "gzip, br, zstd;q=0.5") == "gzip"


def test_a_client_without_accept_encoding_is_left_so_where_compression_is_readable() -> None:
    harness = FilterHarness([RouteFilter, UsageFilter], config=parse_config(CLUSTERS, environ={}))
    assert sent_encoding(harness, "gpt", None) is None


def test_a_translated_request_asks_for_identity_whatever_the_client_takes() -> None:
    config = parse_config(CLUSTERS, environ={})
    harness = FilterHarness([RouteFilter, TranslateFilter, UsageFilter], config=config)
    assert sent_encoding(harness, "claude", "gzip, deflate") == "identity"


def test_a_resumable_route_gets_identity_even_when_a_header_rule_sets_another() -> None:
    # The header rule runs after the route filter; the codings are settled after
    # every filter, so the resume filter still gets text it can number.
    config = parse_config(
        CLUSTERS.replace(
            "{cluster: openai, resume: true}",
            "{cluster: openai, resume: true, request_headers: {set: {accept-encoding: br}}}",
        ),
        environ={},
    )
    harness = FilterHarness(
        [BodyAccumulateFilter, ResumeFilter, RouteFilter, HeaderRewriteFilter], config=config
    )
    assert sent_encoding(harness, "gpt", "gzip") == "identity"


def test_a_chain_with_no_reader_of_the_response_leaves_the_header_alone() -> None:
    harness = FilterHarness([RouteFilter], config=parse_config(CLUSTERS, environ={}))
    assert harness.manager.shape.reads_codings == ()
    assert sent_encoding(harness, "gpt", "br") == "br"
