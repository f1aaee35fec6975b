"""The spend ledger in a real Redis: what two processes record (summed, written once a
second), a third reads."""

from __future__ import annotations

import time
from typing import Any

import pytest_twisted
from twisted.internet import defer, task
from twisted.internet import reactor as global_reactor

from filterproxy.config import RedisConfig
from filterproxy.extensions.spend.ledger import RETENTION_DAYS, SpendLedger, SpendRow, day_of
from filterproxy.filters.records import Cost, TokenUsage
from filterproxy.filters.resources import Resources
from tests.integration.conftest import RedisServer


@pytest_twisted.inlineCallbacks
def test_two_processes_add_to_the_same_rows_and_read_them_back(redis_server: RedisServer) -> Any:
    config = RedisConfig(redis_server.url, 2.0, "open")
    writers = [Resources(global_reactor), Resources(global_reactor)]
    try:
        ledgers = [SpendLedger(config, r) for r in writers]
        usage = TokenUsage(input=1200, cached_input=1000, output=30, reasoning=10)
        odd = 'model "with" | and ü'
        for ledger in ledgers:
            ledger.record(
                "alice", "research", "gpt-4o", "openai", Cost("gpt-4o", "openai", 4_500), usage
            )
            ledger.record("", "", odd, "", Cost(odd, "", 0, priced=False), None)
        today = day_of(time.time())
        assert all(len(ledger.pending) == 2 for ledger in ledgers)  # held, summed
        reader = SpendLedger(config, Resources(global_reactor))
        assert (yield reader.read([today])) == []  # nothing written yet
        # Each process writes what it holds within a second, or now when asked (as when
        # it stops).
        yield ledgers[0].flush()
        rows = yield reader.read([today])
        assert sum(r.requests for r in rows) == 2
        for _ in range(100):
            rows = yield reader.read([today])
            if sum(r.requests for r in rows) == 4:
                break
            yield task.deferLater(global_reactor, 0.05, lambda: None)
        assert not ledgers[1].pending
        assert sorted(rows, key=lambda r: r.key) == [
            SpendRow(today, "", "", odd, "", nano_usd=0, requests=2),
            SpendRow(
                today, "alice", "research", "gpt-4o", "openai", nano_usd=9_000,
                requests=2, input=2400, cached_input=2000, output=60, reasoning=20,
            ),
        ]  # fmt: skip
        ttl = int(redis_server.command("TTL", f"fp:spend:{today}"))
        assert RETENTION_DAYS * 86400 - 60 < ttl <= RETENTION_DAYS * 86400
        assert (yield reader.read(["2001-01-01"])) == []
    finally:
        for resources in writers:
            yield defer.maybeDeferred(resources.close)
