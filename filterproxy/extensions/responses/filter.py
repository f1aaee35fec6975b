"""responses: the Responses API's conversation state, for upstreams that do not keep it.

OpenAI keeps every response (unless ``store: false``) so that the next request can
continue it with ``previous_response_id``, read it (``GET /v1/responses/{id}``, its
``/input_items``) or delete it (``DELETE``). When the gateway translates a Responses
request to a provider that speaks Chat Completions or Messages, nobody upstream keeps
anything: this filter does, in the store the top-level ``responses`` section names
(`filterproxy.extensions.responses.conversations`: this process's memory, or Redis for every worker and
replica).

- ``POST /v1/responses`` with a ``previous_response_id`` the gateway stored: the stored
  conversation (its input and output) goes in front of the request's ``input``, and the
  id leaves the request — it now stands alone, for the translation or for any upstream.
  An id the gateway did not store is left in place: an upstream that speaks Responses
  may know it; the translate filter answers 404 for one that does not.
- ``item_reference`` items in a request's input that name items of responses the
  gateway stored (`referenced_responses`; for the same owner) are replaced by the
  items themselves, with or without a ``previous_response_id``: clients such as the
  Vercel AI SDK send earlier assistant turns that way. A reference to an item the
  gateway did not store stays, for an upstream that keeps items (the translation
  answers 400 naming its id).
- The answer of a translated request (the `TranslatedResponse` the translate filter
  leaves in the request's state) is stored before its last bytes go to the client, so a client that sends the
  next turn as soon as it has read the last one finds it on any worker.
- ``GET`` and ``DELETE`` of a stored response are answered here.

Every record is bound to its owner: the gateway key's name when the request carried
one (the keys filter, first in the chain), else the client's credential header
(``Authorization`` / ``x-api-key``). A request with other credentials is told the
response does not exist.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import orjson
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from filterproxy.config import Node, RouteConfig
from filterproxy.extensions.responses.config import ResponsesSection
from filterproxy.extensions.responses.conversations import (
    OUTPUT_ONLY,
    Conversations,
    conversations_for,
    expand_references,
    referenced_responses,
)
from filterproxy.filters.api import (
    DataResult,
    FilterContext,
    FilterStatus,
    HeadersResult,
    RequestHead,
    RequestTooLarge,
    ResponseHead,
    StreamFilter,
)
from filterproxy.filters.owner import owner_of
from filterproxy.filters.records import ResolvedConversation, Translated, TranslatedResponse
from filterproxy.http.apis import RESPONSES
from filterproxy.translate.responses_over_chat import input_items

__all__ = ["ResponsesFilter", "ResponsesFilterConfig"]

log = Logger(namespace="filterproxy.responses")
#: ``…/responses``, ``…/responses/{id}`` and ``…/responses/{id}/input_items``.
_PATH: Final = re.compile(r"^(?:/[^?]*)?/responses(?:/([^/?]+)(/input_items)?)?/?$")
#: Stored responses one request's item references may point into (a read each).
MAX_REFERENCED: Final = 256


@dataclass(frozen=True)
class ResponsesFilterConfig:
    store: Conversations
    ttl: float
    #: The routes with a path prefix: a GET of a response the gateway did not store goes
    #: to the route whose prefix it matches (a provider that keeps responses itself).
    prefixed_routes: tuple[RouteConfig, ...]


def _continued(record: Mapping[str, Any]) -> list[Any]:
    """The input items a stored response is continued from: its input, then its output
    as input items."""
    response = record.get("response") or {}
    output = [
        {k: v for k, v in item.items() if k not in OUTPUT_ONLY}
        if isinstance(item, dict) and item.get("type") != "reasoning"
        else item
        for item in response.get("output") or []
    ]
    return [*(record.get("input") or []), *output]


class ResponsesFilter(StreamFilter):
    """Keeps, continues, reads and deletes Responses conversations (see the module)."""

    config: ResponsesFilterConfig
    provides = ("responses",)
    precedes: ClassVar[Mapping[str, str]] = {
        "translate": "a translated request's conversation is resolved before it is "
        "translated, and the answer translated before it is kept",
    }

    @classmethod
    def configure(cls, options: Mapping[str, Any], context: FilterContext) -> ResponsesFilterConfig:
        Node(dict(options), context.path, context.environ).mapping(set())
        config = context.config
        responses = (config.section(ResponsesSection) or ResponsesSection()).responses
        return ResponsesFilterConfig(
            conversations_for(responses, config.redis, context.resources),
            responses.ttl,
            tuple(r for r in config.routes if r.path_prefix is not None),
        )

    def __init__(self, config: ResponsesFilterConfig) -> None:
        super().__init__(config)
        self.owner = ""
        self.path = ""
        #: A GET or DELETE of a stored response, answered here.
        self.answering = False
        #: The request's whole input (after a stored conversation was put in front).
        self.input: list[Any] | None = None
        self.keep = False
        #: Whether the answer's response has been given to the store (the hook that
        #: did returned a Deferred: the answer's last pieces wait in the chain until the
        #: store is done).
        self.stored = False
        self.done = False

    # -- the request ---------------------------------------------------------------------

    def decode_headers(self, head: RequestHead, end_stream: bool) -> HeadersResult:
        path = head.path.split("?", 1)[0]
        match = _PATH.match(path)
        if match is None:
            self.callbacks.pass_response_data()
            return FilterStatus.CONTINUE
        self.owner = owner_of(head, self.callbacks.stream_info.key_name)
        self.path = path
        response_id, items = match.group(1), match.group(2) is not None
        if response_id is None:
            if head.method != "POST" or end_stream:
                self.callbacks.pass_response_data()
                return FilterStatus.CONTINUE
            return FilterStatus.STOP_ITERATION  # the body tells what to do
        self.callbacks.pass_response_data()
        if head.method not in ("GET", "DELETE") or (items and head.method != "GET"):
            return FilterStatus.CONTINUE
        self.answering = True
        read = self.config.store.get(response_id)
        return read.addCallback(self._read, head.method, response_id, items).addErrback(
            self._unavailable
        )

    def _read(
        self, record: dict[str, Any] | None, method: str, response_id: str, items: bool
    ) -> FilterStatus:
        if self.done:
            return FilterStatus.STOP_ITERATION
        if record is None or record.get("owner") != self.owner:
            if any(self.path.startswith(r.path_prefix or "") for r in self.config.prefixed_routes):
                self.answering = False
                return FilterStatus.CONTINUE  # a provider that keeps it may know it
            self.callbacks.send_local_reply(
                404,
                f"no response with id {response_id!r}: the gateway keeps the responses it "
                "answers (unless 'store' is false) for the time 'responses.ttl' says, for "
                "the same credentials only",
                code="not_found",
            )
            return FilterStatus.STOP_ITERATION
        if method == "DELETE":
            self.config.store.delete(response_id).addErrback(self._unavailable)
            body = {"id": response_id, "object": "response.deleted", "deleted": True}
        elif items:
            data = [
                {"id": f"item_{response_id.removeprefix('resp_')}_{i}", **item}
                if isinstance(item, dict) and "id" not in item
                else item
                for i, item in enumerate(record.get("input") or [])
            ]
            body = {
                "object": "list",
                "data": data,
                "first_id": data[0].get("id") if data else None,
                "last_id": data[-1].get("id") if data else None,
                "has_more": False,
            }
        else:
            body = record.get("response") or {}
        self.callbacks.send_local_response(200, orjson.dumps(body), "application/json")
        return FilterStatus.STOP_ITERATION

    def _unavailable(self, failure: Failure) -> FilterStatus:
        if self.done:
            return FilterStatus.STOP_ITERATION
        log.warn("conversation store unavailable: {error}", error=failure.getErrorMessage())
        self.callbacks.send_local_reply(
            503,
            "the gateway cannot reach its conversation store; try again shortly",
            code="store_unavailable",
            headers=[("retry-after", "1")],
        )
        return FilterStatus.STOP_ITERATION

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        if self.answering:
            return FilterStatus.STOP_ITERATION_AND_BUFFER  # a GET or DELETE (of no body)
        if not end_stream:
            return FilterStatus.STOP_ITERATION_AND_BUFFER
        document = self.callbacks.request_json()
        if document is None:
            return FilterStatus.CONTINUE  # the route filter answers it with a 400
        self.keep = document.get("store") is not False
        self.input = input_items(document.get("input"))
        previous = document.get("previous_response_id")
        if not isinstance(previous, str):
            previous = ""
        referenced = referenced_responses(self.input)
        if len(referenced) > MAX_REFERENCED:
            self.callbacks.send_local_reply(
                400,
                f"the input's item references point into {len(referenced)} responses; at "
                f"most {MAX_REFERENCED} are looked up: send earlier items themselves, or "
                "continue with previous_response_id",
                code="too_many_item_references",
            )
            return FilterStatus.STOP_ITERATION
        ids = [previous, *referenced] if previous else referenced
        if not ids:
            return FilterStatus.CONTINUE
        store = self.config.store
        d = defer.gatherResults([store.get(i) for i in ids], consumeErrors=True)
        # The body goes on when the store has answered (at once, for the memory store).
        return d.addCallbacks(
            self._continue,
            lambda f: self._unavailable(
                f.value.subFailure if isinstance(f.value, defer.FirstError) else f
            ),
            callbackArgs=(document, previous, ids),
        )

    def _continue(
        self,
        records: list[dict[str, Any] | None],
        document: dict[str, Any],
        previous: str,
        ids: list[str],
    ) -> FilterStatus:
        if self.done:
            return FilterStatus.STOP_ITERATION
        found = dict(zip(ids, records, strict=True))
        items = self.input or []
        if len(ids) > (1 if previous else 0):
            items = expand_references(items, found, self.owner)
        record = found.get(previous) if previous else None
        if record is not None and record.get("owner") == self.owner:
            items = [*_continued(record), *items]
            del document["previous_response_id"]
            self.callbacks.stream_info.state.set(ResolvedConversation(previous))
        if items is not self.input:
            self.input = items
            document["input"] = items
            try:
                self.callbacks.set_request_json(document)
            except RequestTooLarge as e:
                what = f"continuing response {previous!r}" if previous else "its item references"
                self.callbacks.send_local_reply(
                    413,
                    f"the stored conversation does not fit: {what} makes the request "
                    f"{e.size} bytes, over the gateway's limit of {e.limit} bytes "
                    "(max_request_bytes); start a new conversation with the turns that "
                    "matter, or raise max_request_bytes",
                    code="conversation_too_large",
                )
                return FilterStatus.STOP_ITERATION
        return FilterStatus.CONTINUE

    # -- the answer ----------------------------------------------------------------------

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> FilterStatus:
        # Only a translated answer is kept here (an upstream that speaks Responses
        # keeps its own); the others pass at no cost.
        translated = self.callbacks.stream_info.state.get(Translated)
        if not self.keep or translated is None or translated.client_api != RESPONSES:
            self.callbacks.pass_response_data()
        return FilterStatus.CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        if self.stored:
            return FilterStatus.CONTINUE
        translated = self.callbacks.stream_info.state.get(TranslatedResponse)
        if translated is None:
            return FilterStatus.CONTINUE
        response = translated.response
        # The response is complete: kept before its last bytes leave, so that the next
        # turn finds it wherever it lands. A store that fails to keep it — unreachable, or
        # refusing the record at once — costs the next turn its context, never this
        # answer: the failure is logged and the answer goes on.
        self.stored = True
        record = {"owner": self.owner, "input": self.input or [], "response": response}
        d = defer.maybeDeferred(self.config.store.put, str(response.get("id")), record)
        d.addErrback(
            lambda f: log.warn(
                "could not keep response {id}: {error}",
                id=response.get("id"),
                error=f.getErrorMessage(),
            )
        )
        # The answer's last pieces go on when the store is done (at once, for the
        # memory store), whatever it says.
        return d.addBoth(_passed_on)

    def on_destroy(self) -> None:
        self.done = True


def _passed_on(_: object) -> FilterStatus:
    return FilterStatus.CONTINUE
