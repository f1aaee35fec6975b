"""Filter names to classes, and the chain built from the config's ``filters`` list.

Built-in filters have short names; any other ``type`` is an import path to a filter
class, ``package.module:ClassName``. Every key of an entry other than ``type`` is an
option for the filter, validated once at start-up by the class's ``configure``.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING, Any

from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyClass

from filterproxy.config import DEFAULT_MAX_REQUEST_BYTES, ConfigError, FilterSpec, Node
from filterproxy.filters.api import FilterContext, IStreamFilter, StreamFilter
from filterproxy.filters.body_accumulate import BodyAccumulateConfig, BodyAccumulateFilter
from filterproxy.filters.header_rewrite import HeaderRewriteFilter
from filterproxy.filters.route import RouteFilter
from filterproxy.filters.usage import UsageFilter

if TYPE_CHECKING:
    from filterproxy.config import Config

__all__ = ["BUILTIN_FILTERS", "build_filter_chain", "load_filter_class"]

BUILTIN_FILTERS: dict[str, type[StreamFilter]] = {
    "body-accumulate": BodyAccumulateFilter,
    "route": RouteFilter,
    "header-rewrite": HeaderRewriteFilter,
    "usage": UsageFilter,
}


def load_filter_class(type_name: str, node: Node) -> type:
    """The class a filter entry's ``type`` names.

    Raises:
        ConfigError: the name is neither built in nor an importable filter class.
    """
    if type_name in BUILTIN_FILTERS:
        return BUILTIN_FILTERS[type_name]
    if ":" not in type_name:
        raise node.error(
            f"unknown filter {type_name!r}; built-in filters are "
            f"{', '.join(BUILTIN_FILTERS)}, and your own are named as 'package.module:ClassName'"
        )
    module_name, _, attr = type_name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or any error raised while importing user code
        raise node.error(
            f"cannot import filter module {module_name!r}: {type(e).__name__}: {e}; "
            "check the name and that the package is installed in the gateway's environment"
        ) from None
    cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        raise node.error(f"module {module_name!r} has no class {attr!r}")
    try:
        verifyClass(IStreamFilter, cls)
    except Invalid as e:
        raise node.error(
            f"{type_name} is not a filter class ({e}); subclass filterproxy.filters.api.StreamFilter"
        ) from None
    return cls


def build_filter_chain(node: Node, config: Config) -> tuple[tuple[FilterSpec, ...], int]:
    """The chain's filter specs and the chain's buffer limit in bytes."""
    specs = []
    buffer_limit = DEFAULT_MAX_REQUEST_BYTES
    saw_route = False
    for entry in node.sequence():
        keys = entry.mapping()
        if "type" not in keys:
            raise entry.error(
                "missing 'type'; name a built-in filter or 'package.module:ClassName'"
            )
        type_name = keys["type"].string()
        cls = load_filter_class(type_name, keys["type"])
        options: dict[str, Any] = {k: v.value for k, v in keys.items() if k != "type"}
        context = FilterContext(config=config, path=entry.path, environ=entry._environ)
        configure = getattr(cls, "configure", None)
        try:
            filter_config = configure(options, context) if configure is not None else None
        except ConfigError:
            raise
        except Exception as e:  # user code: any error it raises is a config problem
            raise entry.error(f"filter {type_name}: {e}") from None
        if isinstance(filter_config, BodyAccumulateConfig):
            buffer_limit = filter_config.max_request_bytes
        saw_route = saw_route or cls is RouteFilter
        specs.append(FilterSpec(type_name, entry.path, functools.partial(cls, filter_config)))
    if not saw_route:
        raise node.error(
            "the chain has no 'route' filter, so no request could be sent anywhere; "
            "add '- type: route' (after body-accumulate)"
        )
    return tuple(specs), buffer_limit
