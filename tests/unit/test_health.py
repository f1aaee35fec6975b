"""Outlier ejection and endpoint choice with a fake clock (plain numbers)."""

from __future__ import annotations

from collections import Counter

from filterproxy.config import OutlierDetection
from filterproxy.upstream.health import Balancer, EndpointHealth

POLICY = OutlierDetection(consecutive_failures=3, base_ejection_time=30.0, max_ejection_time=75.0)


def test_consecutive_failures_eject_for_a_growing_time() -> None:
    health = EndpointHealth(POLICY)
    assert not health.record_failure(0.0)
    assert not health.record_failure(1.0)
    assert health.record_failure(2.0)
    assert not health.available(31.9)
    assert health.available(32.0)
    for t in (40.0, 41.0, 42.0):
        health.record_failure(t)
    assert not health.available(101.9)  # second ejection: 60 s
    assert health.available(102.0)
    for t in (200.0, 201.0, 202.0):
        health.record_failure(t)
    assert health.ejected_until == 202.0 + 75.0  # capped at max_ejection_time


def test_a_success_resets_the_count() -> None:
    health = EndpointHealth(POLICY)
    health.record_failure(0.0)
    health.record_failure(1.0)
    health.record_success()
    assert not health.record_failure(2.0)
    assert health.available(2.0)


def test_round_robin_with_equal_weights() -> None:
    balancer = Balancer([1, 1, 1], [EndpointHealth(POLICY) for _ in range(3)])
    assert [balancer.pick(0.0) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_weights_share_the_traffic() -> None:
    balancer = Balancer([3, 1], [EndpointHealth(POLICY) for _ in range(2)])
    picks = Counter(balancer.pick(0.0) for _ in range(400))
    assert picks == {0: 300, 1: 100}


def test_ejected_and_avoided_endpoints_are_skipped() -> None:
    healths = [EndpointHealth(POLICY) for _ in range(3)]
    balancer = Balancer([1, 1, 1], healths)
    for t in (0.0, 1.0, 2.0):
        healths[1].record_failure(t)
    assert 1 not in {balancer.pick(10.0) for _ in range(10)}
    assert {balancer.pick(10.0, avoid={0}) for _ in range(10)} == {2}


def test_when_every_endpoint_is_ejected_the_least_recently_failed_is_tried() -> None:
    healths = [EndpointHealth(POLICY) for _ in range(2)]
    balancer = Balancer([1, 1], healths)
    for t in (0.0, 1.0, 2.0):
        healths[0].record_failure(t)
    for t in (3.0, 4.0, 5.0):
        healths[1].record_failure(t)
    assert balancer.pick(10.0) == 0
