"""The two stores of per-key counts follow one set of rules: the same admissions and
settlements get the same answers from Redis's scripts (on a real redis-server, after it
forgot them: SCRIPT FLUSH) as from this process's counts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest_twisted
from twisted.internet import defer, task
from twisted.internet import reactor as global_reactor

from filterproxy.clients.redis import RedisClient
from filterproxy.extensions.keys.config import GatewayKey, KeyLimits
from filterproxy.extensions.keys.filter import LimitStore
from filterproxy.extensions.keys.limits import Admission, LocalCounts

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
    admit: Callable[[int], Admission], settle: Callable[[Admission, int], None]
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
    answers = run_steps(
        lambda n: counts.admit("k", LIMITS, n, now),
        lambda admission, used: counts.settle("k", LIMITS, admission, used, now),
    )
    assert answers == EXPECTED
    assert counts.slots["k"] == {}
    # A new minute: requests and tokens start over; the day's budget does not.
    assert counts.admit("k", LIMITS, 1, now + 60_000).refused == "tokens_per_day"
    assert counts.admit("k", LIMITS, 1, now + 86_400_000).allowed


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
        key = GatewayKey(name="same-rules", digest="0" * 64, limits=LIMITS)
        redis_server.command("SCRIPT", "FLUSH")  # EVALSHA falls back to EVAL
        answers = []
        open_admissions: list[Admission] = []
        for operation, amount in STEPS:
            if operation == "admit":
                admission = yield store.admit(key, amount)
                answers.append((admission.allowed, admission.refused))
                if admission.allowed:
                    assert not admission.local
                    open_admissions.append(admission)
            else:
                store.settle(key, open_admissions.pop(0), amount)
                yield client.call("PING")  # the settlement has run (replies come in order)
        assert answers == EXPECTED
        assert redis_server.command("ZCARD", "fp:{same-rules}:c") == "0"
        names = redis_server.command("--scan", "--pattern", "fp:{same-rules}:*").split()
        assert names and all(int(redis_server.command("PTTL", n)) > 0 for n in names)
    finally:
        client.stop()
        yield defer.succeed(None)
