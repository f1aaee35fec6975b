"""Retry decisions, backoff and Retry-After as plain functions."""

from __future__ import annotations

import pytest

from filterproxy.config import RetryPolicy, Timeouts, UpstreamPlan
from filterproxy.upstream.retry import (
    FailureKind,
    backoff_delay,
    counts_against_health,
    decide,
    is_retriable,
    parse_retry_after,
)

DEFAULT = RetryPolicy()


@pytest.mark.parametrize(
    ("kind", "status", "expected"),
    [
        (FailureKind.CONNECT_FAILURE, None, True),
        (FailureKind.RESET, None, True),
        (FailureKind.STATUS, 429, True),
        (FailureKind.STATUS, 503, True),
        (FailureKind.STATUS, 501, False),  # not in retriable_status_codes, and no '5xx'
        (FailureKind.STATUS, 400, False),
        (FailureKind.TIMEOUT, None, False),
        (FailureKind.PROTOCOL_ERROR, None, False),
    ],
)
def test_default_policy(kind: FailureKind, status: int | None, expected: bool) -> None:
    assert is_retriable(DEFAULT, kind, status) is expected


def test_5xx_condition_covers_every_5xx_but_not_429() -> None:
    policy = RetryPolicy(retry_on=frozenset({"5xx"}))
    assert is_retriable(policy, FailureKind.STATUS, 501)
    assert not is_retriable(policy, FailureKind.STATUS, 429)
    assert not is_retriable(policy, FailureKind.CONNECT_FAILURE)


def plan(*attempts: int) -> tuple[UpstreamPlan, ...]:
    return tuple(
        UpstreamPlan(f"c{i}", Timeouts(), RetryPolicy(max_attempts=n))
        for i, n in enumerate(attempts)
    )


def test_decide_retries_the_cluster_then_falls_over_then_gives_up() -> None:
    chain = plan(2, 1)
    first = decide(chain, 0, 1, FailureKind.STATUS, 503)
    assert first.retry and first.plan_index == 0 and not first.fallback
    second = decide(chain, 0, 2, FailureKind.STATUS, 503)
    assert second.retry and second.plan_index == 1 and second.fallback
    assert not decide(chain, 1, 1, FailureKind.STATUS, 503).retry


def test_decide_never_retries_what_the_policy_does_not_name() -> None:
    assert not decide(plan(3, 3), 0, 1, FailureKind.STATUS, 400).retry
    assert not decide(plan(3, 3), 0, 1, FailureKind.TIMEOUT).retry


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    policy = RetryPolicy(base_interval=0.25, max_interval=5.0)
    assert backoff_delay(policy, 1, 0.999) == pytest.approx(0.25 * 0.999)
    assert backoff_delay(policy, 3, 0.5) == pytest.approx(0.5)  # ceiling 1.0
    assert backoff_delay(policy, 10, 0.999) == pytest.approx(5.0 * 0.999)  # capped
    assert backoff_delay(policy, 2, 0.0) == 0.0


def test_retry_after_is_honoured_up_to_its_cap() -> None:
    policy = RetryPolicy(retry_after_max=10.0)
    assert backoff_delay(policy, 1, 0.1, retry_after=3.0) == 3.0
    assert backoff_delay(policy, 1, 0.1, retry_after=120.0) == 10.0


def test_retry_after_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now) == pytest.approx(20.0)
    assert parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_only_server_side_failures_count_against_health() -> None:
    assert counts_against_health(FailureKind.STATUS, 503)
    assert not counts_against_health(FailureKind.STATUS, 429)
    assert counts_against_health(FailureKind.CONNECT_FAILURE)
    assert counts_against_health(FailureKind.TIMEOUT)
