"""The built-in extensions: their filters by name, their config schemas, and the config
loader that knows them.

The core config (`filterproxy.config`) knows no extension: it is handed their schemas.
This is where the built-in ones are listed (and their metrics, `declare_metrics`), in the order their filters are put in the
default chain; the process (`filterproxy.server`), `filterproxy.testing` and the tests
load configs through `load_config` and `parse_config` here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from filterproxy import config
from filterproxy.config import ChainFacts, Config, ExtensionSchema
from filterproxy.extensions.bedrock.config import SCHEMA as BEDROCK
from filterproxy.extensions.bedrock.filter import BedrockFilter
from filterproxy.extensions.body_accumulate.filter import BodyAccumulateFilter
from filterproxy.extensions.cache import CacheFilter
from filterproxy.extensions.cache.config import SCHEMA as CACHE
from filterproxy.extensions.cache.metrics import CacheMetrics
from filterproxy.extensions.delivery.config import SCHEMA as DELIVERY
from filterproxy.extensions.delivery.filter import DeliveryFilter
from filterproxy.extensions.delivery.metrics import DeliveryMetrics
from filterproxy.extensions.header_rewrite.filter import HeaderRewriteFilter
from filterproxy.extensions.keys.config import SCHEMA as KEYS
from filterproxy.extensions.keys.filter import KeysFilter
from filterproxy.extensions.keys.metrics import KeysMetrics
from filterproxy.extensions.responses.config import SCHEMA as RESPONSES
from filterproxy.extensions.responses.filter import ResponsesFilter
from filterproxy.extensions.resume import ResumeFilter
from filterproxy.extensions.resume.config import SCHEMA as RESUME
from filterproxy.extensions.resume.metrics import ResumeMetrics
from filterproxy.extensions.route.filter import RouteFilter
from filterproxy.extensions.spend.config import schema as spend_schema
from filterproxy.extensions.spend.filter import SpendFilter
from filterproxy.extensions.spend.metrics import SpendMetrics
from filterproxy.extensions.translate.config import SCHEMA as TRANSLATE
from filterproxy.extensions.translate.filter import TranslateFilter
from filterproxy.extensions.translate.metrics import TranslateMetrics
from filterproxy.extensions.usage.filter import UsageFilter
from filterproxy.extensions.vertex.config import SCHEMA as VERTEX
from filterproxy.extensions.vertex.filter import VertexFilter
from filterproxy.filters.api import StreamFilter
from filterproxy.filters.credentials import fetch_counter
from filterproxy.filters.resources import Resources

__all__ = ["BUILTIN_FILTERS", "BUILTIN_SCHEMAS", "declare_metrics", "load_config", "parse_config"]

#: The built-in filters by the ``type`` a config names them with.
BUILTIN_FILTERS: Mapping[str, type[StreamFilter]] = MappingProxyType(
    {
        "delivery": DeliveryFilter,
        "spend": SpendFilter,
        "keys": KeysFilter,
        "body-accumulate": BodyAccumulateFilter,
        "resume": ResumeFilter,
        "responses": ResponsesFilter,
        "route": RouteFilter,
        "translate": TranslateFilter,
        "header-rewrite": HeaderRewriteFilter,
        "usage": UsageFilter,
        "cache": CacheFilter,
        "bedrock": BedrockFilter,
        "vertex": VertexFilter,
    }
)


def _keys_placed(facts: ChainFacts) -> bool:
    """Whether the keys filter is in the default chain (the spend filter goes with it)."""
    return KEYS.place is not None and KEYS.place(facts) is not None


#: The spend extension: after the keys extension in `BUILTIN_SCHEMAS`, so that both
#: first in the chain, spend ends up before keys.
SPEND = spend_schema(_keys_placed)

#: The built-in extensions that own config keys or a place in the default chain, in the
#: order their places are taken.
BUILTIN_SCHEMAS: tuple[ExtensionSchema, ...] = (
    KEYS,
    SPEND,
    RESUME,
    RESPONSES,
    TRANSLATE,
    CACHE,
    BEDROCK,
    VERTEX,
    DELIVERY,
)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """`filterproxy.config.load_config` with the built-in extensions."""
    return config.load_config(path, environ, extensions=BUILTIN_SCHEMAS)


def parse_config(
    text: str, *, source: str = "<string>", environ: Mapping[str, str] | None = None
) -> Config:
    """`filterproxy.config.parse_config` with the built-in extensions."""
    return config.parse_config(text, source=source, environ=environ, extensions=BUILTIN_SCHEMAS)


def declare_metrics(resources: Resources) -> None:
    """Declare the built-in extensions' metric families in *resources* (the service
    does, so that ``/metrics`` lists them whatever the config; each extension declares
    its own again, to the same families, when its filter is configured)."""
    KeysMetrics.of(resources)
    SpendMetrics.of(resources)
    ResumeMetrics.of(resources)
    TranslateMetrics.of(resources)
    CacheMetrics.of(resources)
    DeliveryMetrics.of(resources)
    fetch_counter(resources.metrics)
