"""Config validation: every bad input stops start-up with a message naming the key path."""

from __future__ import annotations

from typing import Any

import pytest

from filterproxy.chain.registry import build_chain
from filterproxy.config import ConfigError, Timeouts
from filterproxy.extensions.body_accumulate.filter import BodyAccumulateFilter
from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.header_rewrite.filter import HeaderRewriteFilter
from filterproxy.extensions.route.filter import RouteFilter
from filterproxy.filters.resources import Resources

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
    """The error a config gets, from its parser or from building its filter chain."""
    with pytest.raises(ConfigError) as raised:
        build_chain(parse_config(text, environ=environ or {}), Resources())
    return str(raised.value)


def test_a_minimal_config_gets_the_default_chain_and_defaults() -> None:
    config = parse_config(BASE, environ={})
    assert [f.type_name for f in config.filters] == [
        "delivery",
        "body-accumulate",
        "route",
        "header-rewrite",
        "usage",
    ]
    chain = build_chain(config, Resources())
    assert isinstance(chain.specs[1].create(), BodyAccumulateFilter)
    assert isinstance(chain.specs[2].create(), RouteFilter)
    assert isinstance(chain.specs[3].create(), HeaderRewriteFilter)
    cluster = config.clusters["openai"]
    (endpoint,) = cluster.endpoints
    assert (endpoint.host, endpoint.port, endpoint.host_header, endpoint.scheme) == (
        "api.openai.com",
        443,
        "api.openai.com",
        "https",
    )
    assert cluster.timeouts == Timeouts(connect=5.0, first_byte=300.0, idle=120.0, total=None)
    assert cluster.tls_verify is True
    assert cluster.retry.max_attempts == 3
    assert chain.buffer_limit == 10 * 1024 * 1024


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("clusters: {openai: {url: 'htp://x'}}", "clusters.openai.url: not a URL: 'htp://x'"),
        (
            "clusters: {openai: {}}",
            "clusters.openai: give either 'url' (one upstream) or 'endpoints'",
        ),
        ("clusters: {openai: {url: 'http://x:notaport'}}", "clusters.openai.url: not a URL"),
        (
            "clusters: {openai: {url: 'http://x', timeouts: {connect: soon}}}",
            "clusters.openai.timeouts.connect: expected a duration like 30s or 250ms, got 'soon'",
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
        (
            "clusters: {a: {url: 'http://x', retry: {retry_on: [gateway-error]}}}",
            "clusters.a.retry.retry_on: unknown condition 'gateway-error'; use any of: 5xx, connect-failure",
        ),
        (
            "clusters: {a: {url: 'http://x', retry: {max_attempts: 0}}}",
            "clusters.a.retry.max_attempts: must be at least 1",
        ),
        (
            "clusters: {a: {url: 'http://x', retry: {retriable_status_codes: [700]}}}",
            "clusters.a.retry.retriable_status_codes: status codes are between 100 and 599",
        ),
        (
            "clusters: {a: {url: 'http://x', timeouts: {idle: 0}}}",
            "clusters.a.timeouts.idle: must be more than 0",
        ),
        (
            "clusters: {a: {url: 'http://x', timeouts: {read: 5s}}}",
            "clusters.a.timeouts.read: unknown key",
        ),
        (
            "clusters: {a: {url: 'http://x', endpoints: ['http://y']}}",
            "clusters.a: give either 'url' (one upstream) or 'endpoints'",
        ),
        ("clusters: {a: {endpoints: []}}", "clusters.a.endpoints: needs at least one endpoint"),
        (
            "clusters: {a: {endpoints: [{url: 'http://y', weight: 0}]}}",
            "clusters.a.endpoints[0].weight: must be at least 1",
        ),
        (
            "clusters: {a: {url: 'http://x', outlier_detection: {consecutive_failures: 0}}}",
            "clusters.a.outlier_detection.consecutive_failures: must be at least 1",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nroutes: [{cluster: a, fallbacks: [b]}]",
            "routes[0].fallbacks[0]: unknown cluster 'b'",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nroutes: [{cluster: a, fallbacks: [a]}]",
            "routes[0].fallbacks: each cluster may appear once",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nroutes: [{cluster: a, heartbeat: 0}]",
            "routes[0].heartbeat: must be more than 0, or off",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nroutes: [{cluster: a, hosted_tools: ignore}]",
            "routes[0].hosted_tools: must be drop (leave hosted tools out of a translated "
            "request, and say so) or refuse (answer 400), got 'ignore'",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nfilters: [{type: translate, hosted_tools: no}]",
            "filters[0].hosted_tools: must be drop",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nlimits: {max_header_count: 0}",
            "limits.max_header_count: must be at least 1",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nmax_event_bytes: 100",
            "max_event_bytes: must be at least 1024, got 100",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nmax_event_bytes: 8MiB",
            "max_event_bytes: expected a whole number, got '8MiB'",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nlimits: {request_header_timeout: never}",
            "limits.request_header_timeout: expected a duration",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nconfig_watch: 10ms",
            "config_watch: check the config file at most every 100ms, got '10ms'",
        ),
        (
            "clusters: {a: {url: 'http://x'}}\nshutdown_delay: soon",
            "shutdown_delay: expected a duration like 30s or 250ms, got 'soon'",
        ),
    ],
)
def test_each_bad_input_names_its_key_and_the_fix(text: str, expected: str) -> None:
    assert expected in error_for(text)


