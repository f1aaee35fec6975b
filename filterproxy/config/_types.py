"""The config's immutable objects. Defaults here are the documented defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import quote

from filterproxy.http.apis import ALL_APIS, client_api
from filterproxy.http.sse import DEFAULT_MAX_EVENT_BYTES

if TYPE_CHECKING:
    from filterproxy.http.headers import Headers

T = TypeVar("T")


def find(values: tuple[object, ...], kind: type[T]) -> T | None:
    """The value of class *kind* among *values* (each class appears once), or None."""
    for value in values:
        if type(value) is kind:
            return value
    return None


DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024
#: The default chain (no ``filters`` given) before the extensions put theirs in it
#: (`filterproxy.config.DefaultEntry`).
DEFAULT_FILTERS = ("body-accumulate", "route", "header-rewrite", "usage")

#: The conditions ``retry.retry_on`` may name (Envoy's vocabulary).
RETRY_CONDITIONS = frozenset({"connect-failure", "reset", "5xx", "retriable-status-codes"})


#: A route's ``heartbeat`` unless it says otherwise: the SSE specification's suggestion,
#: half the shortest idle timeout common between a phone and the gateway (carrier NATs
#: and load balancers cut idle connections from 30 s on).
DEFAULT_HEARTBEAT: Final = 15.0


@dataclass(frozen=True)
class HeaderRules:
    """Header mutations in the order they apply: remove, then set, then append.

    Names are lower-case; values were checked for CR, LF and NUL at load time.
    """

    set: tuple[tuple[str, str], ...] = ()
    append: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.append or self.remove)

    def apply_to(self, headers: Headers) -> None:
        """Apply these rules to *headers*: remove, then set, then append."""
        for name in self.remove:
            headers.remove(name)
        for name, value in self.set:
            headers.set(name, value)
        for name, value in self.append:
            headers.add(name, value)


@dataclass(frozen=True)
class HeaderPolicy:
    """Rules for the request going upstream and for the response going back."""

    request: HeaderRules = HeaderRules()
    response: HeaderRules = HeaderRules()

    def __bool__(self) -> bool:
        return bool(self.request or self.response)


@dataclass(frozen=True)
class Timeouts:
    """How long each phase of an upstream exchange may take, in seconds."""

    #: Establishing the TCP (and TLS) connection.
    connect: float = 5.0
    #: From the request being sent to the response head (for a non-streaming completion,
    #: that is the whole generation).
    first_byte: float = 300.0
    #: The longest gap between two chunks of the response body.
    idle: float = 120.0
    #: The whole exchange; None (the default) means no limit, so long streams are not cut.
    total: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """When and how often a request is tried again, before its first byte went out."""

    retry_on: frozenset[str] = frozenset({"connect-failure", "reset", "retriable-status-codes"})
    retriable_status_codes: frozenset[int] = frozenset({429, 500, 502, 503, 504})
    #: Tries on one cluster, the first included; then the route's next fallback cluster.
    max_attempts: int = 3
    #: Exponential backoff with full jitter: attempt n waits uniform(0, min(max, base·2ⁿ⁻¹)).
    base_interval: float = 0.25
    max_interval: float = 5.0
    #: A Retry-After from the upstream is waited for, up to this long.
    retry_after_max: float = 10.0


@dataclass(frozen=True)
class OutlierDetection:
    """Passive health checking of a cluster's endpoints."""

    #: Consecutive failures (connect failure, reset, timeout, 5xx) that eject an endpoint.
    consecutive_failures: int = 5
    #: The first ejection's length; each further ejection lasts one more of these.
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0


@dataclass(frozen=True)
class EndpointConfig:
    """One address of a cluster (a deployment, or the same API with another key)."""

    #: The URL as given, with the password of its user information (``user:secret@``)
    #: replaced by ``***``: what logs, the access log, metrics and ``/memory`` show.
    url: str
    scheme: str
    host: str
    port: int
    base_path: str
    host_header: str
    weight: int = 1
    request_headers: HeaderRules = HeaderRules()
    #: A provider's endpoint: a client path under ``/v1/`` goes under this prefix
    #: instead (None: the path is appended to `base_path` as it is).
    api_prefix: str | None = None
    #: Per client API, another prefix (DeepSeek's Messages API lives under /anthropic).
    api_prefixes: tuple[tuple[str, str], ...] = ()
    #: Azure's classic paths: the model names the deployment (``/deployments/{model}``).
    deployments: bool = False
    #: Added to every request's query string (Azure's ``api-version``).
    query: str = ""
    #: What became of credentials in the URL (``user:password@host``): "" (none),
    #: "basic" (sent as HTTP basic auth, a rule of `request_headers`), "unused" (a header
    #: rule or the provider's key sets ``authorization``).
    url_credentials: str = ""

    def target(self, path: str, model: str | None) -> str:
        """The request target for a client's *path* (asking for *model*)."""
        if self.api_prefix is None:
            return self.base_path + path
        prefix = self.api_prefix
        if self.api_prefixes:
            api = client_api(path)
            for name, other in self.api_prefixes:
                if name == api:
                    prefix = other
        if path.startswith("/v1/") or path == "/v1" or path.startswith("/v1?"):
            path = path[3:]
        if self.deployments and model:
            prefix = f"{prefix}/deployments/{quote(model, safe='')}"
        target = prefix + path
        if self.query:
            target += ("&" if "?" in target else "?") + self.query
        return target


