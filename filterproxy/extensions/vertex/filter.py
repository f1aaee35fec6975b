"""vertex: send requests to Google Vertex AI, Claude through its Anthropic endpoints and
the other models through its OpenAI-compatible endpoint.

The filter sits at the end of the chain, so every other filter sees the Messages or Chat
Completions request and answer it would see for Anthropic or OpenAI (the translate
filter has turned the client's API into the one the model is called in: Messages for
``claude-*``, Chat Completions for the others). For a ``provider: vertex`` cluster it:

- takes the client's credentials off the request and puts it on Vertex's path for the
  model: ``…/publishers/anthropic/models/{model}:rawPredict`` (``:streamRawPredict`` for
  a stream; the body without ``model``, with ``anthropic_version: vertex-2023-10-16``;
  ``anthropic-beta`` stays a header) or ``…/endpoints/openapi/chat/completions`` (the
  model named ``google/<model>`` unless it names its publisher);
- leaves an `UpstreamAuthorization` for the router, which puts the cluster's OAuth token
  on each attempt (fetched and refreshed off the reactor);
- passes the answers through as they come (Vertex's are Anthropic's and OpenAI's own),
  but for errors: Google's error documents (sometimes in a JSON array) become the
  client API's, status kept. (A 401 makes the router drop the token and try the
  request once more with a fresh one: `auth.TokenAuthorizer.refused`.)

``/v1/messages/count_tokens`` is answered here with an estimate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final
from urllib.parse import quote

from filterproxy.config import ClusterConfig
from filterproxy.extensions.vertex.auth import VertexAuthorizers
from filterproxy.extensions.vertex.config import CLAUDE_PREFIX, VertexCluster
from filterproxy.filters.api import (
    DataResult,
    FilterContext,
    FilterStatus,
    RequestHead,
    ResponseHead,
    StreamFilter,
)
from filterproxy.filters.records import UpstreamAuthorization
from filterproxy.filters.resources import Resources
from filterproxy.http.apis import CHAT, MESSAGES, client_api
from filterproxy.translate.common import MAX_ANSWER_BYTES, anthropic_error, openai_error
from filterproxy.translate.messages_over_chat import count_tokens_estimate

__all__ = ["VertexFilter", "VertexFilterConfig"]

#: The ``anthropic_version`` Vertex's Anthropic endpoints take.
VERTEX_VERSION: Final = "vertex-2023-10-16"
_CLIENT_HEADERS: Final = frozenset({"authorization", "x-api-key", "api-key", "anthropic-version"})
#: Google's error statuses → the error types of Anthropic's and OpenAI's APIs.
_GOOGLE_TYPES: Final = {
    "INVALID_ARGUMENT": "invalid_request_error",
    "FAILED_PRECONDITION": "invalid_request_error",
    "UNAUTHENTICATED": "authentication_error",
    "PERMISSION_DENIED": "permission_error",
    "NOT_FOUND": "not_found_error",
    "RESOURCE_EXHAUSTED": "rate_limit_error",
    "UNAVAILABLE": "overloaded_error",
    "DEADLINE_EXCEEDED": "timeout_error",
}


@dataclass(frozen=True)
class VertexFilterConfig:
    clusters: Mapping[str, ClusterConfig]
    authorizers: VertexAuthorizers


def google_error(status: int, raw: bytes, api: str) -> bytes:
    """Vertex's error answer (Google's ``{"error": {code, message, status}}``, maybe in a
    JSON array, or Anthropic's own) as the error document of the client's *api*."""
    try:
        document: Any = json.loads(raw)
    except ValueError:
        document = None
    wrapped = isinstance(document, list) and bool(document)
    if wrapped:
        document = document[0]
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict) and not wrapped and "status" not in error:
        return raw  # not Google's: Anthropic's own error document, as its API has it
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        message = str(error["message"])
        kind = _GOOGLE_TYPES.get(str(error.get("status") or "")) or error.get("type")
    else:
        message = raw.decode("utf-8", "replace").strip()[:2000] or f"Vertex answered {status}"
        kind = None
    text = f"Vertex AI: {message}"
    if api == MESSAGES:
        return json.dumps(
            anthropic_error(status, text, kind if isinstance(kind, str) else None)
        ).encode()
    return json.dumps(openai_error(status, text, kind if isinstance(kind, str) else None)).encode()


class VertexFilter(StreamFilter):
    """Shapes requests for ``provider: vertex`` clusters (see the module's description)."""

    config: VertexFilterConfig
    provides = ("vertex",)
    requires: ClassVar[Mapping[str, str]] = {
        "route": "it shapes the request for the cluster the route filter chooses"
    }

    @classmethod
    def configure(cls, options: Mapping[str, Any], context: FilterContext) -> VertexFilterConfig:
        if options:
            raise ValueError(f"takes no options, got: {', '.join(sorted(options))}")
        return VertexFilterConfig(
            context.config.clusters,
            context.resources.get(VertexAuthorizers, VertexAuthorizers),
        )

    @classmethod
    def activate(cls, config: VertexFilterConfig, resources: Resources) -> None:
        """The config goes in force: its Vertex clusters' tokens are fetched."""
        config.authorizers.activate(
            [o for c in config.clusters.values() if (o := c.option(VertexCluster)) is not None]
        )

    def __init__(self, config: VertexFilterConfig) -> None:
        super().__init__(config)
        self.option: VertexCluster | None = None
        self.head: RequestHead | None = None
        self.api = CHAT
        self.status = 0
        self.answer_head: ResponseHead | None = None
        self.body: list[bytes] | None = None
        self.body_size = 0

    # -- the request ---------------------------------------------------------------------

    def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
        info = self.callbacks.stream_info
        cluster = self.config.clusters.get(info.cluster) if info.cluster else None
        option = cluster.option(VertexCluster) if cluster is not None else None
        if option is None:
            self.callbacks.pass_response_data()
            return FilterStatus.CONTINUE
        path = head.path.split("?", 1)[0].rstrip("/")
        api = client_api(path)
        if head.method != "POST" or api not in (CHAT, MESSAGES) or end_stream:
            self.callbacks.send_local_reply(
                404,
                f"cluster {option.cluster!r} is Vertex AI: it takes Messages, Chat "
                f"Completions and Responses requests (POST with a JSON body), not "
                f"{head.method} {path}",
                code="api_not_supported",
            )
            return FilterStatus.STOP_ITERATION
        self.option, self.head, self.api = option, head, api
        head.headers.remove_all(_CLIENT_HEADERS)
        info.state.set(UpstreamAuthorization(option.cluster, self.config.authorizers.get(option)))
        return FilterStatus.STOP_ITERATION  # the path depends on the body

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        option, head = self.option, self.head
        if option is None or head is None:
            return FilterStatus.CONTINUE
        if not end_stream:
            return FilterStatus.STOP_ITERATION_AND_BUFFER
        document = self.callbacks.request_json()
        model = document.get("model") if document is not None else None
        if document is None or not isinstance(model, str) or not model:
            self.callbacks.send_local_reply(
                400,
                "the request body must be a JSON object that names its model",
                code="invalid_request_body",
            )
            return FilterStatus.STOP_ITERATION
        path = head.path.split("?", 1)[0].rstrip("/")
        if path.endswith("/count_tokens"):
            body = json.dumps({"input_tokens": count_tokens_estimate(document)}).encode()
            self.callbacks.send_local_response(200, body, "application/json")
            return FilterStatus.STOP_ITERATION
        if self.api == MESSAGES:
            operation = "streamRawPredict" if document.get("stream") is True else "rawPredict"
            head.path = (
                f"{option.location_path}/publishers/anthropic/models/"
                f"{quote(model, safe='@')}:{operation}"
            )
            shaped = {k: v for k, v in document.items() if k != "model"}
            shaped["anthropic_version"] = VERTEX_VERSION
        else:
            if model.startswith(CLAUDE_PREFIX):
                self.callbacks.send_local_reply(
                    400,
                    f"{model} is served by Vertex's Anthropic endpoints, which take "
                    "Messages requests",
                    code="api_not_supported",
                )
                return FilterStatus.STOP_ITERATION
            head.path = f"{option.location_path}/endpoints/openapi/chat/completions"
            shaped = dict(document)
            shaped["model"] = model if "/" in model else f"google/{model}"
        head.headers.set("content-type", "application/json")
        self.callbacks.set_request_json(shaped)
        return FilterStatus.CONTINUE

    # -- the answer ----------------------------------------------------------------------

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> FilterStatus:
        if self.option is None or head.status < 400 or head.local:
            return FilterStatus.CONTINUE
        self.status = head.status
        if end_stream:
            return FilterStatus.CONTINUE
        self.answer_head = head
        self.body = []
        return FilterStatus.STOP_ITERATION

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        if self.body is None:
            return FilterStatus.CONTINUE
        self.body.append(data)
        self.body_size += len(data)
        if self.body_size > MAX_ANSWER_BYTES:
            self.body = None
            self.callbacks.fail_response(502, "Vertex's error answer is too large to read")
            return FilterStatus.STOP_ITERATION
        if not end_stream:
            return FilterStatus.STOP_ITERATION
        raw, self.body = b"".join(self.body), None
        body = google_error(self.status, raw, self.api)
        head = self.answer_head
        assert head is not None
        head.headers.set("content-type", "application/json")
        head.headers.set("content-length", str(len(body)))
        return body