def test_shutdown_delay_and_config_watch_default_to_off() -> None:
    config = parse_config(BASE, environ={})
    assert (config.shutdown_delay, config.config_watch) == (0.0, 0.0)
    config = parse_config(BASE + "shutdown_delay: 5s\nconfig_watch: 2s\n", environ={})
    assert (config.shutdown_delay, config.config_watch) == (5.0, 2.0)
    assert parse_config(BASE + "config_watch: false\n", environ={}).config_watch == 0.0


def test_max_event_bytes_reaches_every_filter_that_reads_a_stream() -> None:
    assert parse_config(BASE).max_event_bytes == 8 * 1024 * 1024
    text = BASE.replace("    cluster: openai\n", "    cluster: openai\n    resume: true\n")
    chat_only = "\n  chat: {url: 'http://chat', apis: [chat]}\n"
    text = text.replace("url: https://api.openai.com\n", "url: https://api.openai.com" + chat_only)
    config = parse_config(
        text + "max_event_bytes: 65536\nkeys: [{name: k, hash: 'sha256:" + "0" * 64 + "'}]"
    )
    readers = {"translate", "usage", "resume"}
    limits = {
        spec.type_name: spec.create().config.max_event_bytes  # type: ignore[attr-defined]
        for spec in build_chain(config, Resources()).specs
        if spec.type_name in readers
    }
    assert limits == dict.fromkeys(readers, 65536)


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
    assert cluster.endpoints[0].url == "http://127.0.0.1:9000"
    assert cluster.headers.request.set == (("authorization", "Bearer sk-1"),)
    assert (
        parse_config(text, environ={"KEY": "k", "UPSTREAM": "http://h:1"})
        .clusters["a"]
        .endpoints[0]
        .port
        == 1
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
    instance = build_chain(config, Resources()).specs[0].create()
    assert isinstance(instance, TagFilter) and instance.config == "audit"


def test_demo_and_shipped_configs_are_valid() -> None:
    from pathlib import Path

    from filterproxy.extensions.builtin import load_config

    conf = Path(__file__).resolve().parents[2] / "conf"
    demo = load_config(conf / "demo.yaml", environ={})
    assert demo.mock_upstream
    # The mock speaks chat only: a Messages client is translated.
    assert demo.clusters["demo"].apis == frozenset({"chat"})
    assert "translate" in [f.type_name for f in demo.filters]
    assert load_config(
        conf / "openai.yaml", environ={"OPENAI_API_KEY": "a", "ANTHROPIC_API_KEY": "b"}
    ).clusters
    bench = load_config(conf / "bench.yaml", environ={})
    assert bench.clusters["upstream"].endpoints[0].url == "http://127.0.0.1:9101"


def test_route_overrides_merge_into_each_clusters_policies() -> None:
    text = """
clusters:
  openai:
    url: https://api.openai.com
    timeouts: {first_byte: 60s, idle: 30s}
    retry: {max_attempts: 2, retry_on: [5xx]}
  azure:
    endpoints:
      - {url: 'https://a.example.com', weight: 3, request_headers: {set: {api-key: k1}}}
      - https://b.example.com
routes:
  - models: [gpt-4o]
    cluster: openai
    fallbacks: [azure]
    timeouts: {idle: 10s, total: 5m}
    retry: {max_attempts: 4}
    heartbeat: 15s
"""
    config = parse_config(text, environ={})
    route = config.routes[0]
    openai, azure = route.plan
    assert (openai.cluster, azure.cluster) == ("openai", "azure")
    assert openai.timeouts == Timeouts(connect=5.0, first_byte=60.0, idle=10.0, total=300.0)
    assert azure.timeouts == Timeouts(connect=5.0, first_byte=300.0, idle=10.0, total=300.0)
    assert openai.retry.max_attempts == 4 and openai.retry.retry_on == frozenset({"5xx"})
    assert azure.retry.max_attempts == 4 and "connect-failure" in azure.retry.retry_on
    assert route.heartbeat == 15.0
    first, second = config.clusters["azure"].endpoints
    assert (first.weight, second.weight) == (3, 1)
    assert first.request_headers.set == (("api-key", "k1"),)
    assert config.limits.max_concurrent_streams == 10000


def test_access_log_can_be_turned_off_or_sent_to_a_file() -> None:
    default = parse_config(BASE, environ={})
    assert default.access_log is True and default.access_log_path is None
    off = parse_config(BASE + "access_log: false\n", environ={})
    assert off.access_log is False and off.access_log_path is None
    to_file = parse_config(BASE + "access_log: /var/log/filterproxy/access.log\n", environ={})
    assert to_file.access_log is True
    assert to_file.access_log_path == "/var/log/filterproxy/access.log"
    assert "access_log: the access-log file must be an absolute path, got 'maybe'" in error_for(
        BASE + "access_log: maybe\n"
    )
    assert "access_log: expected true, false or the absolute path of a file, got 5" in error_for(
        BASE + "access_log: 5\n"
    )


def test_the_admin_listener_defaults_to_loopback_and_can_be_moved_or_turned_off() -> None:
    assert parse_config(BASE, environ={}).admin_listener == "tcp:9901:interface=127.0.0.1"
    assert parse_config(BASE + "admin: false\n", environ={}).admin_listener is None
    moved = parse_config(BASE + "admin: {listen: 'tcp:9999'}\n", environ={})
    assert moved.admin_listener == "tcp:9999"
    assert "admin.port: unknown key; expected one of: listen, token" in error_for(
        BASE + "admin: {port: 1}\n"
    )


def test_the_admin_token_comes_from_the_config_or_the_environment() -> None:
    assert parse_config(BASE, environ={}).admin_token is None
    given = parse_config(BASE + "admin: {token: abc123}\n", environ={})
    assert given.admin_token == "abc123" and given.admin_listener == "tcp:9901:interface=127.0.0.1"
    env = BASE + "admin: {token: '${ADMIN_TOKEN}'}\n"
    assert parse_config(env, environ={"ADMIN_TOKEN": "from-env"}).admin_token == "from-env"
    assert "ADMIN_TOKEN is not set" in error_for(env)
    empty = BASE + "admin: {token: '${ADMIN_TOKEN:-}'}\n"
    assert parse_config(empty, environ={}).admin_token is None
    assert "admin.token: the admin token is sent in a header" in error_for(
        BASE + "admin: {token: 'a b'}\n"
    )


def test_tracing_needs_an_otlp_http_url() -> None:
    config = parse_config(
        BASE + "tracing: {otlp_endpoint: 'http://127.0.0.1:4318/v1/traces'}\n", environ={}
    )
    assert config.tracing is not None and config.tracing.service_name == "filterproxy"
    assert "tracing: missing 'otlp_endpoint'" in error_for(BASE + "tracing: {service_name: x}\n")
    assert "tracing.otlp_endpoint: expected an http:// or https:// URL" in error_for(
        BASE + "tracing: {otlp_endpoint: '127.0.0.1:4317'}\n"
    )


def test_usage_injection_may_come_before_or_after_the_route_filter() -> None:
    for chain in (
        "filters:\n  - type: usage\n    include_usage: true\n  - type: route\n",
        "filters:\n  - type: route\n  - type: usage\n    include_usage: true\n",
    ):
        config = parse_config(BASE + chain, environ={})
        assert {f.type_name for f in config.filters} == {"route", "usage"}


def test_cluster_protocol_and_tls_files(tmp_path: Any) -> None:
    cert = tmp_path / "client.crt"
    cert.write_text("x")
    config = parse_config(
        f"""
        clusters:
          a: {{url: "https://h", protocol: http2, ping_interval: 10s, tls: {{client_cert: "{cert}"}}}}
        """,
        environ={},
    )
    cluster = config.clusters["a"]
    assert (cluster.protocol, cluster.ping_interval, cluster.ping_timeout) == ("http2", 10.0, 10.0)
    assert cluster.client_cert == str(cert) and cluster.client_key is None
    assert (
        parse_config('clusters: {a: {url: "http://h"}}', environ={}).clusters["a"].protocol
        == "auto"
    )
    assert (
        "clusters.a.protocol: unknown protocol 'h3'; use one of: auto, http1, http2"
        in error_for('clusters: {a: {url: "http://h", protocol: h3}}')
    )
    assert "clusters.a.tls.client_key: no such file" in error_for(
        'clusters: {a: {url: "https://h", tls: {client_key: /nonexistent.key}}}'
    )
    assert "clusters.a.tls.client_key: a client_key needs its client_cert" in error_for(
        f'clusters: {{a: {{url: "https://h", tls: {{client_key: "{cert}"}}}}}}'
    )


def _endpoints(text: str) -> list[tuple[str, str, dict[str, str]]]:
    config = parse_config(text, environ={})
    return [
        (e.url, e.url_credentials, dict(e.request_headers.set))
        for cluster in config.clusters.values()
        for e in cluster.endpoints
    ]


def test_credentials_in_a_cluster_url_are_basic_auth_unless_something_else_authorizes() -> None:
    # Percent-encoded as in any URL (the user "us@er", the password "p:w").
    assert _endpoints('clusters: {a: {url: "http://us%40er:p%3Aw@h:81/base"}}') == [
        ("http://us%40er:***@h:81/base", "basic", {"authorization": "Basic dXNAZXI6cDp3"})
    ]
    # A user name alone (how some APIs take a key) is not shown either.
    assert _endpoints('clusters: {a: {url: "https://sk_live_123@h"}}') == [
        ("https://***@h", "basic", {"authorization": "Basic c2tfbGl2ZV8xMjM6"})
    ]
    # The cluster's rule, the endpoint's own rule and the provider's key each win.
    ruled = 'clusters: {a: {url: "http://u:p@h", request_headers: {remove: [authorization]}}}'
    assert _endpoints(ruled) == [("http://u:***@h", "unused", {})]
    own = """
        clusters:
          a:
            endpoints:
              - {url: "http://u:p@h1", request_headers: {set: {authorization: Bearer e}}}
              - "http://u:p@h2"
    """
    assert _endpoints(own) == [
        ("http://u:***@h1", "unused", {"authorization": "Bearer e"}),
        ("http://u:***@h2", "basic", {"authorization": "Basic dTpw"}),
    ]
    provider = 'clusters: {a: {provider: openai, api_key: sk-k, url: "https://u:p@h/v1"}}'
    assert _endpoints(provider) == [
        ("https://u:***@h/v1", "unused", {"authorization": "Bearer sk-k"})
    ]
    assert parse_config(ruled, environ={}).warnings == (
        "clusters.a: url 'http://u:***@h' carries credentials, but a header rule (or the "
        "provider's api_key) sets authorization, which wins: the URL's credentials are not "
        "sent; remove one of them",
    )
    # An error about the URL does not show the password either.
    message = error_for('clusters: {a: {url: "http://u:hunter2@h:port"}}')
    assert "clusters.a.url" in message and "u:***@h" in message and "hunter2" not in message