@dataclass(frozen=True)
class ClusterConfig:
    """A named upstream: its endpoints, how to connect, time out, retry and judge health."""

    name: str
    endpoints: tuple[EndpointConfig, ...]
    timeouts: Timeouts = Timeouts()
    retry: RetryPolicy = RetryPolicy()
    outlier_detection: OutlierDetection = OutlierDetection()
    max_connections: int = 1024
    max_idle_connections: int = 64
    idle_connection_timeout: float = 30.0
    tls_verify: bool = True
    ca_file: str | None = None
    #: A client certificate (and its key, if not in the same file) for mTLS.
    client_cert: str | None = None
    client_key: str | None = None
    headers: HeaderPolicy = HeaderPolicy()
    #: http1, http2 (TLS: by ALPN; cleartext: prior knowledge, h2c), or auto (TLS: what
    #: ALPN settles, HTTP/2 preferred; cleartext: HTTP/1.1).
    protocol: str = "auto"
    #: HTTP/2: a PING this often on every connection; no answer within ping_timeout
    #: closes it. 0 turns pings off.
    ping_interval: float = 30.0
    ping_timeout: float = 10.0
    #: The provider preset the cluster names (``openai``, ``anthropic``, …), if any.
    provider: str | None = None
    #: The client APIs the upstream speaks natively; a request in another is translated
    #: (by the translate filter). A cluster with no provider is taken to speak them all.
    apis: frozenset[str] = ALL_APIS
    #: What the upstream calls the output-token limit of a chat completion.
    max_tokens_field: str = "max_tokens"
    #: APIs spoken for some models only, by model-name prefix: the first prefix the
    #: request's model starts with wins over `apis` (Vertex speaks Messages for
    #: ``claude-*`` models and Chat Completions for the others).
    model_apis: tuple[tuple[str, frozenset[str]], ...] = ()
    #: What an extension's provider made of the cluster's keys
    #: (`filterproxy.config.ProviderSchema`): see `option`.
    options: tuple[object, ...] = ()

    def option(self, kind: type[T]) -> T | None:
        """This cluster's value of class *kind* (an extension provider's keys), or None."""
        return find(self.options, kind)

    def apis_for(self, model: str | None) -> frozenset[str]:
        """The client APIs the upstream speaks natively for requests naming *model*."""
        if model and self.model_apis:
            for prefix, apis in self.model_apis:
                if model.startswith(prefix):
                    return apis
        return self.apis


@dataclass(frozen=True)
class UpstreamPlan:
    """One cluster a route may use, with the route's overrides already applied."""

    cluster: str
    timeouts: Timeouts
    retry: RetryPolicy


@dataclass(frozen=True)
class RouteConfig:
    """One entry of the route table; the first route that matches wins.

    An empty `models` matches any model (and requests without one): a route with no
    match keys at all is the default route.
    """

    name: str
    cluster: str
    models: tuple[str, ...] = ()
    path_prefix: str | None = None
    methods: tuple[str, ...] = ()
    match_headers: tuple[tuple[str, str], ...] = ()
    headers: HeaderPolicy = HeaderPolicy()
    #: Clusters tried in order after `cluster`'s attempts are spent.
    fallbacks: tuple[str, ...] = ()
    #: The cluster and its fallbacks, each with its effective timeouts and retry policy.
    plan: tuple[UpstreamPlan, ...] = ()
    #: Seconds of silence in an event stream after which a `: keep-alive` comment is
    #: sent (None: never). The default is under the idle timeouts of the carrier NATs,
    #: load balancers and proxies a mobile client's connection crosses (30 s and up).
    heartbeat: float | None = DEFAULT_HEARTBEAT
    #: The model name sent upstream in place of the one requested (a default route
    #: that serves any model with one), or None.
    upstream_model: str | None = None
    #: Removed from the start of the requested model before it goes upstream
    #: (``openai/`` for a route matching ``openai/*``), or None.
    strip_model_prefix: str | None = None
    #: What the extensions made of their route keys, one value of each class
    #: (`filterproxy.config.ExtensionSchema.parse_route`): see `option`.
    options: tuple[object, ...] = ()

    def option(self, kind: type[T]) -> T | None:
        """This route's value of class *kind* (an extension's route keys), or None when
        no extension of the config makes one."""
        return find(self.options, kind)

    def upstream_model_for(self, model: str) -> str:
        """The model name the upstream gets for a request naming *model*."""
        if self.upstream_model is not None:
            return self.upstream_model
        prefix = self.strip_model_prefix
        if prefix and model.startswith(prefix) and len(model) > len(prefix):
            return model[len(prefix) :]
        return model


