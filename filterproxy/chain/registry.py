"""Filter names to classes, and the chain built from the config's ``filters`` entries.

Built-in filters have short names; any other ``type`` is an import path to a filter
class, ``package.module:ClassName``. Every key of an entry other than ``type`` is an
option for the filter, validated once, when the chain is built, by the class's
``configure``: a bad option stops start-up (or a reload) with the entry's key path.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyClass

from filterproxy.chain.manager import ChainShape
from filterproxy.config import DEFAULT_MAX_REQUEST_BYTES, Config, ConfigError, Node
from filterproxy.extensions.builtin import BUILTIN_FILTERS
from filterproxy.filters.admin import AdminRoutes
from filterproxy.filters.api import FilterContext, IStreamFilter

if TYPE_CHECKING:
    from filterproxy.filters.resources import Resources

__all__ = [
    "BUILTIN_FILTERS",
    "FilterChain",
    "FilterSpec",
    "build_chain",
    "load_filter_class",
]


@dataclass(frozen=True)
class FilterSpec:
    """One filter of the chain: its name in the config and a per-request constructor."""

    type_name: str
    path: str
    create: Callable[[], IStreamFilter]
    #: The filter's class and what its ``configure`` returned (for ``activate``).
    cls: type | None = None
    filter_config: Any = None


@dataclass(frozen=True)
class FilterChain:
    """The chain a config describes, ready to make each request's filters."""

    specs: tuple[FilterSpec, ...]
    #: What a filter may buffer of a request or a response (body-accumulate's limit).
    buffer_limit: int = DEFAULT_MAX_REQUEST_BYTES

    @functools.cached_property
    def shape(self) -> ChainShape:
        """What the chain's filter classes do (`ChainShape`), worked out once for the
        chain: every request it makes has the same classes."""
        return ChainShape.of(
            tuple(spec.cls if spec.cls is not None else type(spec.create()) for spec in self.specs)
        )

    @property
    def labels(self) -> tuple[str, ...]:
        """What logs call each filter: its type and key path."""
        return tuple(f"{spec.type_name} ({spec.path})" for spec in self.specs)

    def activate(self, resources: Resources) -> None:
        """This chain goes in force (at start, or a reload that was accepted): each
        filter class's optional ``activate(filter_config, resources)`` classmethod
        applies what its config changes process-wide (``configure`` changes nothing:
        a reload may still be rejected after the chain was built). The management
        routes of the chain it replaces go first: its filters register theirs again
        (`filterproxy.filters.admin.AdminRoutes`)."""
        resources.get(AdminRoutes, AdminRoutes).clear()
        for spec in self.specs:
            activate = getattr(spec.cls, "activate", None)
            if activate is not None:
                activate(spec.filter_config, resources)


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


def build_chain(config: Config, resources: Resources) -> FilterChain:
    """The filter chain *config*'s ``filters`` entries describe; the filters' configs
    may look up (not change) the process's *resources*. Nothing is in force until the
    chain's `FilterChain.activate`.

    Raises:
        ConfigError: an entry names no filter class, its options are refused by the
            class's ``configure``, the chain has no route filter, or a filter is where
            it cannot work (`check_order`).
    """
    specs = []
    buffer_limit = DEFAULT_MAX_REQUEST_BYTES
    saw_route = False
    for entry in config.filters:
        cls = load_filter_class(
            entry.type_name, Node(entry.type_name, f"{entry.path}.type", entry.environ)
        )
        context = FilterContext(
            config=config, path=entry.path, environ=entry.environ, resources=resources
        )
        configure = getattr(cls, "configure", None)
        try:
            options = dict(entry.options)
            filter_config = configure(options, context) if configure is not None else None
        except ConfigError:
            raise
        except Exception as e:  # user code: any error it raises is a config problem
            raise ConfigError(entry.path, f"filter {entry.type_name}: {e}") from None
        variant = getattr(cls, "variant", None)
        if variant is not None:
            cls = variant(filter_config)
        limit = getattr(cls, "buffer_limit", None)
        if limit is not None and (found := limit(filter_config)) is not None:
            buffer_limit = found
        saw_route = saw_route or bool(getattr(cls, "chooses_cluster", False))
        specs.append(
            FilterSpec(
                entry.type_name,
                entry.path,
                functools.partial(cls, filter_config),
                cls,
                filter_config,
            )
        )
    if not saw_route:
        raise ConfigError(
            "filters",
            "the chain has no 'route' filter, so no request could be sent anywhere; "
            "add '- type: route' (after body-accumulate)",
        )
    check_order(specs)
    return FilterChain(tuple(specs), buffer_limit)


def check_order(specs: list[FilterSpec]) -> None:
    """What each filter declares of its place (`StreamFilter.requires`, ``precedes``,
    ``provides``) holds in the chain *specs* make.

    Raises:
        ConfigError: at the entry whose requirement is broken, naming the other entry
            and why.
    """
    earlier: dict[str, FilterSpec] = {}
    for spec in specs:
        for need, why in getattr(spec.cls, "requires", {}).items():
            if need not in earlier:
                raise ConfigError(
                    spec.path,
                    f"filter {spec.type_name} needs a '{need}' filter before it in the chain "
                    f"({why}); put '- type: {need}' before it",
                )
        for later, why in getattr(spec.cls, "precedes", {}).items():
            found = earlier.get(later)
            if found is not None:
                raise ConfigError(
                    spec.path,
                    f"filter {spec.type_name} must come before {found.type_name} "
                    f"({found.path}) in the chain: {why}",
                )
        for name in getattr(spec.cls, "provides", ()):
            earlier.setdefault(name, spec)
