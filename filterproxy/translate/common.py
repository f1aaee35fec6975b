"""What both directions of the translation share: the refusal, reason and usage maps,
identifiers, and the error shapes of the two APIs (no I/O)."""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping
from typing import Any, Final

import orjson

from filterproxy.http.apis import CHAT, MESSAGES, RESPONSES
from filterproxy.http.errors import anthropic_error_type
from filterproxy.http.sse import EventTooLarge, SSEDecoder, SSEEvent

__all__ = [
    "CHAT",
    "MAX_ANSWER_BYTES",
    "MESSAGES",
    "RESPONSES",
    "SHAPE_ERRORS",
    "FromChatStream",
    "StreamTranslation",
    "UnmappableAnswer",
    "Untranslatable",
    "anthropic_error",
    "anthropic_usage",
    "chat_tool",
    "chat_usage",
    "dumps",
    "error_fields",
    "finish_from_stop",
    "first_message",
    "loads",
    "loads_exact",
    "new_id",
    "number_at",
    "object_at",
    "openai_error",
    "part_text",
    "split_content",
    "stop_from_finish",
    "string_at",
    "text_of",
]


class Untranslatable(ValueError):
    """A request field that has no counterpart in the upstream's API and would change
    the answer if dropped: the client gets a 400 that names it."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


def _json_kind(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def object_at(value: Any, field: str) -> Mapping[str, Any]:
    """A request's *field* that must be an object, when absent (null) an empty one.

    Raises:
        Untranslatable: it is of another type (a 400 naming it, not a failure later).
    """
    if isinstance(value, dict):
        return value
    if value is None:
        return {}
    raise Untranslatable(field, f"must be an object, not {_json_kind(value)}")


def string_at(value: Any, field: str) -> str:
    """A request's *field* that must be a string, when absent (null) an empty one.

    Raises:
        Untranslatable: it is of another type.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    raise Untranslatable(field, f"must be a string, not {_json_kind(value)}")


def number_at(value: Any, field: str) -> float:
    """A request's *field* that must be a number.

    Raises:
        Untranslatable: it is of another type.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    raise Untranslatable(field, f"must be a number, not {_json_kind(value)}")


#: The most of an upstream's answer a translation holds: a whole answer read before it
#: is rebuilt, or what a Responses stream keeps of its output for its ``done`` events and
#: the whole response its last event carries.
MAX_ANSWER_BYTES: Final = 32 * 1024 * 1024

#: What reading an upstream's answer of an unexpected shape raises in a translation — a
#: field of another type than its API gives it (a number where an object goes, a list
#: where a string goes). The upstream is to blame, not the gateway: the client is told
#: so (a 502, or the stream's error event), as for an answer that is not JSON.
SHAPE_ERRORS: Final = (AttributeError, TypeError, KeyError, IndexError)


class UnmappableAnswer(ValueError):
    """Something in the upstream's answer that the client's API has no form for (a
    content part of a kind no translation knows): the client is told — a 502, or the
    stream's error event — rather than given an answer with a hole in it."""


