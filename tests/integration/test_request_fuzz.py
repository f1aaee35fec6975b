"""The request parsers of every client API — Chat Completions, Messages, Responses,
count_tokens, the model list — fed structured random requests (Hypothesis) through real
gateways (``twistd``, real sockets), one with keys and one without, in front of a
provider that speaks only Chat Completions and one that speaks only Messages, so each API
is translated both ways and passed through. Whatever comes, the gateway answers: never a
500, never a 2xx with an empty body, every 4xx in the client's API's shape, never a body
upstream that a provider could not read; and it serves ordinary requests afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.fuzz_requests import ANY, CHAT, MESSAGES, RESPONSES, raw_body

from .conftest import Gateway
from .strict_upstream import KEY, StrictUpstreams, strict_gateways

#: How the client's document strategy and the path go together.
APIS: dict[str, tuple[str, st.SearchStrategy[Any]]] = {
    "chat": ("/v1/chat/completions", CHAT),
    "messages": ("/v1/messages", MESSAGES),
    "responses": ("/v1/responses", RESPONSES),
    "count_tokens": ("/v1/messages/count_tokens", MESSAGES),
}
STREAM_UNDER_KEYS = b'{"model": "native-fuzz", "stream": true, "messages": []}'
#: A model of each cluster, one nobody serves, and none.
MODELS = ["chat-fuzz", "claude-fuzz", "native-fuzz", "nobody-serves-this", None]


@pytest.fixture(scope="module")
def _strict(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[StrictUpstreams, dict[bool, Gateway]]]:
    with strict_gateways(tmp_path_factory, "fuzz") as both:
        yield both


@pytest.fixture(scope="module")
def upstreams(_strict: tuple[StrictUpstreams, dict[bool, Gateway]]) -> StrictUpstreams:
    return _strict[0]


@pytest.fixture(scope="module")
def gateways(_strict: tuple[StrictUpstreams, dict[bool, Gateway]]) -> dict[bool, Gateway]:
    """A gateway without keys (False) and one with them (True)."""
    return _strict[1]


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:  # an answer that never ends fails the test
        yield http


@st.composite
def requests(draw: st.DrawFn) -> tuple[bool, str, str, dict[str, str], bytes]:
    """(keys, method, path, headers, body) of a request of a client API."""
    keys = draw(st.booleans())
    headers: dict[str, str] = {}
    if keys:
        credential = draw(st.sampled_from([KEY, KEY, KEY, "fpk-not-a-key", None]))
        if credential is not None:
            header = draw(st.sampled_from(["authorization", "x-api-key"]))
            headers[header] = f"Bearer {credential}" if header == "authorization" else credential
    api = draw(st.sampled_from([*APIS, "models"]))
    if api == "models":
        query = draw(st.sampled_from(["", "?limit=1", "?after=%00", "?x=" + "y" * 500]))
        body = draw(st.one_of(st.just(b""), ANY.map(lambda v: json.dumps(v).encode())))
        return keys, "GET", "/v1/models" + query, headers, body
    path, documents = APIS[api]
    model = draw(st.sampled_from(MODELS))

    def with_model(document: Any) -> Any:
        if isinstance(document, dict) and isinstance(document.get("model"), str):
            if model is None:
                del document["model"]
            else:
                document["model"] = model
        return document

    body = draw(raw_body(documents.map(with_model)))
    content_type = draw(
        st.sampled_from(
            ["application/json"] * 4
            + ["application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded"]
            + [None]
        )
    )
    if content_type is not None:
        headers["content-type"] = content_type
    return keys, "POST", path, headers, body


def problems(path: str, response: httpx.Response) -> list[str]:
    """What is wrong with the gateway's *response* to a request for *path*."""
    status, body = response.status_code, response.content
    if status >= 500:
        return [f"status {status}"]
    if 200 <= status < 300:
        if not body:
            return ["a 2xx with an empty body"]
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            if b"event: error" in body or b'data: {"error"' in body:
                return ["an error event in a stream from an upstream that did not fail"]
            return []
        try:
            json.loads(body)
        except ValueError:
            return ["a 2xx whose body is not JSON"]
        return []
    try:
        document = json.loads(body)
    except ValueError:
        return [f"a {status} whose body is not JSON"]
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return [f"a {status} without an error message"]
    if path.startswith("/v1/messages"):  # Anthropic's shape
        if document.get("type") != "error" or not isinstance(error.get("type"), str):
            return [f"a {status} not in Anthropic's error shape"]
    elif not isinstance(error.get("type"), str):  # OpenAI's shape
        return [f"a {status} not in OpenAI's error shape"]
    return []


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@example(  # a stream whose usage chunk the gateway hides, of a known length upstream
    request=(True, "POST", "/v1/chat/completions", {"x-api-key": KEY}, STREAM_UNDER_KEYS)
)
@given(request=requests())
def test_every_request_gets_an_answer_in_its_apis_shape(
    gateways: dict[bool, Gateway],
    client: httpx.Client,
    request: tuple[bool, str, str, dict[str, str], bytes],
) -> None:
    keys, method, path, headers, body = request
    response = client.request(
        method, gateways[keys].url + path, headers=headers, content=body or None
    )
    wrong = problems(path, response)
    assert not wrong, f"{wrong[0]}: {method} {path} {body[:300]!r} -> {response.content[:300]!r}"


def test_no_body_a_provider_could_not_read_went_upstream(upstreams: StrictUpstreams) -> None:
    assert upstreams.requests > 0  # the fuzz reached the providers
    assert upstreams.unreadable == []


@pytest.mark.parametrize("keys", [False, True])
def test_the_gateways_serve_every_api_afterwards(
    gateways: dict[bool, Gateway], client: httpx.Client, keys: bool
) -> None:
    headers = {"authorization": f"Bearer {KEY}", "x-api-key": KEY} if keys else {}
    url = gateways[keys].url
    turn = [{"role": "user", "content": "hello"}]
    for model in ("chat-fuzz", "claude-fuzz"):
        chat = client.post(
            f"{url}/v1/chat/completions", headers=headers, json={"model": model, "messages": turn}
        )
        assert chat.json()["choices"][0]["message"]["content"] == "fuzz answer"
        messages = client.post(
            f"{url}/v1/messages",
            headers=headers,
            json={"model": model, "max_tokens": 50, "messages": turn},
        )
        assert messages.json()["content"][0]["text"] == "fuzz answer"
        responses = client.post(
            f"{url}/v1/responses", headers=headers, json={"model": model, "input": "hello"}
        )
        assert responses.json()["output"][0]["content"][0]["text"] == "fuzz answer"
    counted = client.post(
        f"{url}/v1/messages/count_tokens",
        headers=headers,
        json={"model": "chat-fuzz", "messages": turn},
    )
    assert counted.json()["input_tokens"] >= 1
    listed = client.get(f"{url}/v1/models", headers=headers)
    assert listed.status_code == 200 and listed.json()["object"] == "list"
    assert "Traceback" not in gateways[keys].process.output()
