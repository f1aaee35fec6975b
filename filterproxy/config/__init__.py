"""The config: YAML parsed once at start-up into immutable objects.

Nothing on the request path digs in dicts: every value is validated here, with an error
that names the key path, the value and the fix (`ConfigError`). The configuration
reference (docs/configuration.md) has every key and its default.
"""

from filterproxy.config._headers import parse_header_policy, parse_header_rules
from filterproxy.config._keys import hash_key, new_key
from filterproxy.config._load import load_config, parse_config
from filterproxy.config._reader import ConfigError, Node
from filterproxy.config._routes import parse_hosted_tools
from filterproxy.config._types import (
    DEFAULT_ADMIN_LISTENER,
    DEFAULT_FILTERS,
    DEFAULT_MAX_REQUEST_BYTES,
    HOSTED_TOOLS_POLICIES,
    ClusterConfig,
    Config,
    EndpointConfig,
    FilterEntry,
    GatewayKey,
    HeaderPolicy,
    HeaderRules,
    KeyLimits,
    Limits,
    OutlierDetection,
    RedisConfig,
    ResponsesConfig,
    ResumeConfig,
    RetryPolicy,
    RouteConfig,
    Timeouts,
    TracingConfig,
    UpstreamPlan,
)

__all__ = [
    "DEFAULT_ADMIN_LISTENER",
    "DEFAULT_FILTERS",
    "DEFAULT_MAX_REQUEST_BYTES",
    "HOSTED_TOOLS_POLICIES",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "EndpointConfig",
    "FilterEntry",
    "GatewayKey",
    "HeaderPolicy",
    "HeaderRules",
    "KeyLimits",
    "Limits",
    "Node",
    "OutlierDetection",
    "RedisConfig",
    "ResponsesConfig",
    "ResumeConfig",
    "RetryPolicy",
    "RouteConfig",
    "Timeouts",
    "TracingConfig",
    "UpstreamPlan",
    "hash_key",
    "load_config",
    "new_key",
    "parse_config",
    "parse_header_policy",
    "parse_header_rules",
    "parse_hosted_tools",
]
