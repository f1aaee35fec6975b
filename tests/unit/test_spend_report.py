"""The spend ledger's rows (in the process) and the report made of them."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock

from filterproxy.extensions.spend.ledger import (
    MAX_READ_DAYS,
    SpendLedger,
    SpendRow,
    day_of,
    days_between,
    rows_from_hash,
)
from filterproxy.extensions.spend.report import (
    nice_ceiling,
    render_page,
    render_table,
    report_document,
)
from filterproxy.filters.records import Cost, TokenUsage
from filterproxy.filters.resources import Resources

DAY = 1_796_515_200  # 2026-12-06T00:00:00Z


def ledger_at(seconds: float) -> tuple[SpendLedger, Clock]:
    clock = Clock()
    clock.advance(seconds)
    return SpendLedger(None, Resources(clock=clock)), clock


def test_days_are_utc_and_periods_are_bounded() -> None:
    assert day_of(DAY) == "2026-12-06"
    assert day_of(DAY - 1) == "2026-12-05"
    assert days_between("2026-11-29", "2026-12-02") == [
        "2026-11-29",
        "2026-11-30",
        "2026-12-01",
        "2026-12-02",
    ]
    with pytest.raises(ValueError, match="before it starts"):
        days_between("2026-12-02", "2026-12-01")
    with pytest.raises(ValueError, match=f"at most {MAX_READ_DAYS}"):
        days_between("2024-01-01", "2026-12-01")
    with pytest.raises(ValueError):
        days_between("2026-13-01", "2026-12-01")


def test_the_process_ledger_adds_requests_to_their_days_rows() -> None:
    ledger, clock = ledger_at(DAY + 10)
    usage = TokenUsage(input=1000, cached_input=200, cache_write=100, output=50, reasoning=20)
    cost = Cost("gpt-4o", "openai", 7_250_000)
    ledger.record("alice", "research", "gpt-4o", "openai", cost, usage)
    ledger.record("alice", "research", "gpt-4o", "openai", cost, usage)
    ledger.record("bob", "", "gpt-4o", "openai", Cost("gpt-4o", "openai", 5), None)
    clock.advance(86_400)
    ledger.record("alice", "research", "gpt-4o", "openai", cost, usage)

    first = ledger.read(["2026-12-06"])
    rows = sorted(first.result, key=lambda r: r.key)  # type: ignore[attr-defined]
    assert rows == [
        SpendRow(
            "2026-12-06", "alice", "research", "gpt-4o", "openai",
            nano_usd=14_500_000, requests=2, input=2000, cached_input=400,
            cache_write=200, output=100, reasoning=40,
        ),
        SpendRow("2026-12-06", "bob", "", "gpt-4o", "openai", nano_usd=5, requests=1),
    ]  # fmt: skip
    both = ledger.read(["2026-12-06", "2026-12-07"]).result  # type: ignore[attr-defined]
    assert sum(r.requests for r in both) == 4
    assert ledger.read(["2026-12-05"]).result == []  # type: ignore[attr-defined]


def test_rows_come_back_from_a_redis_hash_whatever_the_names_hold() -> None:
    odd_model = 'a|b "c" ü\t'
    prefix = json.dumps(["k", "t", odd_model, "p"], separators=(",", ":"))
    flat = [
        f"{prefix}|n".encode(),
        b"123",
        f"{prefix}|r".encode(),
        b"2",
        f"{prefix}|o".encode(),
        b"9",
        b"not-ours",
        b"1",
        b"[broken|n",
        b"1",
    ]
    assert rows_from_hash("2026-12-06", flat) == [
        SpendRow("2026-12-06", "k", "t", odd_model, "p", nano_usd=123, requests=2, output=9)
    ]


def rows() -> list[SpendRow]:
    return [
        SpendRow("2026-12-05", "alice", "research", "gpt-4o", "openai", 3_000_000_000, 3, 100),
        SpendRow("2026-12-06", "alice", "research", "claude", "anthropic", 1_500_000_000, 1),
        SpendRow("2026-12-06", "bob", "research", "gpt-4o", "openai", 2_000_000_000, 2),
        SpendRow("2026-12-06", "", "", "gpt-4o", "openai", 250_000, 1),
    ]


def test_the_report_totals_by_each_grouping_and_adds_up() -> None:
    days = days_between("2026-12-04", "2026-12-06")
    by_key = report_document(rows(), days, "key")
    assert [(g["name"], g["nano_usd"], g["requests"]) for g in by_key["groups"]] == [
        ("alice", 4_500_000_000, 4),
        ("bob", 2_000_000_000, 2),
        ("(no key)", 250_000, 1),
    ]
    assert by_key["total"]["nano_usd"] == 6_500_250_000
    assert by_key["total"]["usd"] == 6.50025
    assert [d["day"] for d in by_key["days"]] == days
    assert by_key["days"][0]["usd"] == 0
    assert by_key["days"][2]["groups"] == {"(no key)": 0.00025, "alice": 1.5, "bob": 2.0}
    for by in ("team", "model", "provider"):
        document = report_document(rows(), days, by)
        assert sum(g["nano_usd"] for g in document["groups"]) == 6_500_250_000
        assert sum(d["nano_usd"] for d in document["days"]) == 6_500_250_000
    assert [g["name"] for g in report_document(rows(), days, "model")["groups"]] == [
        "gpt-4o",
        "claude",
    ]
    with pytest.raises(ValueError, match="cannot total by 'colour'"):
        report_document(rows(), days, "colour")


def test_the_table_lines_up_and_ends_with_the_total() -> None:
    text = render_table(report_document(rows(), days_between("2026-12-05", "2026-12-06"), "team"))
    lines = text.splitlines()
    assert lines[0] == "spend from 2026-12-05 to 2026-12-06, by team"
    assert lines[2].split() == [
        "team",
        "cost",
        "requests",
        "input",
        "cached",
        "written",
        "output",
        "reasoning",
    ]
    assert lines[4].split()[:3] == ["research", "$6.50", "6"]
    assert lines[-1].split()[:3] == ["total", "$6.50", "7"]
    assert len({len(line) for line in lines[2:4]}) == 1  # the header as wide as its rule


def test_the_page_plots_the_days_and_escapes_names() -> None:
    days = days_between("2026-12-05", "2026-12-06")
    hostile = [SpendRow("2026-12-06", "k", "", "<script>alert(1)</script>", "p", 10, 1)]
    page = render_page(report_document(rows() + hostile, days, "model"))
    assert "<script>alert" not in page
    assert "&lt;script&gt;" in page
    assert page.count("<rect ") == 4  # 2026-12-05: gpt-4o; 12-06: gpt-4o, claude, the hostile one
    assert 'id="total">$6.50<' in page


@pytest.mark.parametrize(
    ("value", "top"),
    [(0, 1.0), (0.7, 1.0), (1, 1.0), (1.2, 2.0), (2.2, 2.5), (3, 5.0), (7, 10.0), (0.013, 0.02)],
)
def test_the_plots_top_is_a_round_amount(value: float, top: float) -> None:
    assert nice_ceiling(value) == pytest.approx(top)


def test_a_report_of_one_key_says_so_and_keeps_it_in_its_links() -> None:
    days = days_between("2026-12-05", "2026-12-06")
    only = [r for r in rows() if r.key == "alice"]
    document = report_document(only, days, "model", {"key": "alice"})
    assert document["where"] == {"key": "alice"}
    page = render_page(document)
    assert "only key alice" in page
    assert 'href="?from=2026-12-05&amp;to=2026-12-06&amp;key=alice&amp;by=team"' in page
    assert '<input type="hidden" name="key" value="alice">' in page
