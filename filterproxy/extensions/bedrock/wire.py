"""Bedrock's side of a request and its answer, as plain functions (no I/O).

InvokeModel for Anthropic's models takes the Messages body with these differences: the
model is in the path (percent-encoded), ``anthropic_version`` is ``bedrock-2023-05-31``
in the body, ``anthropic-beta`` flags go in the body as ``anthropic_beta`` (only those
Bedrock knows: one it does not know fails the whole request), ``stream`` is left out
(the path chooses), and Bedrock refuses top-level keys it does not take. Its stream is
the Messages stream, one event per event-stream frame (``{"bytes": base64 event}``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import quote

import orjson

from filterproxy.translate.common import Untranslatable

__all__ = [
    "BEDROCK_BETAS",
    "INVOKE_KEYS",
    "anthropic_error_body",
    "anthropic_error_event",
    "error_type",
    "invoke_body",
    "invoke_event",
    "model_path",
    "uses_invoke",
]

#: The ``anthropic_version`` InvokeModel takes.
BEDROCK_VERSION: Final = "bedrock-2023-05-31"
#: The top-level keys InvokeModel takes for Anthropic's models.
INVOKE_KEYS: Final = frozenset(
    {
        "anthropic_version",
        "max_tokens",
        "messages",
        "anthropic_beta",
        "system",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "metadata",
        "output_config",
        "context_management",
    }
)
#: Keys of a Messages request that change nothing Bedrock answers: left out.
_DROPPED: Final = frozenset({"model", "stream", "service_tier"})
#: The ``anthropic-beta`` flags Bedrock takes; the others are left out (Bedrock refuses a
#: request with one it does not know, and clients such as Claude Code send their own).
#: Only flags Bedrock documents: a flag left out loses a feature, one too many fails
#: every request that carries it.
BEDROCK_BETAS: Final = frozenset(
    {
        "computer-use-2024-10-22",
        "computer-use-2025-01-24",
        "token-efficient-tools-2025-02-19",
        "interleaved-thinking-2025-05-14",
        "output-128k-2025-02-19",
        "context-1m-2025-08-07",
        "context-management-2025-06-27",
        "fine-grained-tool-streaming-2025-05-14",
    }
)


def uses_invoke(model: str, setting: str) -> bool:
    """Whether *model* is called with InvokeModel (Messages bodies) rather than the
    Converse API, given the cluster's ``bedrock_api`` *setting*: ``auto`` takes
    InvokeModel for Anthropic's models (their IDs and inference profiles name
    ``anthropic.``; an application inference profile's ARN does not: say ``invoke``)."""
    if setting != "auto":
        return setting == "invoke"
    lowered = model.lower()
    return "anthropic." in lowered or "claude" in lowered


def model_path(model: str, operation: str) -> str:
    """The path of *operation* (``invoke``, ``invoke-with-response-stream``,
    ``converse``, ``converse-stream``) for *model*, its ID percent-encoded (``:`` and
    an ARN's ``/`` too), as AWS's SDKs send it."""
    return f"/model/{quote(model, safe='')}/{operation}"


def betas_of(header_values: Iterable[str]) -> tuple[list[str], list[str]]:
    """The flags of ``anthropic-beta`` headers: (those Bedrock takes, those left out)."""
    kept: list[str] = []
    dropped: list[str] = []
    for value in header_values:
        for flag in value.split(","):
            flag = flag.strip()
            if flag:
                (kept if flag in BEDROCK_BETAS else dropped).append(flag)
    return kept, dropped


def invoke_body(document: Mapping[str, Any], betas: list[str]) -> dict[str, Any]:
    """InvokeModel's body for the Messages request *document* (a new dict; the
    document is not changed).

    Raises:
        Untranslatable: the request has a field InvokeModel does not take that would
            change the answer.
    """
    body: dict[str, Any] = {"anthropic_version": BEDROCK_VERSION}
    for key, value in document.items():
        if key in _DROPPED:
            continue
        if key == "anthropic_beta" and isinstance(value, list):
            betas = [*betas, *(v for v in value if isinstance(v, str) and v in BEDROCK_BETAS)]
            continue
        if key not in INVOKE_KEYS:
            raise Untranslatable(key, "Bedrock's InvokeModel does not take it")
        if key != "anthropic_version":
            body[key] = value
    if betas:
        body["anthropic_beta"] = list(dict.fromkeys(betas))
    return body


