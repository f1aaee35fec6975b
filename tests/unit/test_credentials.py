"""RefreshingCredential: one fetch at a time, used until a margin before expiry,
refreshed ahead in the background, failures told to the waiting requests and logged
while the old credential serves (a Clock and a controlled fetch; no threads)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from filterproxy.filters.credentials import Fetched, RefreshingCredential
from filterproxy.filters.records import AuthorizationFailed


class Source:
    """A fetch the test answers by hand: each call waits on its own Deferred."""

    def __init__(self) -> None:
        self.calls: list[defer.Deferred[Fetched[str]]] = []

    def run(self, fetch: Callable[[], Fetched[str]]) -> defer.Deferred[Fetched[str]]:
        d: defer.Deferred[Fetched[str]] = defer.Deferred()
        self.calls.append(d)
        return d


def fetch_never() -> Fetched[str]:
    raise AssertionError("run by the test's Source, not called")


def make(clock: Clock, source: Source) -> RefreshingCredential[str]:
    return RefreshingCredential(fetch_never, "test token", clock, run=source.run)


def test_requests_that_come_while_fetching_share_one_fetch() -> None:
    clock, source = Clock(), Source()
    credential = make(clock, source)
    first, second = credential.ready(), credential.ready()
    assert first is not None and second is not None and first is not second
    assert len(source.calls) == 1
    fired: list[object] = []
    first.addCallback(fired.append)
    second.addCallback(fired.append)
    source.calls[0].callback(Fetched("t1", clock.seconds() + 3600))
    assert fired == [None, None]
    assert credential.value == "t1"
    assert credential.ready() is None  # in hand: no waiting


def test_a_credential_is_refreshed_in_the_background_before_it_expires() -> None:
    clock, source = Clock(), Source()
    credential = make(clock, source)
    credential.prefetch()
    source.calls[0].callback(Fetched("t1", 3600.0))
    # A quarter of the lifetime (at most 15 min) before expiry, a refresh starts.
    clock.advance(3600 - 900 - 1)
    assert len(source.calls) == 1
    clock.advance(2)
    assert len(source.calls) == 2
    # Meanwhile requests go on with the credential in hand.
    assert credential.ready() is None and credential.value == "t1"
    source.calls[1].callback(Fetched("t2", clock.seconds() + 3600))
    assert credential.value == "t2"


def test_a_credential_is_not_used_in_its_last_margin() -> None:
    clock, source = Clock(), Source()
    credential = make(clock, source)
    credential.prefetch()
    source.calls[0].callback(Fetched("short", 10.0))  # lifetime 10 s: margin 1 s
    clock.advance(8.5)
    assert credential.ready() is None
    assert len(source.calls) == 2  # the background refresh began at 7.5 s
    clock.advance(0.6)  # 9.1 s: within the last second
    waiting = credential.ready()
    assert waiting is not None
    assert len(source.calls) == 2  # the same fetch serves it
    source.calls[1].callback(Fetched("next", clock.seconds() + 10))
    assert credential.value == "next"


def test_a_failed_fetch_fails_the_waiting_requests_with_the_source_named() -> None:
    clock, source = Clock(), Source()
    credential = make(clock, source)
    waiting = credential.ready()
    assert waiting is not None
    failures: list[AuthorizationFailed] = []
    waiting.addErrback(lambda f: failures.append(f.value))
    source.calls[0].errback(RuntimeError("STS said no"))
    assert len(failures) == 1
    assert "test token" in str(failures[0]) and "STS said no" in str(failures[0])
    # The next request tries again.
    assert credential.ready() is not None and len(source.calls) == 2


def test_a_failed_background_refresh_keeps_the_credential_in_hand_and_retries() -> None:
    clock, source = Clock(), Source()
    credential = make(clock, source)
    credential.prefetch()
    source.calls[0].callback(Fetched("t1", 3600.0))
    clock.advance(2700)
    assert len(source.calls) == 2
    source.calls[1].errback(RuntimeError("metadata server down"))
    assert credential.ready() is None and credential.value == "t1"
    clock.advance(30)
    assert len(source.calls) == 3  # tried again


def test_invalidate_makes_the_next_request_fetch() -> None:
    clock, source = Clock(), Source()
    credential = make(clock, source)
    credential.prefetch()
    source.calls[0].callback(Fetched("t1", None))
    assert credential.ready() is None
    credential.invalidate()
    assert credential.ready() is not None and len(source.calls) == 2


def test_close_stops_the_refreshes() -> None:
    clock, source = Clock(), Source()
    credential = make(clock, source)
    credential.prefetch()
    source.calls[0].callback(Fetched("t1", 100.0))
    credential.close()
    clock.advance(1000)
    assert len(source.calls) == 1
    assert not clock.getDelayedCalls()


@pytest.mark.parametrize("expires", [None, 50.0])
def test_a_credential_without_expiry_is_fetched_again_hourly(expires: float | None) -> None:
    clock, source = Clock(), Source()
    credential = make(clock, source)
    credential.prefetch()
    source.calls[0].callback(Fetched("t", expires))
    clock.advance(3601)
    assert len(source.calls) == 2
