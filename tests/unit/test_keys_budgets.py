"""Teams and dollar budgets: the refusals' words, the local counts' rules (a team shared
by its keys, soft budgets crossed once), and the keys filter in the real chain reserving
the quoted estimate and charging the exact cost (`PriceQuote` and `Cost` set by a filter
before it, as the spend filter does)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.task import Clock

from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.keys.config import KeyLimits, hash_key
from filterproxy.extensions.keys.filter import KeysFilter, LimitStore, store_for
from filterproxy.extensions.keys.limits import (
    Admission,
    Crossing,
    LocalCounts,
    Subject,
    dollars,
    refusal,
)
from filterproxy.extensions.keys.metrics import KeysMetrics
from filterproxy.extensions.usage.filter import UsageFilter
from filterproxy.filters.api import FilterStatus, HeadersResult, RequestHead, StreamFilter
from filterproxy.filters.records import Cost, LimitRefusal, PriceQuote
from filterproxy.filters.resources import Resources
from filterproxy.testing import FilterHarness

#: 2026-12-10T12:00:10Z: the day's budgets renew in 11 h 59 m 50 s.
NOW_MS = 1_796_904_010_000


def test_dollars_read_as_dollars() -> None:
    assert dollars(10_000_000) == "$0.01"
    assert dollars(5_000_000_000) == "$5.00"
    assert dollars(2_500_000) == "$0.0025"
    assert dollars(1) == "$0.000000001"
    assert dollars(0) == "$0.00"


def test_a_spent_dollar_budget_names_who_how_much_when_and_how_to_raise_it() -> None:
    limits = KeyLimits(usd_per_day=10_000_000, requests_per_minute=5)
    spent = Admission(False, "usd_per_day", 43_190_000, subject="team")
    message, code, headers = refusal("research", limits, spent, "team")
    assert code == "insufficient_quota"
    assert message == (
        "the team 'research' has spent its budget of $0.01 per day; it renews in "
        "11h59m50s, or raise the team's usd_per_day"
    )
    named = dict(headers)
    assert named["x-should-retry"] == "false" and named["retry-after"] == "43190"
    monthly = Admission(False, "usd_per_month", 3_600_000)
    message, code, _ = refusal("a", KeyLimits(usd_per_month=250_000_000_000), monthly)
    assert message.startswith("the key 'a' has spent its budget of $250.00 per month;")
    assert "renews in 1h0m0s, or raise the key's usd_per_month" in message
    # A team's rate limit names the team.
    rate = Admission(False, "requests_per_minute", 2000, subject="team")
    message, code, _ = refusal("research", limits, rate, "team")
    assert code == "rate_limit_exceeded" and "the team 'research'" in message


def team_of_two(key_limits: KeyLimits, team_limits: KeyLimits) -> dict[str, list[Subject]]:
    team = Subject.of("team", "t", team_limits)
    return {
        "a": [Subject.of("key", "a", key_limits), team],
        "b": [Subject.of("key", "b", key_limits), team],
    }


def test_a_team_budget_is_shared_by_its_keys_and_a_refusal_counts_nothing() -> None:
    counts = LocalCounts()
    subjects = team_of_two(KeyLimits(requests_per_minute=10), KeyLimits(usd_per_day=100))
    first = counts.admit(subjects["a"], 5, 40, NOW_MS)
    assert first.allowed and first.reserved_nano == 40
    assert counts.spent("team", "t", NOW_MS)["day"]["reserved_nano"] == 40
    counts.settle(subjects["a"], first, 5, 100, NOW_MS)  # cost more than reserved
    assert counts.spent("team", "t", NOW_MS)["day"] == {
        "window": "2026-12-10",
        "spent_nano": 100,
        "reserved_nano": 0,
        "tokens": 0,
    }
    refused = counts.admit(subjects["b"], 5, 40, NOW_MS)
    assert (refused.allowed, refused.refused, refused.subject) == (False, "usd_per_day", "team")
    assert refused.retry_after_ms == 86_400_000 - NOW_MS % 86_400_000
    # b's own counts are untouched: its minute still holds 10 requests.
    assert not [w for w in counts.windows if w[0] == "fp:{b}"]


def test_in_flight_reservations_count_against_a_hard_budget() -> None:
    counts = LocalCounts()
    key = [Subject.of("key", "a", KeyLimits(usd_per_day=100))]
    assert counts.admit(key, 1, 60, NOW_MS).allowed
    assert counts.admit(key, 1, 60, NOW_MS).allowed  # 60 held < 100
    assert counts.admit(key, 1, 60, NOW_MS).refused == "usd_per_day"  # 120 held


def test_a_soft_budget_is_crossed_once_per_window() -> None:
    counts = LocalCounts()
    key = [Subject.of("key", "a", KeyLimits(soft_usd_per_day=100, soft_usd_per_month=150))]
    crossed: list[Crossing] = []
    for cost in (60, 30, 20, 0, 45, 500):
        admission = counts.admit(key, 1, 80, NOW_MS)
        assert admission.allowed  # soft budgets never refuse
        crossed += counts.settle(key, admission, 1, cost, NOW_MS)
    assert crossed == [
        Crossing("key", "a", "day", 100, 110),
        Crossing("key", "a", "month", 150, 155),
    ]
    # A reservation given back (a request that cost less) never crosses it again.
    assert counts.spent("key", "a", NOW_MS)["day"]["reserved_nano"] == 0
    tomorrow = counts.admit(key, 1, 0, NOW_MS + 86_400_000)
    assert counts.settle(key, tomorrow, 1, 100, NOW_MS + 86_400_000) == [
        Crossing("key", "a", "day", 100, 100)
    ]


# -- the filter in the chain ---------------------------------------------------------------

KEYS = {name: f"fpk-unit-{name}-0123456789" for name in ("a", "b", "solo", "free")}
CONFIG = f"""
clusters: {{upstream: {{url: "http://upstream.test"}}}}
teams:
  - name: research
    limits: {{usd_per_day: 0.00002, soft_usd_per_day: 0.000015}}
