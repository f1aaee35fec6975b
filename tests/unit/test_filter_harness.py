"""`filterproxy.testing.FilterHarness` drives one filter through the real chain, and the
streaming example of the docs (docs/examples/requested_model.py) does what they say."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from zope.interface.exceptions import Invalid

from filterproxy.filters.api import DataResult, FilterStatus, RequestHead, StreamFilter
from filterproxy.http.sse import SSEDecoder
from filterproxy.testing import FilterHarness

from .sample_filters import TagFilter

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "requested_model.py"
SSE = {"content-type": "text/event-stream"}


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("requested_model", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["requested_model"] = module
    spec.loader.exec_module(module)
    return module.RequestedModel


def chunk(model: str, text: str) -> bytes:
    doc = {"model": model, "choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


STREAM = [
    b": ping\n\n",
    chunk("gpt-4o-mini-2024-07-18", "Hel"),
    chunk("gpt-4o-mini-2024-07-18", "lo ✓"),
    b"data: [DONE]\n\n",
]


def run_example(pieces: list[bytes]) -> Any:
    h = FilterHarness(load_example())
    h.request(b'{"model": "fast", "stream": true}')
    return h.respond(200, SSE, pieces)


def test_the_example_gives_the_client_the_model_it_asked_for() -> None:
    response = run_example(STREAM)
    events = response.events()
    assert [json.loads(e.data)["model"] for e in events[1:3]] == ["fast", "fast"]
    assert "".join(json.loads(e.data)["choices"][0]["delta"]["content"] for e in events[1:3]) == (
        "Hello ✓"
    )
    assert events[0].raw == b": ping\n\n" and events[-1].raw == b"data: [DONE]\n\n"
    assert response.ended and "content-length" not in (response.headers or {})


@pytest.mark.parametrize("cut", range(1, len(b"".join(STREAM)), 7))
def test_the_example_gives_the_same_stream_whatever_the_pieces(cut: int) -> None:
    whole = b"".join(STREAM)
    assert run_example([whole[:cut], whole[cut:]]).body == run_example(STREAM).body


def test_the_example_fails_an_answer_whose_event_never_ends() -> None:
    h = FilterHarness(load_example())
    h.request(b'{"model": "fast", "stream": true}')
    h.respond(200, SSE, [STREAM[1], b"data: " + b"x" * (4 << 20)], end=False)
    h.more([b"x" * (5 << 20)], end=False)  # past the decoder's 8 MiB
    events = SSEDecoder().feed(h.client.body)
    assert json.loads(events[0].data or "")["model"] == "fast"
    assert events[-1].event == "error" and "max_event_bytes" in (events[-1].data or "")
    assert h.client.aborted and h.upstream.cancelled


def test_the_example_rewrites_a_plain_answer_once_it_is_all_there() -> None:
    h = FilterHarness(load_example())
    h.request(b'{"model": "fast"}')
    body = json.dumps({"model": "gpt-4o-mini-2024-07-18", "choices": []}).encode()
    response = h.respond(200, {"content-type": "application/json"}, [body[:10], body[10:]])
    assert response.json() == {"model": "fast", "choices": []}


def test_the_example_leaves_requests_without_a_model_alone() -> None:
    h = FilterHarness(load_example())
    h.request(b"", method="GET", path="/v1/models")
    assert h.upstream.reached and h.upstream.ended
    response = h.respond(200, {"content-type": "application/json"}, b'{"data": []}')
    assert response.body == b'{"data": []}'


def test_options_go_through_the_filters_configure() -> None:
    h = FilterHarness(TagFilter, {"tag": "audit"})
    h.request(b'{"model": "m"}')
    assert h.upstream.head is not None and h.upstream.head.headers.get("x-tag") == "audit"
    with pytest.raises(ValueError, match="option 'tag' is required"):
        FilterHarness(TagFilter, {})


class Refuser(StreamFilter):
    def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
        self.callbacks.send_local_reply(403, "no", code="forbidden")
        return FilterStatus.STOP_ITERATION


def test_a_local_reply_reaches_the_client_and_nothing_the_upstream() -> None:
    h = FilterHarness(Refuser)
    h.request(b'{"model": "m"}')
    assert h.client.status == 403 and h.client.json()["error"]["code"] == "forbidden"
    assert not h.upstream.reached and h.upstream.cancelled and h.done


class Swallower(StreamFilter):
    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        return FilterStatus.STOP_ITERATION


def test_the_harness_applies_the_chains_rules_a_swallowed_end_included() -> None:
    h = FilterHarness(Swallower)
    h.request()
    h.respond(200, SSE, [b"data: 1\n\n"])
    assert h.client.aborted and h.stream_info.outcome == "internal_error"


class NotAFilter:
    def __init__(self, config: object = None) -> None:
        pass


def test_the_harness_checks_the_filter_against_the_interface() -> None:
    with pytest.raises(Invalid):
        FilterHarness(NotAFilter)


class _Selective(StreamFilter):
    """Rewrites answers to requests for /rewrite; lets every other one pass untouched."""

    calls = 0

    def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
        if head.path != "/rewrite":
            self.callbacks.pass_response_data()
        return FilterStatus.CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        _Selective.calls += 1
        return data.upper()


@pytest.mark.parametrize(
    ("path", "expected", "calls"), [("/rewrite", b"ABC", 2), ("/other", b"abc", 0)]
)
def test_a_filter_may_pass_one_requests_response_data_untouched(
    path: str, expected: bytes, calls: int
) -> None:
    _Selective.calls = 0
    h = FilterHarness(_Selective)
    h.request(b"{}", path=path)
    response = h.respond(200, SSE, [b"a", b"bc"])
    assert response.body == expected and _Selective.calls == calls


# -- the docs' examples render, and the one that waits for an answer does what they say -----

DOCS = Path(__file__).resolve().parents[2] / "docs"


def load_docs_example(name: str, attribute: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, DOCS / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return getattr(module, attribute)


def test_the_filter_guide_includes_its_examples() -> None:
    import markdown

    html = markdown.markdown(
        (DOCS / "filters.md").read_text(),
        extensions=["pymdownx.highlight", "pymdownx.superfences", "pymdownx.snippets"],
        extension_configs={
            "pymdownx.highlight": {"use_pygments": False},
            "pymdownx.snippets": {"base_path": [str(DOCS)], "check_paths": True},
        },
    )
    assert "--8" not in html  # every snippet marker was replaced by its file
    assert "class RequestedModel(StreamFilter)" in html
    assert "class TeamBudget(StreamFilter)" in html


class Ledger:
    """A budget service whose answer the test gives."""

    def __init__(self, answer: defer.Deferred[bool]) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def allows(self, team: str) -> defer.Deferred[bool]:
        self.asked.append(team)
        return self.answer


def budget_harness(answer: defer.Deferred[bool], **options: float) -> FilterHarness:
    team_budget = load_docs_example("team_budget", "TeamBudget")
    config = load_docs_example("team_budget", "TeamBudgetConfig")
    return FilterHarness(team_budget(config(Ledger(answer), **options)))


def test_the_budget_example_holds_the_request_until_the_service_answers() -> None:
    answer: defer.Deferred[bool] = defer.Deferred()
    h = budget_harness(answer)
    h.request(b'{"model": "m"}', headers={"x-team": "research"})
    assert not h.upstream.reached and h.filter.config.service.asked == ["research"]
    answer.callback(True)
    assert h.upstream.reached and h.upstream.json() == {"model": "m"}


def test_the_budget_example_refuses_a_spent_budget() -> None:
    h = budget_harness(defer.succeed(False))
    h.request(b'{"model": "m"}', headers={"x-team": "research"})
    assert h.client.status == 429 and h.client.json()["error"]["code"] == "budget_exhausted"
    assert not h.upstream.reached


def test_the_budget_example_answers_503_when_the_service_is_silent() -> None:
    h = budget_harness(defer.Deferred(), timeout=2.0)
    h.request(b'{"model": "m"}', headers={"x-team": "research"})
    h.clock.advance(1.9)
    assert h.client.status is None
    h.clock.advance(0.1)
    assert h.client.status == 503 and not h.upstream.reached and h.done