def first_message(document: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first choice of a whole chat completion *document*, and its message.

    Raises:
        UnmappableAnswer: it has no choice with a message — not an answer to translate
            (an empty one would pass for the model's).
    """
    choices = document.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or not isinstance(message, dict):
        raise UnmappableAnswer(
            "the upstream's answer has no choice with a message: "
            f"{str(document.get('choices'))[:200]!r}"
        )
    return choice, message


def _not_json(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large for a 64-bit float")
    return value


#: The json module held to what orjson takes, but for unpaired surrogates (an upstream
#: that escapes a character outside the BMP may split the pair across two events).
_FALLBACK: Final = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)


def loads(data: str | bytes) -> Any:
    """JSON, decoded by orjson (five times Python's speed on a stream chunk); what it
    refuses and Python accepts — an unpaired surrogate escape — by the json module, which
    refuses the rest as orjson does (NaN, Infinity, nesting past its limit).

    Raises:
        ValueError: not JSON.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            return _FALLBACK.decode(data.decode("utf-8") if isinstance(data, bytes) else data)
        except RecursionError:
            raise ValueError("nested too deeply") from None


def loads_exact(data: str | bytes) -> Any:
    """JSON with every integer kept exact (orjson reads one past 64 bits as a float), held
    to what `loads` accepts: for a whole answer, read once.

    Raises:
        ValueError: not JSON.
    """
    try:
        return _FALLBACK.decode(data.decode("utf-8") if isinstance(data, bytes) else data)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def dumps(document: Any) -> bytes:
    """Compact JSON (UTF-8), by orjson; by the json module when a string holds an
    unpaired surrogate (kept as its escape)."""
    try:
        return orjson.dumps(document)
    except TypeError:
        return json.dumps(document, separators=(",", ":")).encode()


class StreamTranslation:
    """What the stream translations share: the upstream's events in, the client API's
    bytes out, and an end that comes once — the message's last events, or an error.

    `feed` takes each piece of the upstream's body and returns what the events it
    completes become; `end` is called when the body has ended (a last event that lost
    its blank line still counts). A subclass says what one event becomes (`_event`),
    what the end of the body becomes when the stream has not closed itself (`_ended`),
    and how it reports an error (`_error`, which closes it).
    """

    __slots__ = ("closed", "decoder", "failure")

    def __init__(self) -> None:
        #: Its limit on one event is the config's ``max_event_bytes`` (set by the filter).
        self.decoder = SSEDecoder()
        self.closed = False
        #: Why the upstream's stream could not be read on — an event past the decoder's
        #: limit, an event that is not JSON — once it could not: the error is in the
        #: output, and whoever passes it on must end the answer as a failure (the
        #: upstream is not worth reading further). None while it reads well.
        self.failure: str | None = None

    def feed(self, data: bytes) -> bytes:
        """The client API's bytes for the events *data* completes."""
        if self.closed:
            return b""
        out: list[bytes] = []
        too_large: EventTooLarge | None = None
        try:
            events = self.decoder.feed(data)
        except EventTooLarge as e:
            events, too_large = e.events, e
        for event in events:
            if self.closed:
                break
            try:
                self._event(event, out)
            except SHAPE_ERRORS as unreadable:
                # (a name of its own: mypyc gives `e` above EventTooLarge's type)
                self._unreadable(unreadable, event.data, out)
        if too_large is not None and not self.closed:
            self.failure = str(too_large)
            self._error(out, 502, self.failure)
        return b"".join(out)

    def fail(self, message: str) -> bytes:
        """The upstream's stream cannot be read on (its compressed bytes broke a bound,
        say): the client API's error event, which closes the stream; `failure` is
        *message*."""
        if self.closed:
            return b""
        out: list[bytes] = []
        self.failure = message
        self._error(out, 502, message)
        return b"".join(out)

    def end(self) -> bytes:
        """The upstream's body ended: whatever must still be sent."""
        if self.closed:
            return b""
        out = [self.feed(b"\n\n")] if self.decoder.pending.strip() else []
        if not self.closed:
            try:
                self._ended(out)
            except SHAPE_ERRORS as unreadable:
                self._unreadable(unreadable, None, out)
        return b"".join(out)

    def _unreadable(self, error: Exception, data: str | None, out: list[bytes]) -> None:
        """An event (or, with no *data*, what the events added up to) had a shape the
        translation could not read: the client API's error event, which closes the
        stream — also when the stream had begun to close (its last events not out)."""
        shown = f": {data[:100]!r}" if data else ""
        self.failure = (
            "the upstream sent an event of a shape the gateway cannot read "
            f"({type(error).__name__}: {error}){shown}"
        )
        self._error(out, 502, self.failure)

    def _json(self, text: str, out: list[bytes]) -> dict[str, Any] | None:
        """An event's JSON object; None for another JSON value, and an error (closing
        the stream) when it is not JSON."""
        try:
            document = loads(text)
        except ValueError:
            self.failure = f"the upstream sent an event that is not JSON: {text[:100]!r}"
            self._error(out, 502, self.failure)
            return None
        return document if isinstance(document, dict) else None

    def _event(self, event: SSEEvent, out: list[bytes]) -> None:
        raise NotImplementedError

    def _ended(self, out: list[bytes]) -> None:
        raise NotImplementedError

    def _error(
        self,
        out: list[bytes],
        status: int,
        message: str,
        kind: str | None = None,
        code: str | None = None,
    ) -> None:
        raise NotImplementedError


class FromChatStream(StreamTranslation):
    """What the translations of a Chat Completions stream share: ``[DONE]``, error
    chunks, usage (Groq's ``x_groq.usage`` too), and the first choice's reasoning
    (``reasoning_content`` or ``reasoning``), content, tool calls and finish reason.

    A subclass says what each becomes (`_start`, `_reasoning`, `_content`,
    `_tool_call`) and how the answer ends (`_close`, `_error`). The answer closes once:
    on the usage chunk after the finish reason, on ``[DONE]`` (the upstream says it is
    complete) or at the end of the body; a body that ends before a finish reason, or a
    ``[DONE]`` before anything, is an error.
    """

    __slots__ = ("finish_reason", "started", "usage")

    def __init__(self) -> None:
        super().__init__()
        self.started = False
        self.finish_reason: Any = None
        self.usage: dict[str, Any] | None = None

    def _event(self, event: SSEEvent, out: list[bytes]) -> None:
        text = event.data
        if text is None:
            self._comment(out)
            return
        if text == "[DONE]":
            if self.finish_reason is None and not self.started:
                self._error(out, 502, "the upstream's stream ended before any answer")
            else:
                self._close(out)
            return
        chunk = self._json(text, out)
        if chunk is None:
            return
        if "error" in chunk or event.event == "error":
            fields = error_fields(chunk)
            if fields is None:
                self._error(out, 500, text)
            else:
                self._error(out, 500, fields[0], fields[1], fields[2])
            return
        self._chunk(chunk, out)

    def _ended(self, out: list[bytes]) -> None:
        # The answer's last events — or, when it stopped before its finish reason, an
        # error (never a faked clean end).
        if self.finish_reason is None:
            self._error(out, 502, "the upstream's stream ended before the answer was complete")
        else:
            self._close(out)

    def _chunk(self, chunk: Mapping[str, Any], out: list[bytes]) -> None:
        if not self.started:
            self.started = True
            self._start(chunk, out)
        usage = chunk.get("usage")
        if not isinstance(usage, dict):
            extra = chunk.get("x_groq")
            usage = extra.get("usage") if isinstance(extra, dict) else None
        if isinstance(usage, dict):
            self.usage = usage
        choices = chunk.get("choices")
        if not choices:
            if isinstance(usage, dict) and self.finish_reason is not None:
                self._close(out)  # the usage chunk after the finish reason: all is known
            return
        choice = choices[0]
        if not isinstance(choice, dict):
            return
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self._reasoning(reasoning, out)
            content = delta.get("content")
            if isinstance(content, str):
                if content:
                    self._content(content, out)
            elif isinstance(content, list) and not self._parts(content, out):
                return
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for position, call in enumerate(calls):
                    if isinstance(call, dict):
                        index = call.get("index")
                        # Gemini's compatibility layer leaves the index out.
                        function = call.get("function")
                        self._tool_call(
                            index if isinstance(index, int) else position,
                            call.get("id"),
                            function if isinstance(function, dict) else {},
                            out,
                        )
        finish = choice.get("finish_reason")
        if finish:
            self.finish_reason = finish

    def _parts(self, parts: list[Any], out: list[bytes]) -> bool:
        """Content given as a list of parts (Mistral's reasoning models: thinking, then
        text), in order; False when a part has no form in the client's API (the stream
        has ended in an error)."""
        for part in parts:
            try:
                found = part_text(part)
            except UnmappableAnswer as e:
                self._error(out, 502, str(e))
                return False
            if found is not None and found[1]:
                if found[0]:
                    self._reasoning(found[1], out)
                else:
                    self._content(found[1], out)
        return True

    def _comment(self, out: list[bytes]) -> None:
        """An upstream's keep-alive comment (nothing, unless the client API has one)."""

    def _start(self, chunk: Mapping[str, Any], out: list[bytes]) -> None:
        raise NotImplementedError

    def _reasoning(self, text: str, out: list[bytes]) -> None:
        raise NotImplementedError

    def _content(self, text: str, out: list[bytes]) -> None:
        raise NotImplementedError

    def _tool_call(
        self, index: int, call_id: Any, function: dict[str, Any], out: list[bytes]
    ) -> None:
        """A tool call entry: *index* (its position when the upstream gave none), its
        id when it opens a call, and its ``function`` (name, arguments fragment)."""
        raise NotImplementedError

    def _close(self, out: list[bytes]) -> None:
        raise NotImplementedError


def chat_tool(
    name: Any, parameters: Any, description: Any = None, strict: Any = None
) -> dict[str, Any]:
    """A Chat Completions function tool (a schema-less tool takes an empty object)."""
    function: dict[str, Any] = {
        "name": name,
        "parameters": parameters or {"type": "object", "properties": {}},
    }
    if description:
        function["description"] = description
    if isinstance(strict, bool):
        function["strict"] = strict
    return {"type": "function", "function": function}


def text_of(content: Any, separator: str = "", path: str | None = None) -> str:
    """The text of a string, or of a list of text parts (OpenAI) or blocks (Anthropic),
    joined with *separator*. A text part whose text is not a string has none; in a
    request (its field's *path* given) it is refused.

    Raises:
        Untranslatable: with *path*, a text part's text is not a string.
    """
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for i, part in enumerate(content if isinstance(content, list) else []):
        if isinstance(part, dict) and part.get("type") == "text":
            text = part.get("text", "")
            if isinstance(text, str):
                texts.append(text)
            elif path is not None:
                string_at(text, f"{path}[{i}].text")
    return separator.join(texts)


#: Content parts that are answer text, and the key that holds it.
_TEXT_KEYS: Final = {"text": "text", "output_text": "text", "refusal": "refusal"}
#: Content parts that are the model's reasoning, and the key that holds it.
_REASONING_KEYS: Final = {
    "thinking": "thinking",
    "reasoning": "reasoning",
    "reasoning_text": "text",
}


def part_text(part: Any) -> tuple[bool, str] | None:
    """(is reasoning, text) of one content part of an answer: text (``text``,
    ``output_text``, ``refusal``) or reasoning (``thinking`` — Mistral's holds a list
    of text parts, others a string — ``reasoning``, ``reasoning_text``); None for a
    part that carries no text of either kind (a thinking part's signature alone).

    Raises:
        UnmappableAnswer: a part of another kind (an image, a citation, audio…).
    """
    if isinstance(part, str):
        return False, part
    kind = part.get("type") if isinstance(part, dict) else None
    key = _TEXT_KEYS.get(kind) if isinstance(kind, str) else None
    if key is not None:
        text = part.get(key)
        return (False, text) if isinstance(text, str) else None
    key = _REASONING_KEYS.get(kind) if isinstance(kind, str) else None
    if key is not None:
        value = part.get(key)
        if isinstance(value, list):
            value = "".join(p.get("text", "") for p in value if isinstance(p, dict))
        if not isinstance(value, str):
            value = part.get("text")
        return (True, value) if isinstance(value, str) else None
    raise UnmappableAnswer(
        f"the upstream answered with a content part of type {kind!r}, which the "
        "translation cannot carry (it carries text and thinking parts)"
    )


def split_content(content: Any) -> tuple[str, str]:
    """(reasoning, text) of a whole answer's ``content``: a string, or a list of parts
    (`part_text`).

    Raises:
        UnmappableAnswer: a part that is neither text nor reasoning.
    """
    if isinstance(content, str):
        return "", content
    if not isinstance(content, list):
        return "", ""
    reasoning: list[str] = []
    text: list[str] = []
    for part in content:
        found = part_text(part)
        if found is not None:
            (reasoning if found[0] else text).append(found[1])
    return "".join(reasoning), "".join(text)


def new_id(prefix: str) -> str:
    """A fresh identifier in the style of the API (``msg_…``, ``chatcmpl-…``)."""
    return prefix + secrets.token_hex(12)


# -- finish reasons ------------------------------------------------------------------

_STOP_FROM_FINISH: Final = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_FINISH_FROM_STOP: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "compaction": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def stop_from_finish(finish_reason: Any, saw_tool_call: bool) -> str:
    """Anthropic's ``stop_reason`` for an OpenAI ``finish_reason``. Some providers say
    ``stop`` after tool calls (Gemini): a turn that called tools ends in ``tool_use``."""
    reason = _STOP_FROM_FINISH.get(finish_reason, "end_turn") if finish_reason else "end_turn"
    if saw_tool_call and reason == "end_turn":
        return "tool_use"
    return reason


def finish_from_stop(stop_reason: Any) -> str:
    """OpenAI's ``finish_reason`` for an Anthropic ``stop_reason``."""
    return _FINISH_FROM_STOP.get(stop_reason, "stop") if stop_reason else "stop"


# -- usage ---------------------------------------------------------------------------


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def anthropic_usage(usage: Mapping[str, Any]) -> dict[str, int]:
    """Anthropic's usage from OpenAI's: its ``input_tokens`` leave cached tokens out,
    OpenAI's ``prompt_tokens`` count them in."""
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    written = _int(usage.get("cache_creation_input_tokens")) or _int(
        usage.get("cache_creation_tokens")
    )
    return {
        "input_tokens": max(_int(usage.get("prompt_tokens")) - cached - written, 0),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
        "output_tokens": _int(usage.get("completion_tokens")),
    }


def chat_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's usage from Anthropic's (cache reads and writes counted into the prompt)."""
    read = _int(usage.get("cache_read_input_tokens"))
    written = _int(usage.get("cache_creation_input_tokens"))
    prompt = _int(usage.get("input_tokens")) + read + written
    completion = _int(usage.get("output_tokens"))
    result: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read},
    }
    if written:
        result["cache_creation_input_tokens"] = written
    details = usage.get("output_tokens_details")
    if isinstance(details, dict) and _int(details.get("thinking_tokens")):
        result["completion_tokens_details"] = {
            "reasoning_tokens": _int(details.get("thinking_tokens"))
        }
    return result


# -- errors --------------------------------------------------------------------------

_ANTHROPIC_KINDS: Final = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "overloaded_error",
    }
)
_OPENAI_TYPES: Final = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}


def openai_error_type(status: int) -> str:
    if status in _OPENAI_TYPES:
        return _OPENAI_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "server_error"


def error_fields(document: Any) -> tuple[str, str | None, str | None] | None:
    """(message, type, code) of an error document in either API's shape — OpenAI's
    ``{"error": {...}}`` or Anthropic's ``{"type": "error", "error": {...}}`` — or None
    when *document* is not an error."""
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    if isinstance(error, str):
        return error, None, None
    if not isinstance(error, dict):
        return None
    message = error.get("message")
    kind = error.get("type")
    code = error.get("code")
    return (
        message if isinstance(message, str) else json.dumps(error),
        kind if isinstance(kind, str) else None,
        code if isinstance(code, str) else None,
    )


def anthropic_error(status: int, message: str, kind: str | None = None) -> dict[str, Any]:
    """Anthropic's error document. A type from the other API is replaced by the one
    Anthropic's SDK knows for *status*."""
    if kind not in _ANTHROPIC_KINDS:
        kind = anthropic_error_type(status)
    return {"type": "error", "error": {"type": kind, "message": message}}


def openai_error(
    status: int, message: str, kind: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error document (``param`` and ``code`` as its SDK reads them)."""
    if kind is None or (kind in _ANTHROPIC_KINDS and kind != "rate_limit_error"):
        kind = openai_error_type(status)
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