keys:
  - {{name: a, hash: "sha256:{hash_key(KEYS["a"])}", team: research}}
  - name: b
    hash: "sha256:{hash_key(KEYS["b"])}"
    team: research
    limits: {{requests_per_minute: 100}}
  - name: solo
    hash: "sha256:{hash_key(KEYS["solo"])}"
    limits: {{usd_per_day: 0.00002}}
  - {{name: free, hash: "sha256:{hash_key(KEYS["free"])}"}}
"""
BODY = json.dumps(
    {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
).encode()
ANSWER = json.dumps(
    {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
    }
).encode()
#: $1 per million input tokens, $2 per million output tokens: 1000 and 2000 nanodollars.
PRICE = PriceQuote("m", input_pico=1_000_000, output_pico=2_000_000)
#: What a request of BODY reserves (a quarter of its bytes, its max_tokens), and what
#: ANSWER's usage costs.
RESERVE_NANO = PRICE.estimate_nano(-(-len(BODY) // 4), 100)
COST_NANO = 7 * 1000 + 3 * 2000
JSON = {"content-type": "application/json"}


class Priced(StreamFilter):
    """What the spend filter does for the keys filter: the price at decode, the cost
    from the usage when the request ends (with `QUOTE` as the price, or none)."""

    QUOTE: PriceQuote | None = PRICE

    def decode_headers(self, head: RequestHead, end_stream: bool) -> HeadersResult:
        if self.QUOTE is not None:
            self.callbacks.stream_info.state.set(self.QUOTE)
        return FilterStatus.CONTINUE

    def on_destroy(self) -> None:
        info = self.callbacks.stream_info
        if info.prompt_tokens is not None:
            cost = PRICE.estimate_nano(info.prompt_tokens, info.completion_tokens or 0)
            info.state.set(Cost("m", "upstream", cost))


class Unpriced(Priced):
    QUOTE = None


def at_now() -> Resources:
    pinned = Clock()
    pinned.advance(NOW_MS / 1000)
    return Resources(clock=pinned)


def chain(resources: Resources, priced: type[Priced] = Priced) -> FilterHarness:
    return FilterHarness(
        [priced, KeysFilter, (UsageFilter, {"include_usage": True})],
        config=parse_config(CONFIG),
        resources=resources,
    )


def ask(resources: Resources, name: str, status: int = 200) -> FilterHarness:
    h = chain(resources)
    h.request(BODY, headers={"authorization": f"Bearer {KEYS[name]}"})
    if h.upstream.reached:
        h.respond(status, JSON, ANSWER)
    return h


def spent(resources: Resources, kind: str, name: str) -> dict[str, Any]:
    """The day's counters of a key or team in the process's local counts."""
    day: dict[str, Any] = store_for(None, resources).local.spent(kind, name, NOW_MS)["day"]
    return day


def test_the_team_is_named_and_its_budget_stops_all_its_keys() -> None:
    resources = at_now()
    first = chain(resources)
    first.request(BODY, headers={"authorization": f"Bearer {KEYS['a']}"})
    assert first.stream_info.team_name == "research" and first.stream_info.key_name == "a"
    # The quoted estimate is held against the team while the request runs.
    assert spent(resources, "team", "research")["reserved_nano"] == RESERVE_NANO
    first.respond(200, JSON, ANSWER)
    assert spent(resources, "team", "research")["spent_nano"] == COST_NANO
    assert spent(resources, "team", "research")["reserved_nano"] == 0
    alerts = KeysMetrics.of(resources).budget_alerts.series
    assert not alerts
    assert ask(resources, "b").client.status == 200  # 13 of 20 µ$ spent: admitted
    assert alerts == {("team", "research", "day"): 1}  # 26 µ$: past the soft 15
    refused = ask(resources, "a")
    assert refused.client.status == 429 and not refused.upstream.reached
    error = refused.client.json()["error"]
    assert error["code"] == "insufficient_quota"
    assert "the team 'research' has spent its budget of $0.00002 per day" in error["message"]
    assert refused.client.headers is not None
    assert refused.client.headers.get("x-should-retry") == "false"
    record = refused.stream_info.state.get(LimitRefusal)
    assert record is not None and record.limit == "usd_per_day"
    assert ask(resources, "b").client.status == 429
    metrics = KeysMetrics.of(resources)
    assert metrics.team_refusals.series == {("research", "usd_per_day"): 2}
    assert metrics.refusals.series == {("a", "usd_per_day"): 1, ("b", "usd_per_day"): 1}
    # The refusals charged nothing, and the soft budget alerted once.
    assert spent(resources, "team", "research")["spent_nano"] == 2 * COST_NANO
    assert spent(resources, "team", "research")["reserved_nano"] == 0
    assert alerts == {("team", "research", "day"): 1}
    # Keys outside the team are not affected by its budget.
    assert ask(resources, "solo").client.status == 200
    assert ask(resources, "free").client.status == 200


def test_an_upstream_error_costs_nothing() -> None:
    resources = at_now()
    for _ in range(3):
        assert ask(resources, "solo", status=500).client.status == 500
    assert spent(resources, "key", "solo") == {
        "window": "2026-12-10",
        "spent_nano": 0,
        "reserved_nano": 0,
        "tokens": 0,
    }


def test_without_a_price_nothing_is_reserved_and_the_cost_is_charged() -> None:
    resources = at_now()
    h = chain(resources, Unpriced)
    h.request(BODY, headers={"authorization": f"Bearer {KEYS['solo']}"})
    assert h.upstream.reached
    assert spent(resources, "key", "solo")["reserved_nano"] == 0
    h.respond(200, JSON, ANSWER)
    assert spent(resources, "key", "solo")["spent_nano"] == COST_NANO


@pytest.mark.parametrize("kind", ["group", ""])
def test_spent_names_a_key_or_a_team(kind: str) -> None:
    with pytest.raises(ValueError, match="'key' or 'team'"):
        LimitStore(None).spent(kind, "a")
