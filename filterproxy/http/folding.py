"""Folding runs of stream deltas into fewer events (no I/O).

A client on a poor link, or one that fell behind, is better served by one event that
says "Hello, world" than by five that say it a word at a time: fewer events, fewer
bytes of JSON around the words, and the same text once assembled. `fold_events` is
given the complete server-sent events held for such a client and returns the bytes to
send: each run of consecutive deltas that add to the same text folded into one event,
everything else passed as it came, byte for byte, in order.

Example, a window of held events sent folded::

    decoder = SSEDecoder()
    held = decoder.feed(piece)
    transport.write(b"".join(fold_events(held, drop_comments=True)))

What folds (the concatenation of the run's deltas is what the client would have
assembled from the separate events; every other key of the document is kept from the
run's first event):

- Chat Completions chunks with one choice, no ``finish_reason``, no ``usage``, no
  logprobs, and a delta whose only news is ``content``, ``reasoning_content``,
  ``reasoning`` or the ``function.arguments`` of one tool call (no ``id``, ``name`` or
  ``type``); a ``role`` makes a chunk stay as it is. A run is one chunk id, choice,
  field and tool call.
- Messages ``content_block_delta`` events of type ``text_delta``, ``thinking_delta`` and
  ``input_json_delta``; a run is one block and delta type.
- Responses text, refusal, reasoning, function-call and custom-tool-input deltas; a run
  is one event type and item (output, content or summary index); the folded event takes
  the ``sequence_number`` of the run's last and loses the ``obfuscation`` padding.

An event folds only when it has exactly one ``data`` line holding a JSON object, no
``retry``, no comment and no field a client would not read; the ``event`` name is the
same across a run. A folded event carries the ``id`` of the run's last event, so that
a client's ``Last-Event-ID`` stays exact (an event without an id does not join a run
that has one: the client would have kept the earlier id). Anything malformed is simply
passed as it is.

Cost: each candidate event is parsed once (after a look for cheap markers in its data),
and each folded run dumped once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import orjson

from filterproxy.http.sse import SSEEvent, encode_event

__all__ = ["FoldObserver", "fold_events"]

#: Called for each folded event: the id it carries (None when none) and how many events
#: it stands for.
FoldObserver = Callable[[str | None, int], None]

#: The string fields of a chat delta that a client concatenates.
_CHAT_FIELDS: Final = frozenset({"content", "reasoning_content", "reasoning"})

#: The Messages delta types that fold, and the field each one adds to.
_MESSAGES_FIELDS: Final = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "input_json_delta": "partial_json",
}

#: The Responses delta events that fold, and the keys that name what they add to.
_RESPONSES_KEYS: Final = {
    "response.output_text.delta": ("item_id", "output_index", "content_index"),
    "response.refusal.delta": ("item_id", "output_index", "content_index"),
    "response.function_call_arguments.delta": ("item_id", "output_index"),
    "response.reasoning_summary_text.delta": ("item_id", "output_index", "summary_index"),
    "response.reasoning_text.delta": ("item_id", "output_index", "content_index"),
    "response.custom_tool_call_input.delta": ("item_id", "output_index"),
}

#: The fields an event that folds may have (its ``data`` line, its name, its id).
_KNOWN_FIELDS: Final = frozenset({b"data", b"event", b"id"})

#: A delta that may fold: (its run key, the parsed document, the object holding the
#: text, the text's key in it, the text).
_Delta = tuple[tuple[Any, ...], dict[str, Any], dict[str, Any], str, str]


def fold_events(
    events: Sequence[SSEEvent],
    on_fold: FoldObserver | None = None,
    drop_comments: bool = False,
) -> list[bytes]:
    """The bytes to send for *events* (complete events, in stream order), one item per
    event sent, with each run of deltas folded into one event (see the module's
    description); a run of one, and every other event, is its exact bytes.

    Args:
        events: the held events.
        on_fold: told of every event sent that stands for more than one, with the id it
            carries (None when it has none) and how many it stands for.
        drop_comments: leave out the blocks that a client would do nothing with — comments
            (keep-alives) and blank lines: no data, id or retry — when there is at least
            one data event to send (with none, they are what keeps the link alive).

    Returns:
        The events to send, in order.
    """
    drop = drop_comments and any(event.data is not None for event in events)
    out: list[bytes] = []
    run: list[SSEEvent] = []
    deltas: list[_Delta] = []
    for event in events:
        if drop and event.data is None and event.id is None and event.retry is None:
            continue
        delta = _delta_of(event)
        if delta is None:
            if run:
                out.append(_folded(run, deltas, on_fold))
                run, deltas = [], []
            out.append(event.raw)
            continue
        if run and (delta[0] != deltas[0][0] or (event.id is None and run[-1].id is not None)):
            out.append(_folded(run, deltas, on_fold))
            run, deltas = [], []
        run.append(event)
        deltas.append(delta)
    if run:
        out.append(_folded(run, deltas, on_fold))
    return out


def _folded(run: list[SSEEvent], deltas: list[_Delta], on_fold: FoldObserver | None) -> bytes:
    """The one event that stands for *run* (its exact bytes when it is one event)."""
    if len(run) == 1:
        return run[0].raw
    key, document, target, field, _ = deltas[0]
    target[field] = "".join([delta[4] for delta in deltas])
    document.pop("obfuscation", None)
    if key[0] == "responses" and "sequence_number" in document:
        document["sequence_number"] = deltas[-1][1].get("sequence_number")
    last = run[-1]
    if on_fold is not None:
        on_fold(last.id, len(run))
    return encode_event(orjson.dumps(document).decode(), event=last.event, id=last.id)


def _delta_of(event: SSEEvent) -> _Delta | None:
    """The delta *event* carries, when it is one that may fold; else None."""
    data = event.data
    if (
        data is None
        or data[:1] != "{"
        or "\n" in data  # more than one data line
        or event.retry is not None
        or event.comments
    ):
        return None
    name = event.event
    if name is None:
        if '"choices"' in data:
            parse: Callable[[dict[str, Any], str | None], _Delta | None] = _chat_delta
        elif 'content_block_delta"' in data:
            parse = _messages_delta
        elif '.delta"' in data:
            parse = _responses_delta
        else:
            return None
    elif name == "content_block_delta":
        parse = _messages_delta
    elif name in _RESPONSES_KEYS:
        parse = _responses_delta
    elif '"choices"' in data:
        parse = _chat_delta
    else:
        return None
    if not _only_known_fields(event):
        return None
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    return parse(document, name)


def _only_known_fields(event: SSEEvent) -> bool:
    """Whether *event*'s lines are only its data, name and id lines (then folding it
    loses nothing a client reads)."""
    raw = event.raw
    lines = raw.count(b"\n") if b"\r" not in raw else len(raw.splitlines())
    # One data line (the caller checked), the name and id when given, the blank line.
    if lines == 2 + (event.event is not None) + (event.id is not None):
        return True
    # Repeated fields (an upstream's id, then a later one) are fine; unknown ones not.
    return all(line.partition(b":")[0] in _KNOWN_FIELDS for line in raw.splitlines() if line)


def _chat_delta(document: dict[str, Any], name: str | None) -> _Delta | None:
    """A Chat Completions chunk's delta, when only its text or tool-call arguments are
    news (null fields count as absent)."""
    choices = document.get("choices")
    if (
        not isinstance(choices, list)
        or len(choices) != 1
        or document.get("usage") is not None
        or document.get("object", "chat.completion.chunk") != "chat.completion.chunk"
    ):
        return None
    choice = choices[0]
    if (
        not isinstance(choice, dict)
        or choice.get("finish_reason")
        or _holds(choice.get("logprobs"))
    ):
        return None
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return None
    field = None
    for key, value in delta.items():
        if value is not None:
            if field is not None:
                return None
            field = key
    if field in _CHAT_FIELDS:
        text = delta[field]
        if not isinstance(text, str):
            return None
        return (
            ("chat", name, document.get("id"), choice.get("index"), field),
            document,
            delta,
            field,
            text,
        )
    if field != "tool_calls":
        return None
    calls = delta["tool_calls"]
    if not isinstance(calls, list) or len(calls) != 1 or not isinstance(calls[0], dict):
        return None
    call = calls[0]
    index = call.get("index")
    function = call.get("function")
    if not isinstance(index, int) or not isinstance(function, dict):
        return None
    if any(value is not None and key not in ("index", "function") for key, value in call.items()):
        return None
    if any(value is not None and key != "arguments" for key, value in function.items()):
        return None
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        return None
    key = ("chat", name, document.get("id"), choice.get("index"), field, index)
    return key, document, function, "arguments", arguments


def _holds(value: object) -> bool:
    """Whether a logprobs value says anything (null, an empty list, or an object of
    only nulls and empty lists, does not)."""
    if isinstance(value, dict):
        return any(value.values())
    return bool(value)


def _messages_delta(document: dict[str, Any], name: str | None) -> _Delta | None:
    """A Messages ``content_block_delta``'s text, thinking or tool-input JSON."""
    if document.get("type") != "content_block_delta":
        return None
    index = document.get("index")
    delta = document.get("delta")
    if not isinstance(index, int) or not isinstance(delta, dict) or len(delta) != 2:
        return None
    kind = delta.get("type")
    field = _MESSAGES_FIELDS.get(kind) if isinstance(kind, str) else None
    if field is None:
        return None
    text = delta.get(field)
    if not isinstance(text, str):
        return None
    return ("messages", name, index, kind), document, delta, field, text


def _responses_delta(document: dict[str, Any], name: str | None) -> _Delta | None:
    """A Responses delta event's text (its ``type`` must be the event's name, when it
    has one)."""
    kind = document.get("type")
    keys = _RESPONSES_KEYS.get(kind) if isinstance(kind, str) else None
    if keys is None or (name is not None and name != kind) or _holds(document.get("logprobs")):
        return None
    text = document.get("delta")
    if not isinstance(text, str) or not all(key in document for key in keys):
        return None
    key = ("responses", name, kind, *[document[key] for key in keys])
    return key, document, document, "delta", text
