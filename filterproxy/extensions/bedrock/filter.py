"""bedrock: send Messages requests to AWS Bedrock, and read its answers back as
Anthropic's Messages API.

The filter sits at the end of the chain: every other filter sees a Messages request and
a Messages answer (the translate filter has made a chat or Responses request one, and
makes the answer the client's again), so usage, cost, limits, the cache and traces work
as for Anthropic. For a ``provider: bedrock`` cluster it:

- takes the client's credentials and Anthropic's version and beta headers off the
  request (the betas Bedrock knows go in the body), and sends it to InvokeModel (Claude:
  the Messages body with Bedrock's small differences, `wire.invoke_body`) or to the
  Converse API (other models: translated, `filterproxy.translate.converse`), streaming
  or not, as the request asks;
- leaves an `UpstreamAuthorization` for the router, which signs each attempt (SigV4)
  with credentials fetched off the reactor, or sends the cluster's API key;
- reads the answer: a stream's AWS event-stream frames (`eventstream.FrameReader`,
  split anywhere, CRC-checked, bounded by ``max_event_bytes``) become Messages SSE
  events as they come, one for one; an exception frame (``throttlingException``, …)
  becomes the Messages ``error`` event and the answer fails (never a clean end); so
  does a stream that ends before its last event. A Converse answer becomes a Messages
  answer; an error answer (``x-amzn-ErrorType``) Anthropic's error document, status kept.
  The gateway's own answers (`ResponseHead.local`) pass as they are.

``/v1/messages/count_tokens`` is answered here with an estimate (Bedrock's own count
does not take every model).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import orjson

from filterproxy.config import ClusterConfig
from filterproxy.extensions.bedrock.auth import BedrockAuthorizers
from filterproxy.extensions.bedrock.config import BedrockCluster
from filterproxy.extensions.bedrock.eventstream import EVENT, EXCEPTION, FrameError, FrameReader
from filterproxy.extensions.bedrock.wire import (
    anthropic_error_body,
    anthropic_error_event,
    betas_of,
    invoke_body,
    invoke_event,
    model_path,
    uses_invoke,
)
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
from filterproxy.http.apis import MESSAGES, client_api
from filterproxy.http.encoding import IDENTITY
from filterproxy.translate.common import MAX_ANSWER_BYTES, SHAPE_ERRORS, Untranslatable
from filterproxy.translate.converse import (
    MessagesFromConverseStream,
    converse_request,
    messages_response,
)
from filterproxy.translate.messages_over_chat import count_tokens_estimate

__all__ = ["DROPPED_BETAS_HEADER", "BedrockFilter", "BedrockFilterConfig"]

#: The response header that names the client's ``anthropic-beta`` flags left out of a
#: request to InvokeModel (Bedrock refuses a request with a flag it does not know).
DROPPED_BETAS_HEADER: Final = "x-filterproxy-dropped-betas"

#: Request headers that are the client's credentials or Anthropic's API's own: never
#: sent to AWS (the cluster's credentials are added per attempt).
_CLIENT_HEADERS: Final = frozenset(
    {"authorization", "x-api-key", "api-key", "anthropic-version", "anthropic-beta"}
)
_EVENT_STREAM: Final = "application/vnd.amazon.eventstream"
_SSE: Final = "text/event-stream; charset=utf-8"


@dataclass(frozen=True)
class BedrockFilterConfig:
    clusters: Mapping[str, ClusterConfig]
    authorizers: BedrockAuthorizers
    max_event_bytes: int


class BedrockFilter(StreamFilter):
    """Shapes requests for ``provider: bedrock`` clusters and reads their answers (see
    the module's description)."""

    config: BedrockFilterConfig
    provides = ("bedrock",)
    requires: ClassVar[Mapping[str, str]] = {
        "route": "it shapes the request for the cluster the route filter chooses"
    }

    @classmethod
    def configure(cls, options: Mapping[str, Any], context: FilterContext) -> BedrockFilterConfig:
        if options:
            raise ValueError(f"takes no options, got: {', '.join(sorted(options))}")
        return BedrockFilterConfig(
            context.config.clusters,
            context.resources.get(BedrockAuthorizers, BedrockAuthorizers),
            context.config.max_event_bytes,
        )

    @classmethod
    def activate(cls, config: BedrockFilterConfig, resources: Resources) -> None:
        """The config goes in force: its Bedrock clusters' credentials are fetched."""
        config.authorizers.activate(
            [o for c in config.clusters.values() if (o := c.option(BedrockCluster)) is not None]
        )

    def __init__(self, config: BedrockFilterConfig) -> None:
        super().__init__(config)
        self.option: BedrockCluster | None = None
        self.head: RequestHead | None = None
        self.betas: list[str] = []
        #: The client's beta flags Bedrock does not take, left out (said in a header).
        self.dropped_betas: list[str] = []
        self.invoke = True
        self.streaming = False
        self.model = ""
        # The answer.
        self.status = 0
        self.frames: FrameReader | None = None
        self.converse: MessagesFromConverseStream | None = None
        self.complete = False
        self.body: list[bytes] | None = None
        self.body_size = 0
        self.error_name: str | None = None
        self.answer_head: ResponseHead | None = None

    # -- the request ---------------------------------------------------------------------

    def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
        info = self.callbacks.stream_info
        cluster = self.config.clusters.get(info.cluster) if info.cluster else None
        option = cluster.option(BedrockCluster) if cluster is not None else None
        if option is None:
            self.callbacks.pass_response_data()
            return FilterStatus.CONTINUE
        path = head.path.split("?", 1)[0].rstrip("/")
        if head.method != "POST" or client_api(path) != MESSAGES or end_stream:
            self.callbacks.send_local_reply(
                404,
                f"cluster {option.cluster!r} is AWS Bedrock: it takes Messages, Chat "
                f"Completions and Responses requests (POST with a JSON body), not "
                f"{head.method} {path}",
                code="api_not_supported",
            )
            return FilterStatus.STOP_ITERATION
        self.option = option
        self.head = head
        self.betas, self.dropped_betas = betas_of(head.headers.get_all("anthropic-beta"))
        head.headers.remove_all(_CLIENT_HEADERS)
        for name in {n.lower() for n, _ in head.headers if n.lower().startswith("x-amz")}:
            head.headers.remove(name)
        info.state.set(UpstreamAuthorization(option.cluster, self.config.authorizers.get(option)))
        return FilterStatus.STOP_ITERATION  # the path depends on the body

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        option, head = self.option, self.head
        if option is None or head is None:
            return FilterStatus.CONTINUE
        if not end_stream:
            return FilterStatus.STOP_ITERATION_AND_BUFFER
        document = self.callbacks.request_json()
        if document is None:
            self.callbacks.send_local_reply(
                400, "the request body must be a JSON object", code="invalid_request_body"
            )
            return FilterStatus.STOP_ITERATION
        if head.path.split("?", 1)[0].rstrip("/").endswith("/count_tokens"):
            body = json.dumps({"input_tokens": count_tokens_estimate(document)}).encode()
            self.callbacks.send_local_response(200, body, "application/json")
            return FilterStatus.STOP_ITERATION
        model = document.get("model")
        if not isinstance(model, str) or not model:
            self.callbacks.send_local_reply(
                400,
                "the request names no model: Bedrock needs its model ID "
                "(e.g. anthropic.claude-sonnet-4-5-20250929-v1:0)",
                code="invalid_request_body",
            )
            return FilterStatus.STOP_ITERATION
        self.model = model
        self.streaming = document.get("stream") is True
        self.invoke = uses_invoke(model, option.bedrock_api)
        try:
            if self.invoke:
                body_document = invoke_body(document, self.betas)
                operation = "invoke-with-response-stream" if self.streaming else "invoke"
            else:
                body_document = converse_request(document)
                operation = "converse-stream" if self.streaming else "converse"
        except Untranslatable as e:
            self.callbacks.send_local_reply(
                400,
                f"{e}; the request was not sent to Bedrock",
                code="unsupported_parameter",
            )
            return FilterStatus.STOP_ITERATION
        head.path = model_path(model, operation)
        head.headers.set("content-type", "application/json")
        if self.streaming:
            head.headers.set("accept", _EVENT_STREAM)
        else:
            head.headers.set("accept", "application/json")
        self.callbacks.set_request_json(body_document)
        return FilterStatus.CONTINUE

    def response_codings(self) -> frozenset[str] | None:
        return IDENTITY if self.option is not None else None

    # -- the answer ----------------------------------------------------------------------

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> FilterStatus:
        if self.option is None or head.local:  # (the gateway's own: the client's shape)
            return FilterStatus.CONTINUE
        if self.dropped_betas and self.invoke:
            head.headers.set(DROPPED_BETAS_HEADER, ", ".join(self.dropped_betas))
        self.status = head.status
        content_type = head.headers.get("content-type") or ""
        if 200 <= head.status < 300 and content_type.startswith(_EVENT_STREAM):
            self.frames = FrameReader(self.config.max_event_bytes)
            if not self.invoke:
                self.converse = MessagesFromConverseStream(self.model)
            head.headers.set("content-type", _SSE)
            head.headers.set("cache-control", "no-cache")
            head.headers.remove("content-length")
            head.headers.remove("x-amzn-bedrock-content-type")
            return FilterStatus.CONTINUE
        if 200 <= head.status < 300 and self.invoke:
            return FilterStatus.CONTINUE  # InvokeModel's answer is the Messages answer

        if end_stream:
            if head.status >= 400:
                head.headers.set("content-type", "application/json")
            return FilterStatus.CONTINUE
        # A Converse answer, or an error: rebuilt when it has all arrived.
        self.error_name = head.headers.get("x-amzn-errortype")
        self.answer_head = head
        self.body = []
        return FilterStatus.STOP_ITERATION

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        frames = self.frames
        if frames is not None:
            return self._stream(frames, data, end_stream)
        if self.body is None:
            return FilterStatus.CONTINUE
        self.body.append(data)
        self.body_size += len(data)
        if self.body_size > MAX_ANSWER_BYTES:
            self.body = None
            self.callbacks.fail_response(502, "Bedrock's answer is too large to read")
            return FilterStatus.STOP_ITERATION
        if not end_stream:
            return FilterStatus.STOP_ITERATION
        raw, self.body = b"".join(self.body), None
        head = self.answer_head
        assert head is not None
        if 200 <= self.status < 300:
            try:
                answer = orjson.loads(raw)
                body = orjson.dumps(messages_response(answer, self.model))
            except (ValueError, *SHAPE_ERRORS) as e:
                head.status = 502
                body = anthropic_error_body(
                    502,
                    None,
                    f"an answer the gateway cannot read ({type(e).__name__}: {e})".encode(),
                )
        else:
            body = anthropic_error_body(self.status, self.error_name, raw)
        head.headers.set("content-type", "application/json")
        head.headers.set("content-length", str(len(body)))
        return body

    def _stream(self, frames: FrameReader, data: bytes, end_stream: bool) -> DataResult:
        if self.callbacks.stream_info.outcome:
            # The gateway fails the answer (the upstream broke off, a limit): what comes
            # now is its own error event, in the client's API already.
            self.frames = None
            return FilterStatus.CONTINUE
        out: list[bytes] = []
        failure: str | None = None
        try:
            for frame in frames.feed(data) if data else ():
                if self.complete:
                    continue  # nothing after the last event
                if frame.message_type == EVENT:
                    failure = self._event(frame.name, frame.payload, out)
                else:
                    name = frame.name if frame.message_type == EXCEPTION else "error"
                    failure, event = anthropic_error_event(name, frame.payload)
                    out.append(event)
                if failure is not None:
                    break
        except FrameError as e:
            failure = str(e)
        if failure is None and end_stream and not self.complete:
            failure = "Bedrock's stream ended before its last event" + (
                " (a frame was cut off)" if not frames.between_frames else ""
            )
        if failure is not None:
            if not out or not out[-1].startswith(b"event: error"):
                out.append(anthropic_error_event("", failure.encode())[1])
            self.frames = None
            self.callbacks.fail_response(502, failure, frame=b"".join(out))
            return FilterStatus.STOP_ITERATION
        return out if len(out) != 1 else out[0]

    def _event(self, name: str, payload: bytes, out: list[bytes]) -> str | None:
        """One event frame → its Messages events in *out*; what went wrong, or None."""
        converse = self.converse
        if converse is None:
            if name != "chunk":
                return None  # (events other than chunks carry nothing for the client)
            try:
                kind, event = invoke_event(payload)
            except ValueError as e:
                return f"Bedrock sent a chunk the gateway cannot read ({e})"
            out.append(event)
            if kind == "message_stop":
                self.complete = True
            elif kind == "error":
                return "Bedrock's stream reported an error"
            return None
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError as e:
            return f"Bedrock sent an event the gateway cannot read ({e})"
        if isinstance(document, dict):
            document.pop("p", None)
        produced = converse.event(name, document if isinstance(document, dict) else {})
        if produced:
            out.append(produced)
        if converse.failure is not None:
            return converse.failure
        if converse.closed:
            self.complete = True
        return None
