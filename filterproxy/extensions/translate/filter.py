"""translate: let a client that speaks one API use an upstream that speaks another.

After the route filter has chosen the cluster, a request whose API the cluster speaks
natively (its provider preset's ``apis``, or the cluster's own ``apis`` list) passes
through untouched — no parsing, no rebuilding, byte for byte. Otherwise:

- a Messages request (``/v1/messages``) to a cluster that speaks Chat Completions is
  sent as a chat completion, and its answer — JSON or an event stream — comes back as a
  Messages answer; ``/v1/messages/count_tokens`` is answered here with an estimate;
- a Chat Completions request to a cluster that speaks only Messages is sent as a
  Messages request, and its answer comes back as a chat completion;
- a Responses request (``/v1/responses``) to a cluster that speaks Chat Completions is
  sent as a chat completion, and to one that speaks only Messages as a Messages request
  (through the chat translation); its answer comes back in the Responses shape. A
  ``previous_response_id`` must have been resolved before (the ``responses`` filter,
  which leaves a `ResolvedConversation` in the request's state); the whole response,
  when done, is left there (`TranslatedResponse`) for that filter to keep.

A translated request has a `Translated` record in its state (`StreamInfo.state`), for
the filters that must know (`filterproxy.filters.records`); the hosted tools it left
out, a `DroppedTools` (the access log's ``dropped_tools``; counted in
``filterproxy_translate_dropped_tools``).

A request field that would change the answer and has no counterpart gets a 400 that
names it. The upstream's errors come back in the client's error shape, before the
stream (status and body) and during it (the client API's error event).

The translations themselves are `filterproxy.translate`: plain functions and per-stream
state machines, which a filter of your own can use the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Final

from filterproxy.config import ClusterConfig, Node, RouteConfig
from filterproxy.extensions.translate.config import TranslateRoute, parse_hosted_tools
from filterproxy.extensions.translate.metrics import TranslateMetrics
from filterproxy.filters.api import (
    DataResult,
    FilterContext,
    FilterStatus,
    RequestHead,
    ResponseHead,
    StreamFilter,
)
from filterproxy.filters.metrics import MetricFamilies
from filterproxy.filters.records import (
    DroppedTools,
    ResolvedConversation,
    Translated,
    TranslatedResponse,
)
from filterproxy.http.apis import CHAT, MESSAGES, RESPONSES, client_api
from filterproxy.http.encoding import IDENTITY
from filterproxy.http.inflate import InflateError, Inflater, inflater_for
from filterproxy.http.sse import DEFAULT_MAX_EVENT_BYTES
from filterproxy.translate.chat_over_messages import (
    ChatFromMessagesStream,
    add_cache_breakpoints,
    chat_response,
    messages_request,
)
from filterproxy.translate.common import (
    MAX_ANSWER_BYTES,
    SHAPE_ERRORS,
    UnmappableAnswer,
    Untranslatable,
    anthropic_error,
    error_fields,
    loads_exact,
    openai_error,
)
from filterproxy.translate.messages_over_chat import (
    CACHE_CONTROL_PROVIDERS,
    MessagesFromChatStream,
    chat_request,
    count_tokens_estimate,
    messages_response,
)
from filterproxy.translate.responses_over_chat import (
    Piped,
    ResponsesFromChatStream,
    response_shell,
    responses_answer,
    responses_request,
)
from filterproxy.translate.responses_tools import UpstreamTool

__all__ = ["DROPPED_HEADER", "TranslateConfig", "TranslateFilter"]

#: The response header that names the hosted tool types a translated Responses request
#: left out (``hosted_tools: drop``).
DROPPED_HEADER: Final = "x-filterproxy-dropped-tools"

#: How much of a whole answer is seen before it is refused for not starting like JSON.
_SNIFF_BYTES: Final = 2048
_CLIENT_HEADERS: Final = {
    MESSAGES: ("anthropic-version", "anthropic-beta", "anthropic-dangerous-direct-browser-access"),
    CHAT: ("openai-organization", "openai-project", "openai-beta"),
    RESPONSES: ("openai-organization", "openai-project", "openai-beta"),
}
_UPSTREAM_PATH: Final = {CHAT: "/v1/chat/completions", MESSAGES: "/v1/messages"}


@dataclass(frozen=True)
class TranslateConfig:
    clusters: Mapping[str, ClusterConfig]
    #: ``max_tokens`` sent to a Messages upstream when a chat request has none (the
    #: Messages API requires it).
    default_max_tokens: int = 4096
    #: What a Responses request's hosted tools get when no route says (``hosted_tools``).
    hosted_tools: str = "drop"
    #: The largest upstream event a stream translation holds (``max_event_bytes``).
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    #: Where the filter counts (the process's; a config made without a process counts
    #: into families nobody scrapes).
    metrics: TranslateMetrics = field(default_factory=lambda: TranslateMetrics(MetricFamilies()))


_NO_ROUTE_OPTIONS: Final = TranslateRoute()


def _route_options(route: RouteConfig | None) -> TranslateRoute:
    """The route's ``hosted_tools`` and ``auto_cache`` (the defaults without a route)."""
    options = route.option(TranslateRoute) if route is not None else None
    return options if options is not None else _NO_ROUTE_OPTIONS


