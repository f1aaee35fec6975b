"""Error bodies in the client's API shape: OpenAI's ``{"error": {"message", "type",
"code"}}``, or Anthropic's ``{"type": "error", "error": {"type", "message"}}`` for a
Messages client.

The SDKs read the message into the exception they raise, so the message is what the user
of an application sees: it names the problem and, where there is one, the fix.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from filterproxy.http.apis import MESSAGES

__all__ = ["anthropic_error_type", "error_body", "error_type_for_status", "reason_phrase"]

_PHRASES: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def reason_phrase(status: int) -> bytes:
    """The reason phrase of an HTTP status line (``Not Found``)."""
    return _PHRASES.get(status, b"Unknown")


def error_type_for_status(status: int) -> str:
    """The OpenAI-style error type for an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 404:
        return "not_found_error"
    if status == 413:
        return "request_too_large"
    if status == 429:
        return "rate_limit_error"
    if 400 <= status < 500:
        return "invalid_request_error"
    if status in (502, 503, 504):
        return "upstream_error"
    return "server_error"


_ANTHROPIC_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    """The Anthropic error type for an HTTP status."""
    kind = _ANTHROPIC_TYPES.get(status)
    if kind is not None:
        return kind
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(
    status: int,
    message: str,
    *,
    code: str | None = None,
    type: str | None = None,
    api: str | None = None,
) -> bytes:
    """The JSON error document for a response with *status*, in the shape of the client
    *api* (`filterproxy.http.apis`; None: OpenAI's)."""
    if api == MESSAGES:
        error = {"type": anthropic_error_type(status), "message": message}
        return json.dumps({"type": "error", "error": error}).encode("utf-8")
    document = {
        "error": {
            "message": message,
            "type": type or error_type_for_status(status),
            "code": code,
        }
    }
    return json.dumps(document).encode("utf-8")
