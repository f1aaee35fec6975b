"""Coarse deadlines: fire within one check after they pass, once, unless cleared or moved."""

from __future__ import annotations

from twisted.internet.task import Clock

from filterproxy.runtime.deadlines import RESOLUTION, Deadlines, deadlines_for


def test_a_deadline_fires_once_within_one_check_after_it_passes() -> None:
    clock = Clock()
    deadlines = Deadlines(clock)
    fired: list[str] = []
    deadlines.set("a", 1.0, lambda: fired.append("a"))
    clock.advance(0.9)
    assert fired == []
    clock.advance(0.1 + RESOLUTION)
    assert fired == ["a"]
    clock.advance(5)
    assert fired == ["a"] and not deadlines.entries


def test_setting_again_moves_it_and_clearing_cancels_it() -> None:
    clock = Clock()
    deadlines = Deadlines(clock)
    fired: list[str] = []
    deadlines.set("a", 1.0, lambda: fired.append("first"))
    deadlines.set("b", 1.0, lambda: fired.append("b"))
    clock.advance(0.75)
    deadlines.set("a", 1.0, lambda: fired.append("moved"))  # e.g. a chunk arrived: idle resets
    deadlines.clear("b")
    clock.advance(0.5)
    assert fired == []
    clock.advance(1.0)
    assert fired == ["moved"]


def test_a_failing_action_does_not_stop_the_others() -> None:
    clock = Clock()
    deadlines = Deadlines(clock)
    fired: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    deadlines.set("a", 0.1, broken)
    deadlines.set("b", 0.1, lambda: fired.append("b"))
    clock.advance(RESOLUTION)
    assert fired == ["b"]


def test_one_set_of_deadlines_per_reactor() -> None:
    first, second = Clock(), Clock()
    assert deadlines_for(first) is deadlines_for(first)
    assert deadlines_for(first) is not deadlines_for(second)


def test_now_is_the_clock_at_the_last_check_or_set() -> None:
    clock = Clock()
    clock.advance(100)
    deadlines = Deadlines(clock)
    assert deadlines.now == 100
    deadlines.set("a", 10, lambda: None)
    clock.advance(RESOLUTION / 2)
    assert deadlines.now == 100  # between checks it lags, by less than one check
    clock.advance(RESOLUTION / 2)
    assert deadlines.now == 100 + RESOLUTION
    clock.advance(0.1)
    deadlines.set("b", 10, lambda: None)
    assert deadlines.now == 100 + RESOLUTION + 0.1
