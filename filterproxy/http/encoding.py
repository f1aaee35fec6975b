"""``Accept-Encoding``: read once, the same way by every filter that cares (RFC 9110 §12.5.3).

A filter that reads the upstream's response body can read some content codings and not
others (the usage scanner inflates gzip and deflate; a translation or the resume framing
reads only text). What the upstream is asked for is the client's list narrowed to what
every such filter can read (`narrowed`); whether the client takes a coding the gateway
makes itself is `accepts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["IDENTITY", "Coding", "accepts", "narrowed", "parse_accept_encoding"]

#: What a filter that reads only uncompressed bodies accepts.
IDENTITY: Final = frozenset({"identity"})

#: Names that mean the same coding (RFC 9110 §8.4.1.3: x-gzip is gzip).
_ALIASES: Final = {"x-gzip": "gzip"}


@dataclass(frozen=True, slots=True)
class Coding:
    """One entry of an ``Accept-Encoding`` list."""

    #: The coding's name, lower case, aliases resolved (``gzip`` for ``x-gzip``), or ``*``.
    name: str
    #: Its weight: 0 means "not this one".
    q: float
    #: The entry as the client wrote it (spaces around it removed).
    raw: str


def _weight(params: str) -> float:
    """The ``q`` of an entry's parameters; 1 when absent or not a number (taken as the
    client meaning to accept it, as the gateway always has)."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return min(max(float(value.strip()), 0.0), 1.0)
            except ValueError:
                return 1.0
    return 1.0


def parse_accept_encoding(value: str | None) -> tuple[Coding, ...]:
    """The entries of an ``Accept-Encoding`` value, in order (empty entries skipped)."""
    codings = []
    for part in (value or "").split(","):
        raw = part.strip()
        if not raw:
            continue
        name, _, params = raw.partition(";")
        name = name.strip().lower()
        codings.append(Coding(_ALIASES.get(name, name), _weight(params), raw))
    return tuple(codings)


def accepts(value: str | None, coding: str) -> bool:
    """Whether a client that sent *value* takes a response in *coding*: named with a
    weight above 0, or covered by ``*`` (with a weight above 0) when not named."""
    coding = _ALIASES.get(coding, coding)
    star = None
    for entry in parse_accept_encoding(value):
        if entry.name == coding:
            return entry.q > 0
        if entry.name == "*":
            star = entry.q > 0
    return bool(star)


def narrowed(value: str | None, readable: frozenset[str]) -> str | None:
    """The ``Accept-Encoding`` to send upstream when only *readable* codings can be
    read: the client's entries for those codings (the client still gets a compressed
    answer where it asked for one and the gateway can read it), ``identity`` when none is
    left. None when *value* needs no change: every entry readable, or no header — except
    for a reader of uncompressed bodies only, which asks for ``identity`` even then (an
    upstream may compress what nobody asked to be compressed)."""
    if value is None:
        return "identity" if readable == IDENTITY else None
    entries = parse_accept_encoding(value)
    kept = [entry.raw for entry in entries if entry.name in readable]
    if len(kept) == len(value.split(",")):
        return None
    return ", ".join(kept) if kept else "identity"