class TranslateFilter(StreamFilter):
    """Serves a client's API (Chat Completions, Messages, Responses) from an upstream that
    speaks another: the request, the answer and the stream are translated."""

    config: TranslateConfig
    provides = ("translate",)
    requires: ClassVar[Mapping[str, str]] = {
        "route": "it translates for the cluster the route filter chooses"
    }

    @classmethod
    def configure(cls, options: Mapping[str, Any], context: FilterContext) -> TranslateConfig:
        keys = Node(dict(options), context.path, context.environ).mapping(
            {"default_max_tokens", "hosted_tools"}
        )
        config = TranslateConfig(
            context.config.clusters,
            max_event_bytes=context.config.max_event_bytes,
            metrics=TranslateMetrics.of(context.resources),
        )
        if "default_max_tokens" in keys:
            config = replace(
                config, default_max_tokens=keys["default_max_tokens"].integer(minimum=1)
            )
        if "hosted_tools" in keys:
            config = replace(config, hosted_tools=parse_hosted_tools(keys["hosted_tools"]))
        return config

    def __init__(self, config: TranslateConfig) -> None:
        super().__init__(config)
        #: The client's API when this request is translated, else None (pass-through).
        self.client: str | None = None
        #: The upstream's API when translating.
        self.target = CHAT
        self.counting = False
        #: The route's ``auto_cache`` applies to this request (its upstream speaks Messages).
        self.caching = False
        self.stream: (
            MessagesFromChatStream | ChatFromMessagesStream | ResponsesFromChatStream | Piped | None
        ) = None
        #: A Responses answer's response object without its output (`response_shell`),
        #: and what the upstream's function names stand for (`ToolSet.by_upstream`).
        self.shell: dict[str, Any] | None = None
        self.tools: Mapping[str, UpstreamTool] | None = None
        self.include_usage = False
        self.status = 0
        self.head: ResponseHead | None = None
        #: A whole answer (JSON, or an error) collected to be rebuilt.
        self.body: list[bytes] | None = None
        self.body_size = 0
        #: The answer's content type, and whether its start was seen to be able to be
        #: a JSON object (a whole answer that cannot is refused before its end).
        self.content_type = ""
        self.sniffed = False
        #: Inflates an answer the upstream compressed though it was asked not to.
        self.inflater: Inflater | None = None

    # -- the request ---------------------------------------------------------------------

    def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
        info = self.callbacks.stream_info
        api = client_api(head.path) if head.method == "POST" else None
        cluster = self.config.clusters.get(info.cluster) if info.cluster is not None else None
        apis = cluster.apis_for(info.model) if cluster is not None else frozenset()
        if api is None or cluster is None or api in apis:
            self.callbacks.pass_response_data()  # the answer passes byte for byte, at no cost
            self.caching = api == MESSAGES and _route_options(info.route).auto_cache
            return FilterStatus.CONTINUE
        path = head.path.split("?", 1)[0].rstrip("/")
        if api == MESSAGES and CHAT in apis:
            self.counting = path.endswith("/count_tokens")
        elif api == RESPONSES and path.endswith("/responses") and apis & {CHAT, MESSAGES}:
            self.target = CHAT if CHAT in apis else MESSAGES
        elif api == CHAT and MESSAGES in apis:
            self.target = MESSAGES
        else:
            self.callbacks.send_local_reply(
                404,
                f"cluster {cluster.name!r} speaks {', '.join(sorted(apis))}, and "
                f"the gateway cannot translate {path} into it; route this model to a "
                "cluster that speaks this API",
                code="api_not_supported",
            )
            return FilterStatus.STOP_ITERATION
        if end_stream:
            # No body: nothing to translate, and nothing that may go upstream as it is.
            self.callbacks.send_local_reply(
                400,
                f"the request has no body; POST {path} takes a JSON object",
                code="invalid_request_body",
            )
            return FilterStatus.STOP_ITERATION
        self.client = info.api = api
        info.state.set(Translated(api, self.target))
        head.path = _UPSTREAM_PATH[self.target]
        head.headers.remove_all(frozenset(_CLIENT_HEADERS[api]))
        return FilterStatus.CONTINUE

    def response_codings(self) -> frozenset[str] | None:
        # A translated answer is rebuilt here: it must come uncompressed (the client's
        # answer is a new body anyway).
        return IDENTITY if self.client is not None else None

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        if self.client is None or not end_stream:
            if self.caching and end_stream:
                self._auto_cache(self.callbacks.request_json())
            return FilterStatus.CONTINUE
        document = self.callbacks.request_json()
        if document is None:
            self.callbacks.send_local_reply(
                400, "the request body must be a JSON object", code="invalid_request_body"
            )
            return FilterStatus.STOP_ITERATION
        if self.counting:
            body = json.dumps({"input_tokens": count_tokens_estimate(document)}).encode()
            self.callbacks.send_local_response(200, body, "application/json")
            return FilterStatus.STOP_ITERATION
        info = self.callbacks.stream_info
        cluster = self.config.clusters[info.cluster or ""]
        if self.client == RESPONSES and document.get("previous_response_id"):
            self.callbacks.send_local_reply(
                404,
                f"previous response {document['previous_response_id']!r} not found: the "
                "gateway keeps the responses it answers (unless 'store' is false) for the "
                "time its 'responses.ttl' says, for the same credentials only",
                code="previous_response_not_found",
            )
            return FilterStatus.STOP_ITERATION
        fields = "max_tokens" if self.target == MESSAGES else cluster.max_tokens_field
        try:
            if self.client == MESSAGES:
                translated = chat_request(
                    document,
                    max_tokens_field=fields,
                    cache_control=cluster.provider in CACHE_CONTROL_PROVIDERS,
                )
            elif self.client == RESPONSES:
                policy = _route_options(info.route).hosted_tools
                request = responses_request(
                    document,
                    max_tokens_field=fields,
                    hosted_tools=policy or self.config.hosted_tools,
                )
                translated, self.tools = request.chat, request.tools.by_upstream
                if request.tools.dropped:
                    self._dropped(tuple(request.tools.dropped))
                resolved = info.state.get(ResolvedConversation)
                previous = resolved.previous_response_id if resolved is not None else None
                self.shell = response_shell(document, info.model, previous)
            else:
                translated = document
            if self.target == MESSAGES:
                translated = messages_request(
                    translated, default_max_tokens=self.config.default_max_tokens
                )
                self.caching = _route_options(info.route).auto_cache
        except Untranslatable as e:
            self.callbacks.send_local_reply(
                400,
                f"{e}; the request was not sent, as the answer could not be what it asks for",
                code="unsupported_parameter",
            )
            return FilterStatus.STOP_ITERATION
        options = document.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True
        if self.caching:
            self._auto_cache(translated)
        else:
            self.callbacks.set_request_json(translated)
        return FilterStatus.CONTINUE

    def _dropped(self, tools: tuple[str, ...]) -> None:
        """Hosted *tools* were left out of the request: said in the access log, and
        counted (once per request, though a fallback translates it again)."""
        info = self.callbacks.stream_info
        if info.state.get(DroppedTools) is None:
            route = info.route.name if info.route is not None else "none"
            count = self.config.metrics.dropped_tools
            for tool in tools:
                count.inc((route, tool))
        info.state.set(DroppedTools(tools))

    def _auto_cache(self, document: dict[str, Any] | None) -> None:
        """The route's ``auto_cache``: breakpoints for a Messages upstream where the
        client set too few (`add_cache_breakpoints`); the body is rewritten only then."""
        if document is not None and (add_cache_breakpoints(document) or self.client):
            self.callbacks.set_request_json(document)

    # -- the answer ----------------------------------------------------------------------

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> FilterStatus:
        if self.client is None:
            return FilterStatus.CONTINUE
        self.status = head.status
        dropped = self.callbacks.stream_info.state.get(DroppedTools)
        if dropped is not None:
            head.headers.set(DROPPED_HEADER, ", ".join(dropped.tools))
        content_type = self.content_type = head.headers.get("content-type") or ""
        model = self.callbacks.stream_info.model
        try:
            # Asked for identity, and compressed all the same: read within bounds. The
            # client's answer is a new body (uncompressed).
            self.inflater = inflater_for(head.headers.get("content-encoding"))
        except InflateError as e:
            self.callbacks.fail_response(502, str(e))
            return FilterStatus.STOP_ITERATION
        if self.inflater is not None:
            head.headers.remove("content-encoding")
        if 200 <= head.status < 300 and content_type.startswith("text/event-stream"):
            if self.client == MESSAGES:
                self.stream = MessagesFromChatStream(model)
            elif self.client == CHAT:
                self.stream = ChatFromMessagesStream(model, self.include_usage)
            else:
                assert self.shell is not None
                responses = ResponsesFromChatStream(self.shell, self.tools)
                self.stream = (
                    responses
                    if self.target == CHAT
                    else Piped(ChatFromMessagesStream(model, True), responses)
                )
            self._limit_events(self.stream)
            head.headers.remove("content-length")
            return FilterStatus.CONTINUE
        if end_stream:
            if head.status < 400:  # an error status with no body is the upstream's answer
                self.callbacks.fail_response(
                    502, f"the upstream answered {head.status} with no body: not an answer"
                )
                return FilterStatus.STOP_ITERATION
            return FilterStatus.CONTINUE
        # A whole answer or an error: rebuilt when it has all arrived.
        self.head = head
        self.body = []
        return FilterStatus.STOP_ITERATION

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        stream = self.stream
        if stream is not None:
            inflater = self.inflater
            failure: str | None = None
            if inflater is not None and not self.callbacks.stream_info.outcome:
                try:
                    data = inflater.feed(data)
                except InflateError as e:
                    failure = str(e)
            if failure is not None:
                out = (stream.second if isinstance(stream, Piped) else stream).fail(failure)
            else:
                decoder = (stream.first if isinstance(stream, Piped) else stream).decoder
                if not decoder.between_events and self.callbacks.stream_info.outcome:
                    decoder.close()  # broke off mid-event: the gateway's error follows
                out = stream.feed(data)
                if end_stream:
                    out += stream.end()
                failure = (
                    stream.first.failure or stream.second.failure
                    if isinstance(stream, Piped)
                    else stream.failure
                )
            if (
                stream.closed
                and self.shell is not None
                and isinstance(stream, ResponsesFromChatStream | Piped)
            ):
                self._publish(stream)
            if failure is not None:
                # The upstream's stream cannot be read on: the client has its error
                # event, and the answer ends as a failure (never a clean end).
                self.callbacks.fail_response(502, failure, frame=out)
                return FilterStatus.STOP_ITERATION
            return out
        if self.body is None:
            return FilterStatus.CONTINUE
        if self.inflater is not None:
            try:
                data = self.inflater.feed(data)
            except InflateError as e:
                self.body = None
                self.callbacks.fail_response(502, str(e))
                return FilterStatus.STOP_ITERATION
        self.body.append(data)
        self.body_size += len(data)
        if self.body_size > MAX_ANSWER_BYTES:
            self.body = None
            self.callbacks.send_local_reply(
                502, "the upstream's answer is too large to translate", code="upstream_error"
            )
            return FilterStatus.STOP_ITERATION
        if not end_stream:
            if not self.sniffed and self.body_size >= _SNIFF_BYTES:
                # Enough to tell: an answer that cannot be a JSON object is refused
                # now, not after all of it (a page, a stream sent as text/plain). (An
                # error status keeps its head: its body is read to its end.)
                self.sniffed = True
                start = b"".join(self.body)[:_SNIFF_BYTES]
                if self.status < 400 and start.lstrip()[:1] != b"{":
                    self.body = None
                    self.callbacks.fail_response(502, self._not_an_answer(start))
            return FilterStatus.STOP_ITERATION
        body = self._rebuilt(b"".join(self.body))
        self.body = None
        head = self.head
        assert head is not None
        head.headers.set("content-type", "application/json")
        head.headers.set("content-length", str(len(body)))
        return body

    def _publish(self, stream: ResponsesFromChatStream | Piped) -> None:
        """A Responses stream has ended: its response, if it completed, for the filters
        before this one (the ``responses`` filter keeps it)."""
        self.shell = None
        if stream.response is not None:
            self.callbacks.stream_info.state.set(TranslatedResponse(stream.response))

    def _rebuilt(self, raw: bytes) -> bytes:
        try:
            document = loads_exact(raw)
        except ValueError:
            document = None
        if 200 <= self.status < 300 and isinstance(document, dict) and "error" not in document:
            try:
                return self._answer(document)
            except (UnmappableAnswer, *SHAPE_ERRORS) as e:
                # Part of the answer has no form in the client's API, or is not of the
                # shape its API gives it: the client is told, rather than given an
                # answer with a hole in it.
                message = (
                    str(e)
                    if isinstance(e, UnmappableAnswer)
                    else "the upstream's answer has a shape the gateway cannot read "
                    f"({type(e).__name__}: {e})"
                )
                document, self.status = {"error": {"message": message}}, 502
                if self.head is not None:
                    self.head.status = 502
        fields = error_fields(document)
        if fields is None:
            fields = (self._not_an_answer(raw), None, None)
        message, kind, code = fields
        status = self.status if self.status >= 400 else 502
        if self.head is not None:
            self.head.status = status  # never a 2xx for an answer that is not one
        if self.client == MESSAGES:
            return json.dumps(anthropic_error(status, message, kind)).encode()
        # Chat Completions and Responses share OpenAI's error shape.
        return json.dumps(openai_error(status, message, kind, code)).encode()

    def _not_an_answer(self, raw: bytes) -> str:
        """What the client is told of an answer that is neither its API's answer nor an
        error document: the start of what the upstream sent."""
        text = raw.decode("utf-8", "replace").strip()[:2000]
        if self.status >= 400:
            return text or f"the upstream answered {self.status} with no body"
        kind = self.content_type or "no content-type"
        shown = text or "an empty body"
        return f"the upstream answered {self.status} with {kind} that is not a JSON answer: {shown}"

    def _limit_events(
        self,
        stream: MessagesFromChatStream | ChatFromMessagesStream | ResponsesFromChatStream | Piped,
    ) -> None:
        """The config's limit on one upstream event for *stream*'s decoder."""
        limit = self.config.max_event_bytes
        if isinstance(stream, Piped):
            stream.first.decoder.max_event_bytes = limit
            # What the first made of events within the limit, with room for what the
            # translation adds (escapes, fields).
            stream.second.decoder.max_event_bytes = 2 * limit
        else:
            stream.decoder.max_event_bytes = limit

    def _answer(self, document: dict[str, Any]) -> bytes:
        """The client's answer for the upstream's whole answer *document*.

        Raises:
            UnmappableAnswer: part of it has no form in the client's API.
        """
        info = self.callbacks.stream_info
        model = info.model
        if self.client == MESSAGES:
            return json.dumps(messages_response(document, model)).encode()
        if self.client == CHAT:
            return json.dumps(chat_response(document, model)).encode()
        assert self.shell is not None
        if self.target == MESSAGES:
            document = chat_response(document, model)
        response = responses_answer(document, self.shell, self.tools)
        self.shell = None
        info.state.set(TranslatedResponse(response))
        return json.dumps(response).encode()
