"""usage: read token counts from the provider's ``usage`` report as the response passes.

The response is passed on unchanged and undelayed: each piece is searched for
``"usage"`` (a C substring search) and only the usage object itself is decoded, from
where it starts — no line splitting and no re-serialising. It works on event streams
(OpenAI's last chunk, Anthropic's ``message_start`` / ``message_delta``) and on plain JSON
responses alike; the counts land in `StreamInfo.prompt_tokens` / ``completion_tokens``
for the access log and metrics, and, kept apart by kind as providers price them
(`token_usage`), in the request's `TokenUsage` record. The usage filter reads the
upstream's answer (before a translation rebuilds it), so the shapes it meets are the
providers': OpenAI's chat and Responses usage, Anthropic's Messages usage.

Option ``include_usage: true``: streaming chat/completions requests that do not ask for
usage get ``stream_options: {"include_usage": true}`` (through the chain's request
document, `IFilterCallbacks.set_request_json`), so the provider reports it; the extra
usage-only chunk this adds at the end (``"choices": []``) is then removed from the
response, so the client sees the stream it asked for. (OpenAI also puts ``"usage": null``
in the other chunks of such a stream; those are left as they are — clients ignore it.)
In that mode the response is decoded as events (`filterproxy.http.sse`) and passed on
whole, each as the bytes it came in: a piece that ends inside an event is held until the
event's end arrives, which no SSE client could have used earlier anyway — up to
``max_event_bytes``: an event still unfinished past it fails the answer with the client
API's error event.

A compressed answer (gzip, deflate) is inflated on the side within bounds
(`filterproxy.http.inflate`), never whole. The client gets it in the upstream's coding:
as it came when only read, compressed again when the usage chunk is taken out of it (so
about as many bytes as the upstream sent, never the inflated ones). Past the bounds the
answer fails: with the error event in a stream this filter rewrites, cut off in one it
only reads (nothing can be put into the upstream's compressed bytes). An answer that the
translate filter rebuilds after this one is left to it: it inflates it within the same
bounds and tells the client in its API.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from filterproxy.config import Node
from filterproxy.filters.api import (
    DataResult,
    FilterContext,
    FilterStatus,
    RequestHead,
    ResponseHead,
    StreamFilter,
)
from filterproxy.filters.records import TokenUsage, Translated
from filterproxy.http.apis import client_api
from filterproxy.http.errors import error_body
from filterproxy.http.inflate import InflateError, Inflater, inflater_for
from filterproxy.http.sse import DEFAULT_MAX_EVENT_BYTES, EventTooLarge, SSEDecoder, SSEEvent

__all__ = [
    "UsageConfig",
    "UsageFilter",
    "UsageScanner",
    "is_usage_only_event",
    "marker_start_at_end",
    "token_counts",
    "token_usage",
    "usage_fields",
]

_MARKER = b'"usage"'
#: Give up on a usage object that has not ended within this many bytes.
_MAX_CAPTURE = 64 * 1024
_decoder = json.JSONDecoder()
#: What every usage-only chunk has (the other chunks of a stream never do).
_EMPTY_CHOICES: Final = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_WHITESPACE = b" \t\r\n"


#: The last byte of each start of the marker (``"``, ``"u``, … ``"usage``).
_MARKER_START_ENDS: Final = frozenset(_MARKER[:-1])


def marker_start_at_end(data: bytes) -> bytes:
    """The longest end of *data* that is a start of ``"usage"`` (not all of it), or
    ``b""``: what must be kept to find a marker that continues in the next piece."""
    if not data:
        return b""
    last = data[-1]
    if last == 0x0A or last not in _MARKER_START_ENDS:
        return b""  # SSE pieces end in a newline: one byte tells
    for n in range(len(_MARKER) - 1, 0, -1):
        if data.endswith(_MARKER[:n]):
            return _MARKER[:n]
    return b""


def _count(usage: Mapping[str, Any], name: str, other: str) -> int | None:
    value = usage.get(name)
    if value is None:
        value = usage.get(other)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def token_counts(usage: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens of a usage object, OpenAI's or Anthropic's names.
    Anthropic counts cached input apart (``cache_read_input_tokens``,
    ``cache_creation_input_tokens``): it is added, as OpenAI's prompt_tokens include it."""
    prompt = _count(usage, "prompt_tokens", "input_tokens")
    if prompt is not None and "prompt_tokens" not in usage:
        for cached in ("cache_read_input_tokens", "cache_creation_input_tokens"):
            value = usage.get(cached)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                prompt += value
    return prompt, _count(usage, "completion_tokens", "output_tokens")


