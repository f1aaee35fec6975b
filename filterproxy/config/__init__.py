"""The config: YAML parsed once at start-up into immutable objects.

Nothing on the request path digs in dicts: every value is validated here, with an error
that names the key path, the value and the fix (`ConfigError`). The configuration
reference (docs/configuration.md) has every key and its default.

The core reads listeners, clusters, routes and the process's settings; each feature's
keys are read by its extension (`ExtensionSchema`, passed to `load_config`), and found
typed by class: `Config.section`, `RouteConfig.option`.
"""

from filterproxy.config._extension import (
    ChainFacts,
    DefaultEntry,
    ExtensionSchema,
    ProviderSchema,
    ProviderSettings,
    Section,
)
from filterproxy.config._headers import parse_header_policy, parse_header_rules
from filterproxy.config._load import load_config, parse_config
from filterproxy.config._reader import ConfigError, Node
from filterproxy.config._types import (
    DEFAULT_ADMIN_LISTENER,
    DEFAULT_FILTERS,
    DEFAULT_MAX_REQUEST_BYTES,
    ClusterConfig,
    Config,
    EndpointConfig,
    FilterEntry,
    HeaderPolicy,
    HeaderRules,
    Limits,
    OutlierDetection,
    RedisConfig,
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
    "ChainFacts",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DefaultEntry",
    "EndpointConfig",
    "ExtensionSchema",
    "FilterEntry",
    "HeaderPolicy",
    "HeaderRules",
    "Limits",
    "Node",
    "OutlierDetection",
    "ProviderSchema",
    "ProviderSettings",
    "RedisConfig",
    "RetryPolicy",
    "RouteConfig",
    "Section",
    "Timeouts",
    "TracingConfig",
    "UpstreamPlan",
    "load_config",
    "parse_config",
    "parse_header_policy",
    "parse_header_rules",
]
