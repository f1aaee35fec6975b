"""Error bodies in the OpenAI shape: ``{"error": {"message", "type", "code"}}``.

OpenAI's SDKs read ``error.message`` into the exception they raise, so the message is
what the user of an application sees: it names the problem and, where there is one, the fix.
"""

from __future__ import annotations

import json
from http import HTTPStatus

__all__ = ["error_body", "error_type_for_status", "reason_phrase"]

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


def error_body(
    status: int, message: str, *, code: str | None = None, type: str | None = None
) -> bytes:
    """The JSON error document for a response with *status*."""
    document = {
        "error": {
            "message": message,
            "type": type or error_type_for_status(status),
            "code": code,
        }
    }
    return json.dumps(document).encode("utf-8")
