"""Dollar budgets of keys and teams, counted in a real redis-server by two gateway
processes (as two replicas): a team's budget spent by two keys on two gateways stops
both at the same request, its soft budget alerts once across both, a key outside the
team goes on. The model's price is given in the config (`spend.prices`), so every
request's cost is known exactly."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from filterproxy.extensions.keys.config import hash_key

from .conftest import Gateway, RedisServer, start_gateway, wait_until
from .test_keys import mock_port  # noqa: F401 (the mock upstream fixture)

KEYS = {name: f"fpk-budget-{name}-0123456789" for name in ("north", "south", "solo")}
#: $0.0025 per request: the mock upstream reports 8 prompt tokens for every request,
#: at 312.5 µ$ each ($312.5 per million); output is free. The team's $0.01 lasts
#: exactly four requests.
INPUT_PICO = 312_500_000
COST_NANO = 8 * INPUT_PICO // 1000
BUDGET_NANO = 10_000_000
TOKEN = "admin-token-of-the-budget-test"


def config(mock: int, redis_url: str) -> str:
    keys = "\n".join(
        f"  - {{name: {name}, hash: 'sha256:{hash_key(key)}'"
        + (", team: research}" if name != "solo" else ", limits: {usd_per_day: 1}}")
        for name, key in KEYS.items()
    )
    return f"""
clusters:
  mock: {{url: "http://127.0.0.1:{mock}", apis: [chat]}}
redis: {{url: "{redis_url}", timeout: 2s}}
admin: {{token: "{TOKEN}"}}
spend:
  prices:
    demo: {{input: {INPUT_PICO / 1_000_000}, output: 0}}
teams:
  - name: research
    limits: {{usd_per_day: 0.01, soft_usd_per_day: 0.005, requests_per_minute: 1000}}
keys:
{keys}
"""


@pytest.fixture(scope="module")
def gateways(
    mock_port: int,  # noqa: F811
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Gateway, Gateway]]:
    text = config(mock_port, redis_server.url)
    first = start_gateway(text, tmp_path_factory.mktemp("north"))
    second = start_gateway(text, tmp_path_factory.mktemp("south"))
    try:
        yield first, second
    finally:
        first.process.stop()
        second.process.stop()


def dollars_of(redis: RedisServer, team: str) -> tuple[int, int]:
    """The team's day: (spent, reserved) in nanodollars."""
    names = redis.command("--scan", "--pattern", f"fp:{{team:{team}}}:$d:*").split()
    spent = sum(int(redis.command("HGET", n, "s") or 0) for n in names)
    held = sum(int(redis.command("HGET", n, "r") or 0) for n in names)
    return spent, held


def ask(gateway: Gateway, name: str) -> int:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEYS[name], max_retries=0)
    try:
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
    except openai.RateLimitError as e:
        assert e.code == "insufficient_quota"
        assert e.response.headers["x-should-retry"] == "false"
        assert "the team 'research' has spent its budget of $0.01 per day" in e.message
        assert "raise the team's usd_per_day" in e.message
        return 429
    return 200


def metric(gateways: tuple[Gateway, Gateway], family: str, **labels: str) -> float:
    """The sum over both gateways of the series of *family* with *labels*."""
    total = 0.0
    for gateway in gateways:
        for line in gateway.metrics().splitlines():
            found = re.match(r"(\w+)\{(.*)\} (\S+)$", line)
            if (
                found
                and found.group(1) == family
                and dict(re.findall(r'(\w+)="([^"]*)"', found.group(2))) == labels
            ):
                total += float(found.group(3))
    return total


def test_a_team_budget_spent_by_two_keys_on_two_gateways_stops_both_at_the_same_request(
    gateways: tuple[Gateway, Gateway], redis_server: RedisServer
) -> None:
    if time.time() % 86400 > 86370:  # one UTC day for the whole test
        time.sleep(86401 - time.time() % 86400)
    statuses = []
    for i in range(8):
        # Each request is settled before the next is admitted (settling is
        # fire-and-forget): the admission sees the spend and no reservation.
        wait_until(lambda: dollars_of(redis_server, "research")[1] == 0, timeout=5)
        statuses.append(ask(gateways[i % 2], ("north", "south")[i % 2]))
    # $0.0025 each: the fourth request brings the spend to the $0.01 budget exactly.
    assert statuses == [200, 200, 200, 200, 429, 429, 429, 429]
    wait_until(lambda: dollars_of(redis_server, "research")[1] == 0, timeout=5)
    # The refused requests charged nothing.
    assert dollars_of(redis_server, "research") == (4 * COST_NANO, 0) == (BUDGET_NANO, 0)
    refusals = metric(
        gateways, "filterproxy_team_refusals_total", team="research", limit="usd_per_day"
    )
    assert refusals == 4
    # The soft budget ($0.005, crossed by the second request) alerted once across both.
    alerts = metric(
        gateways, "filterproxy_budget_alerts_total", subject="team", name="research", window="day"
    )
    assert alerts == 1
    logged = [
        line
        for gateway in gateways
        for line in gateway.process.output().splitlines()
        if "soft budget crossed" in line
    ]
    assert len(logged) == 1
    assert "the team 'research' has spent $0.005 this day" in logged[0]
    assert "fpk-" not in logged[0]
    # What the team and its keys spent, as the admin API tells it (from either gateway).
    auth = {"authorization": f"Bearer {TOKEN}"}
    for gateway in gateways:
        team = httpx.get(f"{gateway.admin_url}/teams/research/spend", headers=auth).json()
        assert team["day"]["spent_usd"] == 0.01 and team["day"]["budget_usd"] == 0.01
        assert team["day"]["remaining_usd"] == 0 and team["day"]["soft_budget_usd"] == 0.005
        assert team["month"]["budget_usd"] is None and team["report"] == "/spend?team=research"
    north = httpx.get(f"{gateways[1].admin_url}/keys/north/spend", headers=auth).json()
    assert north["day"]["spent_usd"] is None  # no budget of its own: its report tells
    assert httpx.get(f"{gateways[0].admin_url}/keys/north/spend").status_code == 401
    # A key outside the team is not held by its budget, on either gateway.
    assert [ask(g, "solo") for g in gateways] == [200, 200]

    def solo_day() -> dict[str, float]:
        url = f"{gateways[0].admin_url}/keys/solo/spend"
        return httpx.get(url, headers=auth).json()["day"]  # type: ignore[no-any-return]

    # Settling is not waited for: the two requests' cost arrives soon after them.
    wait_until(lambda: solo_day()["spent_usd"] == 2 * COST_NANO / 1e9, timeout=5)
    assert solo_day()["budget_usd"] == 1
    for name in redis_server.command("--scan", "--pattern", "fp:{team:research}:*").split():
        assert int(redis_server.command("PTTL", name)) > 0
