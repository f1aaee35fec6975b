"""Extensions own their config: the core loader reads the keys each `ExtensionSchema`
claims with that extension's parser, keeps the values by class, refuses the keys nobody
owns, and puts each extension's filter where it says in the default chain."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from filterproxy import config as core
from filterproxy.config import ChainFacts, ConfigError, DefaultEntry, ExtensionSchema, Section
from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.keys.config import GatewayKeys
from filterproxy.extensions.translate.config import TranslateRoute

BASE = "clusters: {c: {url: 'http://h'}}\n"


# A feature shaped as resume is: a top-level key, a route key, and a place after
# body-accumulate when some route uses it.


@dataclass(frozen=True)
class EchoBudget:
    echo_buffers: int = 1024


@dataclass(frozen=True)
class EchoRoute:
    echo: bool = False


def _budget(section: Section) -> EchoBudget:
    node = section.node("echo_buffers")
    return EchoBudget(node.integer(minimum=1024)) if node.value is not None else EchoBudget()


def _route(section: Section) -> EchoRoute:
    return EchoRoute(section["echo"].boolean() if "echo" in section else False)


def _place(facts: ChainFacts) -> DefaultEntry | None:
    if not any((r.option(EchoRoute) or EchoRoute()).echo for r in facts.routes):
        return None
    budget = facts.section(EchoBudget)
    assert budget is not None
    return DefaultEntry("echo", after="body-accumulate", options={"cap": budget.echo_buffers})


ECHO = ExtensionSchema(
    name="echo",
    keys=frozenset({"echo_buffers"}),
    parse=_budget,
    route_keys=frozenset({"echo"}),
    parse_route=_route,
    place=_place,
)


def parse(text: str, *extensions: ExtensionSchema) -> core.Config:
    return core.parse_config(text, environ={}, extensions=extensions)


def test_an_extensions_values_are_found_by_their_class() -> None:
    config = parse(
        BASE + "echo_buffers: 4096\nroutes: [{cluster: c, echo: true}, {cluster: c}]\n", ECHO
    )
    assert config.section(EchoBudget) == EchoBudget(4096)
    assert [r.option(EchoRoute) for r in config.routes] == [EchoRoute(True), EchoRoute(False)]
    assert config.section(GatewayKeys) is None  # not an extension of this config


def test_an_extension_gets_every_config_and_route_for_its_defaults() -> None:
    config = parse(BASE, ECHO)
    assert config.section(EchoBudget) == EchoBudget()
    (route,) = config.routes  # the default route, made by the core
    assert route.option(EchoRoute) == EchoRoute()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("echo_buffers: 12\n", "echo_buffers: must be at least 1024, got 12"),
        (
            "routes: [{cluster: c, echo: maybe}]\n",
            "routes[0].echo: expected true or false, got 'maybe'",
        ),
    ],
)
def test_an_extensions_malformed_key_is_refused_with_its_path(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(BASE + text, ECHO)
    assert str(raised.value) == message


def test_a_built_in_extensions_malformed_key_is_refused_with_its_path() -> None:
    with pytest.raises(ConfigError, match=r"^responses\.ttl: must be positive, e\.g\. 24h$"):
        parse_config(BASE + "responses: {ttl: 0}\n")
    with pytest.raises(ConfigError, match=r"^routes\[0\]\.hosted_tools: must be drop"):
        parse_config(BASE + "routes: [{cluster: c, hosted_tools: keep}]\n")


def test_a_key_nobody_owns_is_refused_and_the_extensions_keys_are_offered() -> None:
    with pytest.raises(ConfigError) as raised:
        parse(BASE + "echo_bufers: 4096\n", ECHO)
    assert raised.value.path == "echo_bufers"
    assert "echo_buffers" in raised.value.problem and "clusters" in raised.value.problem
    with pytest.raises(
        ConfigError, match=r"^routes\[0\]\.ech: unknown key; expected one of: .*echo"
    ):
        parse(BASE + "routes: [{cluster: c, ech: true}]\n", ECHO)


def test_without_its_extension_a_feature_key_is_unknown() -> None:
    with pytest.raises(ConfigError, match=r"^keys: unknown key"):
        parse(BASE + "keys: []\n")
    with pytest.raises(ConfigError, match=r"^routes\[0\]\.auto_cache: unknown key"):
        parse(BASE + "routes: [{cluster: c, auto_cache: true}]\n")
    assert parse_config(BASE + "keys: []\n").section(GatewayKeys) == GatewayKeys(keys_checked=True)


def test_an_extension_puts_its_filter_in_the_default_chain_where_it_says() -> None:
    plain = parse(BASE + "routes: [{cluster: c}]\n", ECHO)
    assert [f.type_name for f in plain.filters] == list(core.DEFAULT_FILTERS)
    echoing = parse(BASE + "echo_buffers: 2048\nroutes: [{cluster: c, echo: true}]\n", ECHO)
    assert [(f.type_name, dict(f.options)) for f in echoing.filters] == [
        ("body-accumulate", {}),
        ("echo", {"cap": 2048}),
        ("route", {}),
        ("header-rewrite", {}),
        ("usage", {}),
    ]


def test_a_placement_may_go_first_or_before_and_ask_options_of_another_entry() -> None:
    first = ExtensionSchema(
        name="gate",
        place=lambda facts: DefaultEntry(
            "gate", first=True, asks={"usage": {"include_usage": True}}
        ),
    )
    before = ExtensionSchema(name="look", place=lambda facts: DefaultEntry("look", before="route"))
    config = parse(BASE, first, before)
    assert [(f.type_name, dict(f.options)) for f in config.filters] == [
        ("gate", {}),
        ("body-accumulate", {}),
        ("look", {}),
        ("route", {}),
        ("header-rewrite", {}),
        ("usage", {"include_usage": True}),
    ]


def test_the_built_in_placements_make_the_documented_default_chain() -> None:
    key = "{name: a, hash: 'sha256:" + "0" * 64 + "'}"
    mixed = "clusters: {c: {provider: anthropic, api_key: k}}\n"
    config = parse_config(mixed + f"keys: [{key}]\nroutes: [{{cluster: c, resume: true}}]\n")
    assert [f.type_name for f in config.filters] == [
        "delivery",  # first: the last to see the answer, as the client gets it
        "spend",  # before keys: its on_destroy prices what the keys filter charges
        "keys",
        "body-accumulate",
        "resume",
        "responses",
        "route",
        "translate",
        "header-rewrite",
        "usage",
    ]
    assert dict(config.filters[-1].options) == {"include_usage": True}
    (route,) = config.routes
    assert route.option(TranslateRoute) == TranslateRoute()


def test_two_owners_of_one_key_are_a_programming_error() -> None:
    twin = ExtensionSchema(name="twin", keys=frozenset({"echo_buffers"}))
    with pytest.raises(ValueError, match="echo_buffers"):
        parse(BASE, ECHO, twin)
    with pytest.raises(ValueError, match="'routes'"):
        parse(BASE, ExtensionSchema(name="bad", keys=frozenset({"routes"})))
    with pytest.raises(ValueError, match="at most one"):
        DefaultEntry("x", first=True, after="route")
