"""Route selection and body parsing are plain functions."""

from __future__ import annotations

import pytest

from filterproxy.config import RouteConfig
from filterproxy.extensions.route.filter import BadBody, parse_body
from filterproxy.extensions.route.matching import resolve_alias, select_route
from filterproxy.http.headers import Headers

ROUTES = (
    RouteConfig(
        name="tenant-a", cluster="azure", models=("gpt-4o",), match_headers=(("x-tenant", "a"),)
    ),
    RouteConfig(name="gpt", cluster="openai", models=("gpt-4o", "gpt-4o-*", "o1*")),
    RouteConfig(name="claude", cluster="anthropic", models=("claude-*",), path_prefix="/v1/"),
    RouteConfig(name="models", cluster="openai", path_prefix="/v1/models", methods=("GET",)),
)


def pick(
    model: str | None, path: str = "/v1/chat/completions", method: str = "POST", **headers: str
) -> str | None:
    route = select_route(
        ROUTES, method=method, path=path, headers=Headers(headers.items()), model=model
    )
    return route.name if route else None


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "gpt"),
        ("gpt-4o-mini", "gpt"),
        ("o1-preview", "gpt"),
        ("claude-sonnet-4-5", "claude"),
        ("gpt-4", None),
        ("llama3", None),
    ],
)
def test_models_match_exact_names_and_globs(model: str, expected: str | None) -> None:
    assert pick(model) == expected


def test_first_matching_route_wins_and_headers_must_match_exactly() -> None:
    assert pick("gpt-4o", **{"x-tenant": "a"}) == "tenant-a"
    assert pick("gpt-4o", **{"x-tenant": "b"}) == "gpt"


def test_path_prefix_and_method() -> None:
    assert pick(None, "/v1/models", "GET") == "models"
    assert pick(None, "/v1/models?x=1", "GET") == "models"
    assert pick(None, "/v1/models", "POST") is None
    assert pick("claude-3", "/v2/messages") is None


def test_a_route_without_match_keys_is_the_default() -> None:
    routes = (*ROUTES, RouteConfig(name="default", cluster="local"))
    route = select_route(routes, method="POST", path="/x", headers=Headers(), model="whatever")
    assert route is not None and route.name == "default"


def test_aliases_resolve_to_their_target() -> None:
    assert resolve_alias("fast", {"fast": "gpt-4o-mini"}) == "gpt-4o-mini"
    assert resolve_alias("gpt-4o", {"fast": "gpt-4o-mini"}) == "gpt-4o"


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"{", "application/json", "not valid JSON"),
        (b"\xff\xfe", None, "not valid UTF-8"),
        (b"[]", None, "must be a JSON object"),
        (b'"text"', "application/json", "must be a JSON object"),
        (b'{"model": ["a"]}', None, "'model' must be a string"),
        (b"[" * 100000 + b"]" * 100000, None, "nested too deeply"),
    ],
)
def test_bodies_that_cannot_be_routed_raise_bad_body(
    body: bytes, content_type: str | None, message: str
) -> None:
    with pytest.raises(BadBody, match=message):
        parse_body(body, content_type)


def test_multipart_uploads_are_not_parsed_and_empty_bodies_are_fine() -> None:
    assert parse_body(b"--boundary\r\n...", "multipart/form-data; boundary=boundary") is None
    assert parse_body(b"", "application/json") is None
    assert parse_body(b'{"model": "m", "stream": true}', "application/json; charset=utf-8") == {
        "model": "m",
        "stream": True,
    }