@dataclass(frozen=True)
class Limits:
    """What one client may ask of a listener."""

    max_header_count: int = 100
    max_header_bytes: int = 64 * 1024
    max_request_line_bytes: int = 8 * 1024
    #: Requests in progress at once on one listener; beyond it, 503 with Retry-After.
    max_concurrent_streams: int = 10000
    #: From a request's first byte to the end of its headers.
    request_header_timeout: float = 10.0
    #: From the end of the headers to the end of the body.
    request_body_timeout: float = 60.0
    #: An idle keep-alive connection is closed after this.
    keepalive_timeout: float = 75.0


@dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry export of a span per request (needs ``filterproxy[otel]``)."""

    #: OTLP over HTTP, e.g. http://127.0.0.1:4318/v1/traces.
    otlp_endpoint: str
    service_name: str = "filterproxy"


@dataclass(frozen=True)
class RedisConfig:
    """The Redis server extensions share state through when every worker and replica
    must see it (key limits, stored responses): one client connection, so core."""

    url: str
    #: The longest a request waits for Redis; then `on_error` decides.
    timeout: float = 0.1
    #: When Redis is unreachable or slow: ``open`` (count in this process, as without
    #: Redis) or ``closed`` (503).
    on_error: str = "open"


#: Where the admin listener (metrics, health, config, reload) listens by default.
DEFAULT_ADMIN_LISTENER = "tcp:9901:interface=127.0.0.1"


@dataclass(frozen=True)
class FilterEntry:
    """One entry of the ``filters`` list as written: the filter's type and its options.

    The options are checked by the filter class itself when the chain is built
    (`filterproxy.chain.registry.build_chain`), one layer up: the config knows no
    filter classes.
    """

    type_name: str
    #: The entry's key path (``filters[2]``), for error messages and logs.
    path: str
    #: The entry's other keys, as written (``${VAR}`` not yet substituted).
    options: Mapping[str, Any] = field(default_factory=dict)
    #: Where ``${VAR}`` in the options are looked up.
    environ: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Config:
    """The whole validated config."""

    listeners: tuple[str, ...]
    clusters: Mapping[str, ClusterConfig]
    routes: tuple[RouteConfig, ...]
    aliases: Mapping[str, str]
    filters: tuple[FilterEntry, ...] = ()
    limits: Limits = Limits()
    #: On SIGTERM, how long in-flight requests may take to finish before the exit.
    shutdown_grace: float = 30.0
    #: On SIGTERM, how long the gateway goes on accepting, with ``/ready`` answering 503,
    #: before it stops listening: time for load balancers to take it out of rotation.
    shutdown_delay: float = 0.0
    #: How often to look whether the config file (or ``keys_file``) changed, and reload
    #: when it did; 0: never (SIGHUP and ``POST /reload`` only).
    config_watch: float = 0.0
    #: One JSON line per request through twisted.logger.
    access_log: bool = True
    #: ... or, instead, appended to this file in batches.
    access_log_path: str | None = None
    mock_upstream: str | None = None
    #: The admin listener's endpoint, or None (``admin: false``).
    admin_listener: str | None = DEFAULT_ADMIN_LISTENER
    #: The bearer token the admin listener's management API asks for (``admin.token``);
    #: None: that API answers 403.
    admin_token: str | None = None
    tracing: TracingConfig | None = None
    #: Load pyOpenSSL at start-up even when the config uses no TLS (filterproxy.runtime.lazytls).
    preload_tls: bool = False
    source: str = "<string>"
    #: What the extensions made of their top-level keys, one value of each class
    #: (`filterproxy.config.ExtensionSchema.parse`): see `section`.
    sections: tuple[object, ...] = ()
    redis: RedisConfig | None = None
    #: The largest event of an upstream's event stream a filter that reads the stream
    #: (translation, usage, resume) holds; past it the answer fails with an error event.
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    #: What the config says that the gateway does not do (an imported ArchGW config's
    #: keys with no counterpart here): logged at start-up, printed by check-config.
    warnings: tuple[str, ...] = ()

    def section(self, kind: type[T]) -> T | None:
        """The value of class *kind* an extension made of its top-level keys, or None
        when no extension of the config makes one."""
        return find(self.sections, kind)
