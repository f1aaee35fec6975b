"""Responses API streams for tests: the API's rules for a stream (checked with the openai
SDK's own models), and a stream with its fresh ids and times blanked."""

from __future__ import annotations

import json
import re
from typing import Any

from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.support.chat_messages import events_of

EVENT = TypeAdapter(ResponseStreamEvent)
_FRESH = re.compile(rb"\b(resp|msg|fc|ctc|rs|call)_[0-9a-f]{24}(?:[0-9a-f]{16})?\b")
_TIMES = re.compile(rb'"(created_at|completed_at)":\d+')


def normalized(raw: bytes) -> bytes:
    """The stream with its fresh ids (numbered by first appearance) and times blanked."""
    seen: dict[bytes, bytes] = {}

    def number(match: re.Match[bytes]) -> bytes:
        return seen.setdefault(match.group(0), b"%s_%d" % (match.group(1), len(seen)))

    return _TIMES.sub(rb'"\1":0', _FRESH.sub(number, raw))


def check_responses_stream(raw: bytes, *, json_arguments: bool = True) -> dict[str, Any]:
    """The Responses API's rules for a stream; returns its last event's response and
    what its deltas said. With *json_arguments*, a completed call's arguments must be
    JSON (a recording may hold what a model got wrong)."""
    events = events_of(raw)
    names = [name for name, _ in events]
    documents = [data for _, data in events]
    for name, data in events:
        assert name == data["type"], "every event is named by its type"
        EVENT.validate_python(data)  # the openai SDK's own event models
    assert [d["sequence_number"] for d in documents] == list(range(len(documents)))
    assert names[:2] == ["response.created", "response.in_progress"]
    last = documents[-1]
    assert names[-1] in ("response.completed", "response.incomplete", "response.failed")
    assert (
        sum(n in ("response.completed", "response.incomplete", "response.failed") for n in names)
        == 1
    )
    if names[-1] == "response.failed":
        assert names[-2] == "error"
    response = last["response"]
    assert response["id"] == documents[0]["response"]["id"]
    Response.model_validate(response)
    # Items: added, then their deltas, then done; indices 0, 1, 2… in order.
    added: dict[int, dict[str, Any]] = {}
    done: dict[int, dict[str, Any]] = {}
    text: dict[int, str] = {}
    for data in documents:
        kind = data["type"]
        index = data.get("output_index")
        if kind == "response.output_item.added":
            assert index == len(added)
            added[index] = data["item"]
        elif kind.endswith(".delta"):
            assert index in added and index not in done
            assert data["item_id"] == added[index]["id"]
            text[index] = text.get(index, "") + data["delta"]
        elif kind == "response.output_item.done":
            assert index in added and index not in done
            done[index] = data["item"]
    if names[-1] != "response.failed":
        assert set(done) == set(added)
        assert response["output"] == [done[i] for i in sorted(done)]
    for index, item in done.items():
        if item["type"] == "message":
            assert item["content"][0]["text"] == text.get(index, "")
        elif item["type"] == "custom_tool_call":
            assert item["input"] == text.get(index, "")
        elif item["type"] == "function_call":
            assert item["arguments"] == (text.get(index) or "{}")
            if json_arguments and response["status"] == "completed":
                json.loads(item["arguments"])
    return {"response": response, "names": names, "text": text, "added": added}
