"""What a client asks of its stream, and when a coalescing window sends (no I/O)."""

from __future__ import annotations

import re
from typing import Final

from filterproxy.extensions.delivery.config import DeliveryConfig

__all__ = ["BadWindow", "Window", "parse_window", "saves_data", "window_for"]

_WINDOW: Final = re.compile(r"\s*(\d{1,6}(?:\.\d{1,6})?)\s*(ms|s)?\s*", re.IGNORECASE)


class BadWindow(ValueError):
    """An ``x-stream-coalesce`` value that is not a duration."""


def saves_data(value: str | None) -> bool:
    """Whether a ``Save-Data`` value asks to save data (``on``; ``?1``, the structured
    form some clients send)."""
    return value is not None and value.strip().lower() in ("on", "?1")


def parse_window(value: str) -> float:
    """An ``x-stream-coalesce`` value in seconds: ``150ms``, ``0.15s``, ``150`` (taken as
    milliseconds), ``0`` or ``off`` for none."""
    if value.strip().lower() == "off":
        return 0.0
    match = _WINDOW.fullmatch(value)
    if match is None:
        raise BadWindow(
            f"x-stream-coalesce: {value!r} is not a duration; send one such as 150ms, or off"
        )
    number = float(match.group(1))
    return number if (match.group(2) or "ms").lower() == "s" else number / 1000


def window_for(config: DeliveryConfig, save_data: bool, asked: float | None) -> float | None:
    """The window a stream is coalesced with: what the client asked for (held within the
    route's bounds; 0 turns coalescing off), else the route's Save-Data window for a
    client that saves data, else the route's own window; None: not coalesced."""
    if asked is not None:
        if asked == 0:
            return None
        return min(max(asked, config.min_window), config.max_window)
    if save_data and config.save_data is not None:
        return config.save_data
    return config.window


class Window:
    """When the events of a coalesced stream are sent: the first at once, then at most
    once per window — events that come within a window of the last send wait for its
    end, and go together."""

    __slots__ = ("last_sent", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        #: When events were last sent (a clock's seconds); None: not yet.
        self.last_sent: float | None = None

    def wait(self, now: float) -> float:
        """How long events that came at *now* wait: 0 when they go at once."""
        last = self.last_sent
        if last is None:
            return 0.0
        return max(0.0, last + self.seconds - now)

    def sent(self, now: float) -> None:
        """Events were sent at *now*: the next window starts."""
        self.last_sent = now