_SSE_PREFIX: Final = b"event: "
_TYPE_START: Final = b'{"type":"'


def invoke_event(payload: bytes) -> tuple[str, bytes]:
    """One InvokeModelWithResponseStream ``chunk`` frame's payload → (the Messages
    event's type, its SSE bytes).

    Raises:
        ValueError: the payload is not a chunk holding one event object.
    """
    chunk = orjson.loads(payload)
    encoded = chunk.get("bytes") if isinstance(chunk, dict) else None
    if not isinstance(encoded, str):
        raise ValueError("a chunk without its bytes")
    raw = base64.b64decode(encoded, validate=True)
    if raw.startswith(_TYPE_START):
        # Anthropic's events say their type first: no need to parse them here (the
        # filters after this one read the events they need).
        end = raw.find(b'"', len(_TYPE_START))
        kind = raw[len(_TYPE_START) : end].decode("ascii", "replace")
        if end < 0 or not kind.replace("_", "").isalnum():
            kind = _type_of(raw)
    else:
        kind = _type_of(raw)
    return kind, b"".join((_SSE_PREFIX, kind.encode(), b"\ndata: ", raw, b"\n\n"))


def _type_of(raw: bytes) -> str:
    event = orjson.loads(raw)
    kind = event.get("type") if isinstance(event, dict) else None
    if not isinstance(kind, str) or not kind:
        raise ValueError("an event without its type")
    return kind


#: Bedrock's exceptions (stream exceptions are lower camel case, statuses' upper) →
#: Anthropic's error types.
_ERROR_TYPES: Final = {
    "throttlingexception": "rate_limit_error",
    "servicequotaexceededexception": "rate_limit_error",
    "validationexception": "invalid_request_error",
    "accessdeniedexception": "permission_error",
    "unrecognizedclientexception": "authentication_error",
    "invalidsignatureexception": "authentication_error",
    "expiredtokenexception": "authentication_error",
    "resourcenotfoundexception": "not_found_error",
    "modeltimeoutexception": "timeout_error",
    "serviceunavailableexception": "overloaded_error",
    "modelnotreadyexception": "overloaded_error",
    "internalserverexception": "api_error",
    "modelstreamerrorexception": "api_error",
    "modelerrorexception": "api_error",
}
_STATUS_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def error_type(name: str | None, status: int = 500) -> str:
    """Anthropic's error type for Bedrock's exception *name* (``ThrottlingException``,
    ``throttlingException``, ``x-amzn-ErrorType``'s ``Name:namespace``) or *status*."""
    if name:
        found = _ERROR_TYPES.get(name.split(":", 1)[0].strip().lower())
        if found is not None:
            return found
    return _STATUS_TYPES.get(status, "api_error")


def _message_of(raw: bytes) -> str | None:
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(document, dict):
        for key in ("message", "Message"):
            if isinstance(document.get(key), str):
                return str(document[key])
    return None


def anthropic_error_body(status: int, name: str | None, raw: bytes) -> bytes:
    """An error answer of Bedrock (status, ``x-amzn-ErrorType``, body) as Anthropic's
    error document."""
    message = _message_of(raw) or raw.decode("utf-8", "replace").strip()[:2000]
    label = (name or "").split(":", 1)[0]
    text = f"Bedrock: {label}: {message}" if label else f"Bedrock: {message or status}"
    return orjson.dumps(
        {"type": "error", "error": {"type": error_type(name, status), "message": text}}
    )


def anthropic_error_event(name: str, raw: bytes) -> tuple[str, bytes]:
    """A stream's exception frame (its ``:exception-type`` and payload) → (the message
    the gateway logs, the Messages ``error`` event the client gets)."""
    message = _message_of(raw) or raw.decode("utf-8", "replace").strip()[:2000]
    text = f"Bedrock: {name}: {message}" if name else f"Bedrock: {message}"
    event = orjson.dumps({"type": "error", "error": {"type": error_type(name), "message": text}})
    return text, b"event: error\ndata: " + event + b"\n\n"
