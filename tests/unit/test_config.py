"""Config validation: every bad input stops start-up with a message naming the key path."""

from __future__ import annotations

import pytest

from filterproxy.config import ConfigError, parse_config
from filterproxy.filters.body_accumulate import BodyAccumulateFilter
from filterproxy.filters.header_rewrite import HeaderRewriteFilter
from filterproxy.filters.route import RouteFilter

from .sample_filters import TagFilter

BASE = """
listeners: ["tcp:8080"]
clusters:
  openai:
    url: https://api.openai.com
routes:
  - models: ["gpt-*"]
    cluster: openai
"""


def error_for(text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, environ=environ or {})
    return str(raised.value)


def test_a_minimal_config_gets_the_default_chain_and_defaults() -> None:
    config = parse_config(BASE, environ={})
    assert [f.type_name for f in config.filters] == ["body-accumulate", "route", "header-rewrite"]
    assert isinstance(config.filters[0].create(), BodyAccumulateFilter)
    assert isinstance(config.filters[1].create(), RouteFilter)
    assert isinstance(config.filters[2].create(), HeaderRewriteFilter)
    cluster = config.clusters["openai"]
    assert (cluster.host, cluster.port, cluster.host_header, cluster.scheme) == (
        "api.openai.com",
        443,
        "api.openai.com",
        "https",
    )
    assert cluster.connect_timeout == 5.0 and cluster.tls_verify is True
    assert config.buffer_limit_bytes == 10 * 1024 * 1024


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("clusters: {openai: {url: 'htp://x'}}", "clusters.openai.url: not a URL: 'htp://x'"),
        ("clusters: {openai: {}}", "clusters.openai: missing 'url'"),
        ("clusters: {openai: {url: 'http://x:notaport'}}", "clusters.openai.url: not a URL"),
        (
            "clusters: {openai: {url: 'http://x', connect_timeout: soon}}",
            "clusters.openai.connect_timeout: expected a duration like 30s or 250ms, got 'soon'",
        ),
        (
            "clusters: {openai: {url: 'http://x', max_connections: 0}}",
            "clusters.openai.max_connections: must be at least 1",
        ),
        (
            "clusters: {openai: {url: 'http://x', colour: red}}",
            "clusters.openai.colour: unknown key",
        ),
        (
            "clusters: {openai: {url: 'http://x', tls: {ca_file: /nonexistent.pem}}}",
            "clusters.openai.tls.ca_file: no such file",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nroutes: [{cluster: b}]",
            "routes[0].cluster: unknown cluster 'b'",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nroutes: [{models: [m]}]",
            "routes[0]: missing 'cluster'",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nroutes: [{cluster: a, path_prefix: v1}]",
            "routes[0].path_prefix: must start with '/'",
        ),
        ("clusters: {a: {url: 'http://x'}, b: {url: 'http://y'}}", "routes: no routes defined"),
        ("clusters: {}", "clusters: no clusters defined"),
        (
            "clusters: {a: {url: 'http://x'}}\naliases: {x: y, y: z}",
            "aliases.x: alias points at another alias",
        ),
        ("clusters: [a]", "clusters: expected a mapping"),
        ("listners: []", "listners: unknown key"),
        (
            "clusters: {a: {url: 'http://x', request_headers: {set: {'bad name': v}}}}",
            "clusters.a.request_headers.set.bad name: 'bad name' is not a valid header name",
        ),
        (
            "clusters: {a: {url: 'http://x', request_headers: {set: {x-key: \"a\\r\\nb\"}}}}",
            "clusters.a.request_headers.set.x-key: header values cannot contain CR, LF or NUL",
        ),
        (
            "clusters: {a: {url: 'http://${HOST}'}}",
            "clusters.a.url: environment variable HOST is not set",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nfilters: [{type: body-accumulate, max_request_bytes: lots}]",
            "filters[0].max_request_bytes: expected a whole number",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nfilters: [{type: body-accumulate}]",
            "filters: the chain has no 'route' filter",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nfilters: [{type: buffer}, {type: route}]",
            "filters[0].type: unknown filter 'buffer'",
        ),
        ("clusters: {a: {url: 'http://x'}}\nfilters: [{route: {}}]", "filters[0]: missing 'type'"),
        (
            "clusters: {a: {url: 'http://x'}}\nfilters: [{type: route, extra: 1}]",
            "filters[0]: filter route: takes no options",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nfilters: [{type: 'no_such_pkg.filters:Audit'}, {type: route}]",
            "filters[0].type: cannot import filter module 'no_such_pkg.filters': ModuleNotFoundError",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nfilters: [{type: 'tests.unit.sample_filters:Missing'}, {type: route}]",
            "filters[0].type: module 'tests.unit.sample_filters' has no class 'Missing'",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nfilters: [{type: 'tests.unit.sample_filters:NotAFilter'}, {type: route}]",
            "filters[0].type: tests.unit.sample_filters:NotAFilter is not a filter class",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nfilters: [{type: 'tests.unit.sample_filters:TagFilter'}, {type: route}]",
            "filters[0]: filter tests.unit.sample_filters:TagFilter: option 'tag' is required",
        ),
        ("clusters: {a: {url: 'http://x'}\n", "is not valid YAML"),
    ],
)
def test_each_bad_input_names_its_key_and_the_fix(text: str, expected: str) -> None:
    assert expected in error_for(text)


def test_environment_substitution_with_defaults() -> None:
    text = """
clusters:
  a:
    url: ${UPSTREAM:-http://127.0.0.1:9000}
    request_headers:
      set: {authorization: "Bearer ${KEY}"}
"""
    config = parse_config(text, environ={"KEY": "sk-1"})
    cluster = config.clusters["a"]
    assert cluster.url == "http://127.0.0.1:9000"
    assert cluster.headers.request.set == (("authorization", "Bearer sk-1"),)
    assert (
        parse_config(text, environ={"KEY": "k", "UPSTREAM": "http://h:1"}).clusters["a"].port == 1
    )


def test_custom_filter_by_import_path_gets_its_options() -> None:
    text = """
clusters: {a: {url: 'http://x'}}
filters:
  - type: tests.unit.sample_filters:TagFilter
    tag: audit
  - type: route
"""
    config = parse_config(text, environ={})
    instance = config.filters[0].create()
    assert isinstance(instance, TagFilter) and instance.config == "audit"


def test_demo_and_shipped_configs_are_valid() -> None:
    from pathlib import Path

    from filterproxy.config import load_config

    conf = Path(__file__).resolve().parents[2] / "conf"
    assert load_config(conf / "demo.yaml", environ={}).mock_upstream
    assert load_config(
        conf / "openai.yaml", environ={"OPENAI_API_KEY": "a", "ANTHROPIC_API_KEY": "b"}
    ).clusters
    bench = load_config(conf / "bench.yaml", environ={})
    assert bench.clusters["upstream"].url == "http://127.0.0.1:9101"
