"""One reading of ``Accept-Encoding`` for every filter (filterproxy.http.encoding)."""

from __future__ import annotations

import pytest

from filterproxy.http.encoding import IDENTITY, Coding, accepts, narrowed, parse_accept_encoding

READABLE = frozenset({"gzip", "deflate", "identity"})


def test_entries_are_read_with_their_weights_and_aliases() -> None:
    assert parse_accept_encoding(" GZIP;q=0.5 , x-gzip, br;q=0,, *;q=oops") == (
        Coding("gzip", 0.5, "GZIP;q=0.5"),
        Coding("gzip", 1.0, "x-gzip"),
        Coding("br", 0.0, "br;q=0"),
        Coding("*", 1.0, "*;q=oops"),
    )
    assert parse_accept_encoding(None) == ()


@pytest.mark.parametrize(
    ("value", "taken"),
    [
        ("gzip", True),
        ("x-gzip", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("gzip;q=0.001", True),
        ("br, *", True),
        ("br, *;q=0", False),
        ("*;q=0, gzip", True),
        ("gzip;q=0, *", False),
        ("br, deflate", False),
        ("", False),
        (None, False),
    ],
)
def test_whether_a_client_takes_gzip(value: str | None, taken: bool) -> None:
    assert accepts(value, "gzip") is taken


@pytest.mark.parametrize(
    ("value", "readable", "sent"),
    [
        ("gzip, deflate, br, zstd", READABLE, "gzip, deflate"),
        ("gzip, x-gzip;q=0.5", READABLE, None),
        ("br", READABLE, "identity"),
        (None, READABLE, None),
        ("gzip, br", IDENTITY, "identity"),
        (None, IDENTITY, "identity"),
        ("identity", IDENTITY, None),
        ("gzip,", READABLE, "gzip"),
    ],
)
def test_what_the_upstream_is_asked_for(
    value: str | None, readable: frozenset[str], sent: str | None
) -> None:
    assert narrowed(value, readable) == sent
