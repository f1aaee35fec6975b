"""Header hygiene: a small header list type and the pure rules a proxy applies to it.

Names are kept lower-case (HTTP/2 requires it and HTTP/1.1 does not care), values as
`str` decoded from latin-1, so both protocols and user filters see the same thing.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterable, Iterator

__all__ = [
    "HOP_BY_HOP",
    "Headers",
    "UnsafeHeaderError",
    "encode_header_block",
    "forward_request_headers",
    "forward_response_headers",
    "validate_header_name",
    "validate_header_value",
]

#: RFC 9110 section 7.6.1 connection-specific fields, plus the non-standard ones that
#: proxies are known to receive. Every header named in `Connection` is stripped as well.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


def validate_header_name(name: str) -> str:
    """The lower-cased *name*, or ValueError if it is not an HTTP token."""
    if not _TOKEN.match(name):
        raise ValueError(f"{name!r} is not a valid header name (letters, digits and -_. only)")
    return name.lower()


def validate_header_value(value: str) -> str:
    """*value*, or ValueError if it contains CR, LF or NUL (header injection)."""
    if _BAD_VALUE.search(value):
        raise ValueError("header values cannot contain CR, LF or NUL characters")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("header values must be latin-1 text") from None
    return value


class Headers:
    """An ordered multi-map of lower-case header names to values.

    The order of fields is kept, as is the order of repeated fields; `set` replaces every
    field of that name with one.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: list[tuple[str, str]] = list(fields)

    @classmethod
    def from_raw(cls, raw: Iterable[tuple[bytes, bytes]]) -> Headers:
        """From wire bytes as a parser reports them (any case)."""
        return cls([(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in raw])

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of *name* (lower-case), or *default*."""
        for n, v in self._fields:
            if n == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        return [v for n, v in self._fields if n == name]

    def __contains__(self, name: object) -> bool:
        # A plain loop: any() with a generator costs twice as much on this hot path.
        for n, _ in self._fields:  # noqa: SIM110
            if n == name:
                return True
        return False

    def set(self, name: str, value: str) -> None:
        """Replace every *name* field with one holding *value*."""
        self.remove(name)
        self._fields.append((name, value))

    def add(self, name: str, value: str) -> None:
        self._fields.append((name, value))

    def remove(self, name: str) -> None:
        if name in self:
            self._fields = [(n, v) for n, v in self._fields if n != name]

    def remove_all(self, names: frozenset[str] | builtins.set[str]) -> None:
        self._fields = [(n, v) for n, v in self._fields if n not in names]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def copy(self) -> Headers:
        return Headers(self._fields)

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and other._fields == self._fields

    __hash__ = None  # type: ignore[assignment]


class UnsafeHeaderError(ValueError):
    """A header field would break HTTP framing (CR, LF or NUL in a name or value)."""


def encode_header_block(headers: Headers) -> bytes:
    """The HTTP/1.1 header fields of *headers* and the blank line that ends them.

    Raises:
        UnsafeHeaderError: a name or value holds CR, LF or NUL. Client headers cannot
            (the parser refuses them) and config values cannot (checked at load), but a
            filter could set one; it must never reach the wire as a second header.
    """
    text = "".join([f"{name}: {value}\r\n" for name, value in headers._fields])
    count = len(headers._fields)
    if text.count("\r") != count or text.count("\n") != count or "\x00" in text:
        raise UnsafeHeaderError("a header name or value contains CR, LF or NUL")
    return text.encode("latin-1") + b"\r\n"


def connection_specific(headers: Headers) -> set[str]:
    """The hop-by-hop names of *headers*: the fixed set plus those listed in Connection."""
    names = set(HOP_BY_HOP)
    for value in headers.get_all("connection"):
        names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return names


def forward_request_headers(
    headers: Headers, *, host: str, client_ip: str, scheme: str, body_length: int | None
) -> Headers:
    """The header list to send upstream, derived from the client's.

    Hop-by-hop fields, the client's framing (`Content-Length`, `Transfer-Encoding`), `Host`
    and `Expect` go; exactly one `Host` and the body's real `Content-Length` come in;
    `X-Forwarded-For` gains the client's address and `X-Forwarded-Proto` says how the
    client reached us.
    """
    out = headers.copy()
    # `Expect` goes too: the gateway answered it and sends the whole body at once.
    out.remove_all(connection_specific(headers) | {"host", "content-length", "expect"})
    prior = out.get_all("x-forwarded-for")
    out.remove("x-forwarded-for")
    out.remove("x-forwarded-proto")
    out._fields.insert(0, ("host", host))
    out.add("x-forwarded-for", ", ".join([*prior, client_ip]) if prior else client_ip)
    out.add("x-forwarded-proto", scheme)
    if body_length is not None:
        out.add("content-length", str(body_length))
    return out


def forward_response_headers(headers: Headers) -> Headers:
    """The upstream response's header list as the client should see it.

    Hop-by-hop fields go (the downstream connection does its own framing). Event streams
    get `X-Accel-Buffering: no` and `Cache-Control: no-cache`, so that an nginx in front of
    the gateway does not buffer tokens.
    """
    out = headers.copy()
    out.remove_all(connection_specific(headers))
    content_type = out.get("content-type", "") or ""
    if content_type.startswith("text/event-stream"):
        if "x-accel-buffering" not in out:
            out.add("x-accel-buffering", "no")
        if "cache-control" not in out:
            out.add("cache-control", "no-cache")
    return out
