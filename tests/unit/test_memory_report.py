"""The admin's memory report: live objects of the gateway's classes by name, and what a
pass of the cycle collector frees."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from filterproxy.observability.memory import (
    collect_cycles,
    live_objects,
    memory_report,
    process_memory,
)
from filterproxy.runtime.deadlines import Deadlines

NAME = "filterproxy.runtime.deadlines.Deadlines"


class _Clock:
    def seconds(self) -> float:
        return 0.0


@pytest.fixture(autouse=True)
def _no_automatic_passes() -> Iterator[None]:
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def test_live_objects_count_the_gateways_classes_by_name() -> None:
    before = live_objects().get(NAME, 0)
    kept = [Deadlines(_Clock()) for _ in range(3)]
    assert live_objects()[NAME] == before + 3
    del kept
    assert live_objects().get(NAME, 0) == before


def test_objects_in_a_cycle_count_as_live_until_a_collector_pass_frees_them() -> None:
    before = live_objects().get(NAME, 0)
    for _ in range(4):
        deadlines = Deadlines(_Clock())
        deadlines.entries[deadlines] = (0.0, lambda: None)  # refers to itself
    del deadlines
    assert live_objects()[NAME] == before + 4
    report = collect_cycles()
    assert report["objects"][NAME] == 4
    assert report["freed"] >= 4
    assert live_objects().get(NAME, 0) == before
    assert collect_cycles()["objects"].get(NAME) is None


def test_the_report_says_what_the_process_holds() -> None:
    report = memory_report({"client_connections": 0})
    assert report["held"] == {"client_connections": 0}
    assert report["process"]["rss_bytes"] > 1_000_000
    assert report["process"]["open_fds"] >= 3
    assert [g["generation"] for g in report["python"]["collector"]] == [0, 1, 2]
    assert process_memory()["open_fds"] == report["process"]["open_fds"]