def _natural(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


#: The counts a usage object may carry, by the name `usage_fields` keeps them under: the
#: provider's name, or ``parent.child`` for a count inside a details object.
_TOP_FIELDS: Final = (
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)
_NESTED_FIELDS: Final = (
    ("prompt_tokens_details", "cached_tokens"),
    ("completion_tokens_details", "reasoning_tokens"),
    ("input_tokens_details", "cached_tokens"),
    ("output_tokens_details", "reasoning_tokens"),
    ("cache_creation", "ephemeral_1h_input_tokens"),
)


def usage_fields(usage: Mapping[str, Any]) -> dict[str, int]:
    """The token counts of a usage object that `token_usage` reads, flat.

    Only what it carries: Anthropic's stream reports usage twice (``message_start`` with
    the input and cache counts, ``message_delta`` with the output), and the later
    report's fields are laid over the earlier's, so none is lost."""
    fields: dict[str, int] = {}
    for name in _TOP_FIELDS:
        value = _natural(usage.get(name))
        if value is not None:
            fields[name] = value
    for parent, child in _NESTED_FIELDS:
        details = usage.get(parent)
        if isinstance(details, dict):
            value = _natural(details.get(child))
            if value is not None:
                fields[f"{parent}.{child}"] = value
    if "input_tokens_details" in usage or "output_tokens_details" in usage:
        fields["responses"] = 1  # OpenAI's Responses usage: its input_tokens include cache
    return fields


def token_usage(fields: Mapping[str, int]) -> TokenUsage | None:
    """The `TokenUsage` of a provider's usage counts (`usage_fields`), in OpenAI's
    convention (input counts cached and written input, output counts reasoning), or
    None when it has no input or output count.

    OpenAI chat: ``prompt_tokens`` (of which ``prompt_tokens_details.cached_tokens``),
    ``completion_tokens`` (of which ``completion_tokens_details.reasoning_tokens``).
    OpenAI Responses: ``input_tokens`` (cache included, ``input_tokens_details``),
    ``output_tokens`` (``output_tokens_details``). Anthropic: ``input_tokens`` counts
    only the input that was neither read from nor written to the cache
    (``cache_read_input_tokens``, ``cache_creation_input_tokens``, of which
    ``cache_creation.ephemeral_1h_input_tokens`` kept an hour): they are added."""
    get = fields.get
    if "prompt_tokens" in fields or "completion_tokens" in fields:
        return TokenUsage(
            input=get("prompt_tokens", 0),
            cached_input=get("prompt_tokens_details.cached_tokens", 0),
            output=get("completion_tokens", 0),
            reasoning=get("completion_tokens_details.reasoning_tokens", 0),
        )
    if "input_tokens" not in fields and "output_tokens" not in fields:
        return None
    if "responses" in fields:
        return TokenUsage(
            input=get("input_tokens", 0),
            cached_input=get("input_tokens_details.cached_tokens", 0),
            output=get("output_tokens", 0),
            reasoning=get("output_tokens_details.reasoning_tokens", 0),
        )
    read = get("cache_read_input_tokens", 0)
    written = get("cache_creation_input_tokens", 0)
    return TokenUsage(
        input=get("input_tokens", 0) + read + written,
        cached_input=read,
        cache_write=written,
        cache_write_1h=get("cache_creation.ephemeral_1h_input_tokens", 0),
        output=get("output_tokens", 0),
        reasoning=get("output_tokens_details.reasoning_tokens", 0),
    )


class UsageScanner:
    """Finds the usage objects in a byte stream fed piece by piece (no I/O)."""

    __slots__ = ("capture", "completion_tokens", "fields", "prompt_tokens", "tail", "usage")

    def __init__(self) -> None:
        #: The end of the previous piece when it may be the start of a marker split
        #: between pieces (``"us``), else empty.
        self.tail = b""
        #: Bytes from just after a marker, while its object is incomplete.
        self.capture: bytes | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        #: The counts of the usage objects so far, each laid over the ones before
        #: (`usage_fields`), and what they come to.
        self.fields: dict[str, int] = {}
        self.usage: TokenUsage | None = None

    def feed(self, data: bytes) -> bool:
        """Search *data*, the next piece of the stream; True when a usage object was
        decoded (the counts may have changed)."""
        text: bytes | None
        if not data:
            return False
        if self.capture is not None:
            text = self.capture + data
        else:
            window = self.tail + data if self.tail else data
            i = window.find(_MARKER)
            if i < 0:
                self.tail = marker_start_at_end(window)
                return False
            text = window[i + len(_MARKER) :]
        seen = (self.prompt_tokens, self.completion_tokens, self.usage)
        while text is not None:
            text = self._decode(text)
        return (self.prompt_tokens, self.completion_tokens, self.usage) != seen

    def _decode(self, text: bytes) -> bytes | None:
        """Decode the usage object at the start of *text* (just after a marker); return
        what follows it, to search again, or None when done with this piece."""
        self.capture = None
        self.tail = b""
        j = 0
        while j < len(text) and text[j] in _WHITESPACE:
            j += 1
        if j < len(text) and text[j] == 0x3A:  # ':'
            j += 1
            while j < len(text) and text[j] in _WHITESPACE:
                j += 1
        if j >= len(text):
            self.capture = text  # the value has not arrived yet
            return None
        if text[j] == 0x7B:  # '{'
            try:
                # latin-1 keeps byte offsets; the keys and numbers we read are ASCII.
                usage, end = _decoder.raw_decode(text.decode("latin-1"), j)
            except json.JSONDecodeError:
                if len(text) < _MAX_CAPTURE:
                    self.capture = text  # the object continues in the next piece
                return None
            if isinstance(usage, dict):
                prompt, completion = token_counts(usage)
                if prompt is not None:
                    self.prompt_tokens = prompt
                if completion is not None:
                    self.completion_tokens = completion
                fields = usage_fields(usage)
                if fields:
                    self.fields.update(fields)
                    self.usage = token_usage(self.fields)
            rest = text[end:]
        else:
            rest = text[j:]  # "usage": null, or a string mentioning usage
        i = rest.find(_MARKER)
        if i < 0:
            self.tail = marker_start_at_end(rest)
            return None
        return rest[i + len(_MARKER) :]


#: The content codings whose responses the scanner can read (inflated on the side): the
#: upstream is asked only for these (the client still gets a compressed answer where it
#: asked for one), so the provider's usage stays readable.
READABLE_CODINGS: Final = frozenset({"gzip", "deflate", "identity"})


def is_usage_only_event(event: SSEEvent) -> bool:
    """Whether an SSE event is the chunk ``include_usage`` adds: a JSON object with
    ``"choices": []`` and a usage object."""
    data = event.data
    if data is None or '"usage"' not in data:
        return False
    try:
        document = json.loads(data)
    except ValueError:
        return False
    return (
        isinstance(document, dict)
        and document.get("choices") == []
        and isinstance(document.get("usage"), dict)
    )


def _without_usage(events: list[SSEEvent]) -> list[bytes]:
    return [e.raw for e in events if not is_usage_only_event(e)]


def wants_usage_injection(path: str, body: Mapping[str, Any] | None) -> bool:
    """Whether a request should get ``stream_options.include_usage``: a streaming
    OpenAI-style (chat) completion that did not ask for usage itself."""
    if body is None or body.get("stream") is not True:
        return False
    if not path.split("?", 1)[0].endswith("/completions"):
        return False
    options = body.get("stream_options")
    if options is None:
        return True
    return isinstance(options, dict) and options.get("include_usage") is not True


@dataclass(frozen=True)
class UsageConfig:
    include_usage: bool = False
    #: The largest upstream event held while the usage chunk is taken out of a stream.
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES


class UsageFilter(StreamFilter):
    """Reads token usage from responses; optionally asks streams to report it."""

    provides = ("usage",)

    config: UsageConfig

    @classmethod
    def variant(cls, config: Any) -> type[StreamFilter]:
        """With ``include_usage``, the class that also looks at requests."""
        return _InjectingUsageFilter if config.include_usage else cls

    @classmethod
    def configure(cls, options: Mapping[str, Any], context: FilterContext) -> UsageConfig:
        keys = Node(dict(options), context.path, context.environ).mapping({"include_usage"})
        include = keys["include_usage"].boolean() if "include_usage" in keys else False
        return UsageConfig(include, context.config.max_event_bytes)

    def __init__(self, config: UsageConfig) -> None:
        super().__init__(config)
        self.scanner = UsageScanner()
        #: Inflates a compressed response for the scanner (the bytes pass as they came).
        self.inflater: Inflater | None = None
        #: Compresses a stream again after the usage chunk is taken out (zlib's
        #: compressor: its type is not importable).
        self.deflater: Any = None
        self.path = ""
        #: True when this filter added include_usage and must remove the usage chunk.
        self.injected = False
        #: Decodes the response into events while usage chunks are removed.
        self.events: SSEDecoder | None = None

    def response_codings(self) -> frozenset[str] | None:
        return READABLE_CODINGS

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> FilterStatus:
        encoding = head.headers.get("content-encoding")
        if encoding is not None:
            try:
                self.inflater = inflater_for(encoding)
            except InflateError:
                self.inflater = None
                self.callbacks.pass_response_data()  # a coding it cannot read: as it came
                return FilterStatus.CONTINUE
            if (
                self.inflater is not None
                and self.callbacks.stream_info.state.get(Translated) is not None
            ):
                # Translated after this filter: the translate filter inflates it.
                self.inflater = None
                self.callbacks.pass_response_data()
                return FilterStatus.CONTINUE
        if (
            self.injected
            and head.status == 200
            and (head.headers.get("content-type") or "").startswith("text/event-stream")
        ):
            self.events = SSEDecoder(self.config.max_event_bytes)
            # An event may be removed from this stream: its length is no longer the
            # upstream's (a client would wait for the bytes that never come).
            head.headers.remove("content-length")
            if self.inflater is not None:
                # Events are removed from this stream: compressed again, as it came.
                wbits = 31 if self.inflater.coding == "gzip" else 15
                self.deflater = zlib.compressobj(6, zlib.DEFLATED, wbits)
        return FilterStatus.CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        scanner = self.scanner
        inflater = self.inflater
        plain = data
        if inflater is not None and not self.callbacks.stream_info.outcome:
            try:
                plain = inflater.feed(data)
            except InflateError as e:
                return self._refuse(str(e), b"")
        if scanner.feed(plain):
            info = self.callbacks.stream_info
            info.prompt_tokens = scanner.prompt_tokens
            info.completion_tokens = scanner.completion_tokens
            if scanner.usage is not None:
                info.state.set(scanner.usage)
        decoder = self.events
        if decoder is None:
            return FilterStatus.CONTINUE
        if (
            inflater is None
            and decoder.between_events
            and data.endswith(b"\n\n")
            and _EMPTY_CHOICES.search(data) is None
        ):
            # Whole events, and none of them can be the usage chunk: on as they came,
            # without decoding (most pieces of a stream).
            return FilterStatus.CONTINUE
        if not decoder.between_events and self.callbacks.stream_info.outcome:
            decoder.close()  # the upstream broke off mid-event: the gateway's error follows
        try:
            events = decoder.feed(plain)
        except EventTooLarge as e:
            return self._refuse(str(e), b"".join(_without_usage(e.events)))
        kept = b"".join(_without_usage(events))
        if end_stream:
            kept += decoder.close()  # an unfinished last event goes on as it came
        if self.deflater is not None:
            return self._compressed(kept, end_stream)
        return kept

    def _compressed(self, data: bytes, end_stream: bool) -> bytes:
        """*data* in the upstream's coding again, flushed so that the client can read
        each event as it comes."""
        if not data and not end_stream:
            return b""
        deflater = self.deflater
        out: bytes = deflater.compress(data) if data else b""
        tail: bytes = deflater.flush(zlib.Z_FINISH if end_stream else zlib.Z_SYNC_FLUSH)
        return out + tail

    def _refuse(self, message: str, kept: bytes) -> DataResult:
        """The answer broke a bound where this filter reads it: it fails. A stream this
        filter rewrites gets the client API's error event after *kept* (the events that
        came before it); one it only reads is cut off."""
        frame = b""
        if self.events is not None:
            info = self.callbacks.stream_info
            body = error_body(
                502, message, code="upstream_error", api=info.api or client_api(info.client_path)
            )
            frame = kept + b"event: error\ndata: " + body + b"\n\n"
            if self.deflater is not None:
                frame = self._compressed(frame, True)
        self.callbacks.fail_response(502, message, frame=frame)
        return FilterStatus.STOP_ITERATION


class _InjectingUsageFilter(UsageFilter):
    """`UsageFilter` with ``include_usage``: asks streaming completions for usage."""

    def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
        self.path = head.path
        return FilterStatus.CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        if not end_stream:
            return FilterStatus.CONTINUE
        body = self.callbacks.request_json()
        if body is not None and wants_usage_injection(self.path, body):
            options = body.get("stream_options")
            body["stream_options"] = {**(options or {}), "include_usage": True}
            self.callbacks.set_request_json(body)
            self.injected = True
        return FilterStatus.CONTINUE
