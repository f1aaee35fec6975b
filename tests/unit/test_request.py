"""Request serialisation never lets a filter break HTTP framing."""

from __future__ import annotations

import pytest

from filterproxy.http.headers import Headers, UnsafeHeaderError
from filterproxy.upstream.request import serialize_request_head


def test_request_line_and_headers() -> None:
    head = serialize_request_head("GET", "/v1/x?a=1", Headers([("host", "h")]))
    assert head == b"GET /v1/x?a=1 HTTP/1.1\r\nhost: h\r\n\r\n"


@pytest.mark.parametrize("path", ["/v1/x HTTP/1.1\r\nx-evil: 1", "/a b", "/a\x00"])
def test_a_path_with_spaces_or_controls_is_refused(path: str) -> None:
    with pytest.raises(UnsafeHeaderError):
        serialize_request_head("GET", path, Headers())
