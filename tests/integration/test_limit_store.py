"""The two stores of per-key and per-team counts follow one set of rules: the same
admissions and settlements get the same answers — refusals, who refused, soft budgets
crossed, spend so far — from Redis's scripts (on a real redis-server, after it forgot
them: SCRIPT FLUSH) as from this process's counts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest_twisted
from twisted.internet import defer, task
from twisted.internet import reactor as global_reactor

from filterproxy.clients.redis import RedisClient
from filterproxy.extensions.keys.config import KeyLimits
from filterproxy.extensions.keys.filter import LimitStore
from filterproxy.extensions.keys.limits import Admission, LocalCounts, Subject

from .conftest import RedisServer

LIMITS = KeyLimits(
    requests_per_minute=4, tokens_per_minute=100, concurrent_requests=2, tokens_per_day=150
)
#: ("admit", tokens reserved) or ("settle", tokens used by the oldest open admission).
STEPS = [
    ("admit", 60),  # allowed: 60 of the minute's 100 tokens reserved, a slot taken
    ("admit", 60),  # refused: tokens_per_minute
    ("admit", 30),  # allowed: 90 reserved, both slots taken
    ("admit", 5),  # refused: concurrent_requests
    ("settle", 10),  # the first used 10 of its 60: 40 reserved, a slot free
    ("admit", 50),  # allowed: 90
    ("settle", 30),
    ("settle", 50),  # 90 used today
    ("admit", 5),  # allowed: the fourth request of the minute
    ("admit", 1),  # refused: requests_per_minute
    ("settle", 70),  # 160 used today, past the 150 budget
    ("admit", 1),  # refused: tokens_per_day (checked first)
]
EXPECTED = [
    (True, ""),
    (False, "tokens_per_minute"),
    (True, ""),
    (False, "concurrent_requests"),
    (True, ""),
    (True, ""),
    (False, "requests_per_minute"),
    (False, "tokens_per_day"),
]


def run_steps(
    admit: Callable[[int], Admission], settle: Callable[[Admission, int], object]
) -> list[tuple[bool, str]]:
    answers = []
    open_admissions: list[Admission] = []
    for operation, amount in STEPS:
        if operation == "admit":
            admission = admit(amount)
            answers.append((admission.allowed, admission.refused))
            if admission.allowed:
                open_admissions.append(admission)
        else:
            settle(open_admissions.pop(0), amount)
    return answers


def test_the_local_counts_follow_the_rules() -> None:
    counts = LocalCounts()
    now = 1_796_000_000_000
    key = [Subject.of("key", "k", LIMITS)]
    answers = run_steps(
        lambda n: counts.admit(key, n, 0, now),
        lambda admission, used: counts.settle(key, admission, used, 0, now),
    )
    assert answers == EXPECTED
    assert counts.slots["fp:{k}"] == {}
    # A new minute: requests and tokens start over; the day's budget does not.
    assert counts.admit(key, 1, 0, now + 60_000).refused == "tokens_per_day"
    assert counts.admit(key, 1, 0, now + 86_400_000).allowed


# -- teams and dollars ---------------------------------------------------------------------

#: Amounts in nanodollars. Keys a and d and b (no limits of its own) in team t; c alone.
TEAM_LIMITS = KeyLimits(
    requests_per_minute=6, usd_per_day=200, usd_per_month=1000, soft_usd_per_month=150
)
SUBJECTS = {
    "a": [
        Subject.of(
            "key", "a", KeyLimits(usd_per_day=100, soft_usd_per_day=50, concurrent_requests=2)
        ),
        Subject.of("team", "t", TEAM_LIMITS),
    ],
    "b": [Subject.of("team", "t", TEAM_LIMITS)],
    "c": [Subject.of("key", "c", KeyLimits(usd_per_day=1000))],
    "d": [
        Subject.of("key", "d", KeyLimits(requests_per_minute=100)),
        Subject.of("team", "t", TEAM_LIMITS),
    ],
}
#: ("admit", key, nanodollars reserved) or ("settle", the admission's step, its cost).
TEAM_STEPS: list[tuple[str, str | int, int]] = [
    ("admit", "a", 30),  # 0: a reserves 30 (a: 30), so does t (30)
    ("admit", "b", 40),  # 1: t: 70 reserved
    ("settle", 0, 60),  # a spent 60: past its soft day budget of 50; t spent 60, 40 held
    ("admit", "a", 30),  # 3: a: 60 + 30 < 100; t: 60 + 70 < 200
    ("settle", 1, 100),  # t spent 160: past its soft month budget of 150
    ("settle", 3, 45),  # a spent 105, t 205: no new soft crossing
    ("admit", "a", 1),  # 6: refused by a's own usd_per_day (105 >= 100)
    ("admit", "b", 1),  # 7: refused by t's usd_per_day (205 >= 200)
    ("admit", "d", 1),  # 8: d's own limits pass, t refuses: nothing counted for d
    ("admit", "c", 1),  # 9: c has no team: admitted
]
TEAM_EXPECTED = [
    ("admit", True, "", ""),
    ("admit", True, "", ""),
    ("crossed", [("key", "a", "day")]),
    ("admit", True, "", ""),
    ("crossed", [("team", "t", "month")]),
    ("crossed", []),
    ("admit", False, "usd_per_day", "key"),
    ("admit", False, "usd_per_day", "team"),
    ("admit", False, "usd_per_day", "team"),
    ("admit", True, "", ""),
]


def run_team_steps(
    admit: Callable[[str, int], Admission],
    settle: Callable[[str, Admission, int], list[tuple[str, str, str]]],
) -> list[tuple[Any, ...]]:
    answers: list[tuple[Any, ...]] = []
    admitted: dict[int, tuple[str, Admission]] = {}
    for step, (operation, which, amount) in enumerate(TEAM_STEPS):
        if operation == "admit":
            assert isinstance(which, str)
            admission = admit(which, amount)
            answers.append(
                (
                    "admit",
                    admission.allowed,
                    admission.refused,
                    admission.refused and admission.subject,
                )
            )
            if admission.allowed:
                admitted[step] = (which, admission)
        else:
            assert isinstance(which, int)
            name, admission = admitted.pop(which)
            answers.append(("crossed", settle(name, admission, amount)))
    return answers


#: What is left: a spent 105 (nothing held), t spent 205 (nothing held); c holds 1.
SPENT = {"a": (105, 0), "t": (205, 0), "c": (0, 1)}


def test_the_local_counts_follow_the_rules_for_teams_and_dollars() -> None:
    counts = LocalCounts()
    now = 1_796_904_000_000  # 2026-12-10T12:00Z
    answers = run_team_steps(
        lambda name, nano: counts.admit(SUBJECTS[name], 10, nano, now),
        lambda name, admission, cost: [
            (c.kind, c.name, c.window)
            for c in counts.settle(SUBJECTS[name], admission, 10, cost, now)
        ],
    )
    assert answers == TEAM_EXPECTED
    for name, (spent, held) in SPENT.items():
        day = counts.spent("team" if name == "t" else "key", name, now)["day"]
        assert (day["spent_nano"], day["reserved_nano"]) == (spent, held), name
    assert not [w for w in counts.windows if w[0] == "fp:{d}"]  # refused: nothing counted
    # The next day, the day's budgets renew; the month's spend stays.
    tomorrow = now + 86_400_000
    assert counts.admit(SUBJECTS["b"], 1, 0, tomorrow).allowed
    assert counts.admit(SUBJECTS["a"], 1, 0, tomorrow).allowed
    renewed = counts.spent("team", "t", tomorrow)
    assert renewed["day"] == {
        "window": "2026-12-11",
        "spent_nano": 0,
        "reserved_nano": 0,
        "tokens": 0,
    }
    assert renewed["month"]["window"] == "2026-12" and renewed["month"]["spent_nano"] == 205


@pytest_twisted.inlineCallbacks
def test_redis_gives_the_same_answers(redis_server: RedisServer) -> Any:
    if time.time() % 60 > 50:  # one UTC minute for the whole sequence
        yield task.deferLater(global_reactor, 61 - time.time() % 60, lambda: None)
    client = RedisClient(global_reactor, redis_server.url, 2.0)
    client.start()
    try:
        for _ in range(100):
            if client.connected:
                break
            yield task.deferLater(global_reactor, 0.05, lambda: None)
        store = LimitStore(None, client)
        key = [Subject.of("key", "same-rules", LIMITS)]
        redis_server.command("SCRIPT", "FLUSH")  # EVALSHA falls back to EVAL
        answers = []
        open_admissions: list[Admission] = []
        for operation, amount in STEPS:
            if operation == "admit":
                admission = yield store.admit(key, amount, 0)
                answers.append((admission.allowed, admission.refused))
                if admission.allowed:
                    assert not admission.local
                    open_admissions.append(admission)
            else:
                store.settle(key, open_admissions.pop(0), amount, 0)
                yield client.call("PING")  # the settlement has run (replies come in order)
        assert answers == EXPECTED
        assert redis_server.command("ZCARD", "fp:{same-rules}:c") == "0"
        names = redis_server.command("--scan", "--pattern", "fp:{same-rules}:*").split()
        assert names and all(int(redis_server.command("PTTL", n)) > 0 for n in names)
    finally:
        client.stop()
        yield defer.succeed(None)


@pytest_twisted.inlineCallbacks
def test_redis_gives_the_same_answers_for_teams_and_dollars(redis_server: RedisServer) -> Any:
    if time.time() % 86400 > 86340:  # one UTC day for the whole sequence
        yield task.deferLater(global_reactor, 86401 - time.time() % 86400, lambda: None)
    client = RedisClient(global_reactor, redis_server.url, 2.0)
    client.start()
    try:
        for _ in range(100):
            if client.connected:
                break
            yield task.deferLater(global_reactor, 0.05, lambda: None)
        store = LimitStore(None, client)
        redis_server.command("SCRIPT", "FLUSH")
        for name in ("a", "c", "d", "team:t"):  # what an earlier run left
            for counter in redis_server.command("--scan", "--pattern", f"fp:{{{name}}}:*").split():
                redis_server.command("DEL", counter)
        alerts = store.metrics.budget_alerts.series
        answers: list[tuple[Any, ...]] = []
        admitted: dict[int, tuple[str, Admission]] = {}
        for step, (operation, which, amount) in enumerate(TEAM_STEPS):
            if operation == "admit":
                assert isinstance(which, str)
                admission = yield store.admit(SUBJECTS[which], 10, amount)
                assert not admission.local
                answers.append(
                    (
                        "admit",
                        admission.allowed,
                        admission.refused,
                        admission.refused and admission.subject,
                    )
                )
                if admission.allowed:
                    admitted[step] = (which, admission)
            else:
                assert isinstance(which, int)
                name, admission = admitted.pop(which)
                before = dict(alerts)
                store.settle(SUBJECTS[name], admission, 10, amount)
                # The settlement has run (replies come in order; the first PING may
                # pass an EVAL sent after a NOSCRIPT: the second cannot).
                yield client.call("PING")
                yield client.call("PING")
                answers.append(
                    (
                        "crossed",
                        [labels for labels in alerts if alerts[labels] != before.get(labels)],
                    )
                )
        assert answers == TEAM_EXPECTED
        for name, (spent, held) in SPENT.items():
            found = yield store.spent("team" if name == "t" else "key", name)
            assert (found["day"]["spent_nano"], found["day"]["reserved_nano"]) == (spent, held)
            assert found["day"]["window"] == time.strftime("%Y-%m-%d", time.gmtime())
        assert not redis_server.command("--scan", "--pattern", "fp:{d}:*").split()
        names = redis_server.command("--scan", "--pattern", "fp:{team:t}:*").split()
        assert any(":$m:" in n for n in names) and any(":$d:" in n for n in names)
        assert all(0 < int(redis_server.command("PTTL", n)) <= 2_764_800_000 for n in names)
    finally:
        client.stop()
        yield defer.succeed(None)
