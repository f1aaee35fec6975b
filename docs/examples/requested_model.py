"""A filter that rewrites a stream: clients get back the model name they asked for.

Providers answer with their own name for the model (``gpt-4o-mini-2024-07-18``); a
client that asked for an alias of the gateway's (``fast``) gets ``fast`` back, in every
event of a streamed answer and in a plain one. Put it after body-accumulate and before
route, which replaces the alias in the request::

    filters:
      - type: body-accumulate
      - type: mycompany.filters:RequestedModel
      - type: route
"""

from __future__ import annotations

import json

from filterproxy.filters.api import DataResult, FilterStatus, ResponseHead, StreamFilter
from filterproxy.http.sse import EventTooLarge, SSEDecoder, SSEEvent, encode_event


class RequestedModel(StreamFilter):
    """Puts the model the client asked for in the ``model`` field of the response."""

    def __init__(self, config: object = None) -> None:
        super().__init__(config)
        self.requested: str | None = None
        #: The response's events, when it is an event stream.
        self.events: SSEDecoder | None = None
        #: A plain response, until its end.
        self.pieces: list[bytes] = []

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        if end_stream:  # the whole body, as the client sent it (route changes it later)
            body = self.callbacks.request_json()
            if body is not None and isinstance(body.get("model"), str):
                self.requested = body["model"]
        return FilterStatus.CONTINUE

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> FilterStatus:
        if self.requested is not None:
            if (head.headers.get("content-type") or "").startswith("text/event-stream"):
                self.events = SSEDecoder()
            head.headers.remove("content-length")  # the body's length changes
        return FilterStatus.CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        if self.requested is None:
            return FilterStatus.CONTINUE
        if self.events is not None:
            # Each event as soon as it is complete; a piece may end inside one.
            try:
                events = self.events.feed(data)
            except EventTooLarge as e:
                # One event grew past the decoder's limit: the answer cannot be read on.
                self.callbacks.inject_encoded_data(b"".join(map(self._event, e.events)), False)
                self.callbacks.fail_response(502, str(e))
                return FilterStatus.STOP_ITERATION
            out = [self._event(event) for event in events]
            if end_stream:
                out.append(self.events.close())
            return b"".join(out)
        self.pieces.append(data)  # a plain JSON answer: rewritten once it is all here
        if not end_stream:
            return b""
        return self._document(b"".join(self.pieces))

    def _event(self, event: SSEEvent) -> bytes:
        if event.data is None or event.data == "[DONE]":
            return event.raw  # comments, the end marker: as they came
        try:
            chunk = json.loads(event.data)
        except ValueError:
            return event.raw
        if not isinstance(chunk, dict) or "model" not in chunk:
            return event.raw
        chunk["model"] = self.requested
        return encode_event(json.dumps(chunk), event=event.event, id=event.id)

    def _document(self, body: bytes) -> bytes:
        try:
            document = json.loads(body)
        except ValueError:
            return body
        if isinstance(document, dict) and "model" in document:
            document["model"] = self.requested
            return json.dumps(document).encode()
        return body
