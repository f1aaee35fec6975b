"""The delivery extension's config: how event streams reach clients on weak links.

::

    delivery:                        # every route's default; a route's own replaces it
      save_data: 250ms               # the window for a client sending Save-Data: on (off: ignored)
      window: off                    # a window for every stream of the route (off: when asked)
      min_window: 50ms               # a client's x-stream-coalesce is held between these
      max_window: 2s
      compress: [zstd, br, gzip]     # codings offered to a coalesced stream, preferred first
      slow_reader: true              # fold what a reader that fell behind has not taken
      hold: 65536                    # the most held for one slow reader before the upstream pauses
    routes:
      - name: phones
        cluster: openai
        delivery: {window: 200ms}

The delivery filter goes first in the default chain — its encode side is the last before
the client, so it sees the events exactly as the client would — unless every route turns
all of it off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from filterproxy.config import (
    ChainFacts,
    DefaultEntry,
    ExtensionSchema,
    Node,
    RouteConfig,
    Section,
)

__all__ = [
    "CODINGS",
    "SCHEMA",
    "DeliveryConfig",
    "DeliverySettings",
    "RouteDelivery",
    "delivery_of",
]

#: The content codings a coalesced stream can be compressed with, in the default order of
#: preference (zstd and br only where their libraries are installed).
CODINGS: Final = ("zstd", "br", "gzip")
_KEYS: Final = {
    "save_data",
    "window",
    "min_window",
    "max_window",
    "compress",
    "slow_reader",
    "hold",
}


@dataclass(frozen=True)
class DeliveryConfig:
    """How a route's event streams are delivered (see the module's description)."""

    #: The window for a client that sends ``Save-Data: on``; None: Save-Data is ignored.
    save_data: float | None = 0.25
    #: A window for every stream of the route, asked for or not; None: only when asked.
    window: float | None = None
    #: The bounds a client's ``x-stream-coalesce`` is held within.
    min_window: float = 0.05
    max_window: float = 2.0
    #: The codings a coalesced stream is offered in, preferred first; empty: never
    #: compressed.
    compress: tuple[str, ...] = CODINGS
    #: Whether the events a reader that fell behind has not taken are folded.
    slow_reader: bool = True
    #: The most bytes held for one reader before its upstream is paused — and for one
    #: window, which is sent before its end when it fills this much (about what a
    #: client's connection holds unsent, `CLIENT_UNSENT_BYTES`, four times over).
    hold: int = 64 * 1024

    @property
    def active(self) -> bool:
        """Whether the filter has anything to do on a route with this config."""
        return self.save_data is not None or self.window is not None or self.slow_reader


@dataclass(frozen=True)
class RouteDelivery:
    """A route's ``delivery`` (`RouteConfig.option(RouteDelivery)`); None: the top-level
    default."""

    delivery: DeliveryConfig | None = None


@dataclass(frozen=True)
class DeliverySettings:
    """The top-level ``delivery`` (`Config.section(DeliverySettings)`): every route's
    default."""

    delivery: DeliveryConfig = DeliveryConfig()


def _is_off(value: object) -> bool:
    return value is None or value is False or value == "off"


def _window(node: Node, what: str) -> float | None:
    if _is_off(node.value):
        return None
    seconds = node.duration()
    if not 0 < seconds <= 60:
        raise node.error(f"between 1ms and 60s: {what}, or off")
    return seconds


def parse_delivery(node: Node) -> DeliveryConfig:
    """A ``delivery`` mapping (or ``off``: nothing of it)."""
    if _is_off(node.value):
        return DeliveryConfig(save_data=None, window=None, slow_reader=False)
    keys = node.mapping(_KEYS)
    default = DeliveryConfig()
    save_data = (
        _window(keys["save_data"], "the window for Save-Data clients")
        if "save_data" in keys
        else default.save_data
    )
    window = _window(keys["window"], "the route's window") if "window" in keys else None
    bounds = []
    for name, value in (("min_window", default.min_window), ("max_window", default.max_window)):
        if name in keys:
            value = keys[name].duration()
            if not 0 < value <= 60:
                raise keys[name].error("between 1ms and 60s")
        bounds.append(value)
    low, high = bounds
    if low > high:
        raise keys["min_window" if "min_window" in keys else "max_window"].error(
            f"min_window ({low:g}s) is more than max_window ({high:g}s)"
        )
    compress = default.compress
    if "compress" in keys:
        if _is_off(keys["compress"].value):
            compress = ()
        else:
            compress = keys["compress"].string_list()
            for item, name in zip(keys["compress"].sequence(), compress, strict=True):
                if name not in CODINGS:
                    raise item.error(f"unknown coding {name!r}: one of {', '.join(CODINGS)}")
            if len(set(compress)) != len(compress):
                raise keys["compress"].error("each coding may appear once")
    slow_reader = keys["slow_reader"].boolean() if "slow_reader" in keys else True
    hold = keys["hold"].integer(minimum=16 * 1024) if "hold" in keys else default.hold
    return DeliveryConfig(save_data, window, low, high, compress, slow_reader, hold)


def parse(section: Section) -> DeliverySettings:
    """The top-level ``delivery``."""
    if "delivery" not in section:
        return DeliverySettings()
    return DeliverySettings(parse_delivery(section["delivery"]))


def parse_route(section: Section) -> RouteDelivery:
    """A route's ``delivery``."""
    if "delivery" not in section:
        return RouteDelivery()
    return RouteDelivery(parse_delivery(section["delivery"]))


def delivery_of(route: RouteConfig | None, settings: DeliverySettings) -> DeliveryConfig:
    """How *route*'s streams are delivered: its own ``delivery``, else the top level's."""
    if route is not None:
        option = route.option(RouteDelivery)
        if option is not None and option.delivery is not None:
            return option.delivery
    return settings.delivery


def place(facts: ChainFacts) -> DefaultEntry | None:
    """First in the chain (last to see the answer), unless nothing of it is on anywhere."""
    settings = facts.section(DeliverySettings) or DeliverySettings()
    routes = [delivery_of(route, settings) for route in facts.routes]
    if settings.delivery.active or any(config.active for config in routes):
        return DefaultEntry("delivery", first=True)
    return None


#: What the delivery extension adds to the config.
SCHEMA = ExtensionSchema(
    name="delivery",
    keys=frozenset({"delivery"}),
    parse=parse,
    route_keys=frozenset({"delivery"}),
    parse_route=parse_route,
    place=place,
)
