"""The spend report: the ledger's rows of a period, totalled per key, team, model or
provider, and per day — as a document (JSON), a text table (``filterproxy spend``) and
a page with the days plotted (the admin listener's ``GET /spend/report``). No I/O.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlencode

from filterproxy.extensions.spend.ledger import COUNTERS, SpendRow

__all__ = [
    "GROUPINGS",
    "format_usd",
    "nice_ceiling",
    "render_page",
    "render_table",
    "report_document",
]

#: What a report can total by.
GROUPINGS: Final = ("key", "team", "model", "provider")
#: The groups the plot shows apart; the rest are summed as "other".
PLOTTED_GROUPS: Final = 8
#: Colours of the plotted groups (distinguishable, also in grey), then "other".
_COLOURS: Final = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
)
_OTHER_COLOUR: Final = "#b0b0b0"
_NONE: Final = {"key": "(no key)", "team": "(no team)", "model": "(no model)", "provider": "(none)"}


def _usd(nano: int) -> float:
    return round(nano / 1_000_000_000, 9)


def _totals(rows: Iterable[SpendRow]) -> dict[str, int]:
    totals = {name: 0 for _, name in COUNTERS}
    for row in rows:
        for _, name in COUNTERS:
            totals[name] += getattr(row, name)
    return totals


def _entry(name: str, totals: Mapping[str, int]) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "usd": _usd(totals["nano_usd"])}
    entry.update({n: v for n, v in totals.items() if n != "nano_usd"})
    entry["nano_usd"] = totals["nano_usd"]
    return entry


def report_document(
    rows: Sequence[SpendRow],
    days: Sequence[str],
    by: str,
    where: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The report of *rows* over *days* (the period, in order) totalled by *by* (one of
    `GROUPINGS`): the total, one entry per group (most spent first), and per day the
    spend of each group. Amounts in dollars (``usd``) and exactly (``nano_usd``).
    *where* says which requests the rows were chosen from (``{"key": "alice"}``)."""
    if by not in GROUPINGS:
        raise ValueError(f"cannot total by {by!r}; one of: {', '.join(GROUPINGS)}")
    groups: dict[str, list[SpendRow]] = {}
    for row in rows:
        groups.setdefault(getattr(row, by) or _NONE[by], []).append(row)
    entries = [_entry(name, _totals(members)) for name, members in groups.items()]
    entries.sort(key=lambda e: (-e["nano_usd"], e["name"]))
    per_day: dict[str, dict[str, int]] = {day: {} for day in days}
    for name, members in groups.items():
        for row in members:
            spent = per_day.setdefault(row.day, {})
            spent[name] = spent.get(name, 0) + row.nano_usd
    return {
        "from": days[0] if days else None,
        "to": days[-1] if days else None,
        "by": by,
        "where": dict(where or {}),
        "total": _entry("total", _totals(rows)),
        "groups": entries,
        "days": [
            {
                "day": day,
                "usd": _usd(sum(spent.values())),
                "nano_usd": sum(spent.values()),
                "groups": {name: _usd(nano) for name, nano in sorted(spent.items())},
            }
            for day, spent in sorted(per_day.items())
        ],
    }


def format_usd(usd: float) -> str:
    """Dollars as people read them: cents for large amounts, more digits for small."""
    if usd == 0:
        return "$0"
    if abs(usd) >= 1:
        return f"${usd:,.2f}"
    if abs(usd) >= 0.01:
        return f"${usd:.4f}"
    return f"${usd:.6f}"


_TABLE_COLUMNS: Final = (
    ("requests", "requests"),
    ("input", "input"),
    ("cached_input", "cached"),
    ("cache_write", "written"),
    ("output", "output"),
    ("reasoning", "reasoning"),
)


def render_table(document: Mapping[str, Any]) -> str:
    """The report as a text table: one line per group, then the total."""
    header = [document["by"], "cost", *(title for _, title in _TABLE_COLUMNS)]
    lines = [
        [e["name"], format_usd(e["usd"]), *(f"{e[name]:,}" for name, _ in _TABLE_COLUMNS)]
        for e in [*document["groups"], document["total"]]
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [
        f"spend from {document['from']} to {document['to']}, by {document['by']}",
        "",
        line(header),
        rule,
        *(line(cells) for cells in lines[:-1]),
        rule,
        line(lines[-1]),
    ]
    return "\n".join(out) + "\n"


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least *value* (the
    plot's top: its four gridlines then fall on round amounts)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power * (1 + 1e-12):
            return step * power
    return 10 * power


def _plot(document: Mapping[str, Any]) -> str:
    """The days as stacked bars, one colour per group (the most spent first; the rest
    as "other"): an inline SVG, so the page needs nothing else."""
    days = document["days"]
    names = [e["name"] for e in document["groups"]]
    shown = names[:PLOTTED_GROUPS]
    colours = dict(zip(shown, _COLOURS, strict=False))
    width, height, left, bottom, top = 900, 320, 70, 40, 20
    plot_w, plot_h = width - left - 20, height - bottom - top
    highest = nice_ceiling(max((d["usd"] for d in days), default=0))
    step = plot_w / max(len(days), 1)
    bar = max(step * 0.7, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="spend per day">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="#444"/>',
    ]
    for i in range(5):
        value = highest * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
            f"{html.escape(format_usd(value))}</text>"
        )
    label_every = max(1, len(days) // 12)
    for n, day in enumerate(days):
        x = left + n * step + (step - bar) / 2
        y = top + plot_h
        stack = [(name, usd) for name, usd in day["groups"].items() if name in colours]
        other = sum(usd for name, usd in day["groups"].items() if name not in colours)
        stack.sort(key=lambda item: shown.index(item[0]))
        for name, usd in [*stack, ("other", other)]:
            if usd <= 0:
                continue
            h = plot_h * usd / highest
            y -= h
            colour = colours.get(name, _OTHER_COLOUR)
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{html.escape(day["day"])} {html.escape(name)}: '
                f"{html.escape(format_usd(usd))}</title></rect>"
            )
        if n % label_every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                f'font-size="11">{html.escape(day["day"][5:])}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _legend(document: Mapping[str, Any]) -> str:
    names = [e["name"] for e in document["groups"]]
    items = [
        f'<li><span class="swatch" style="background:{colour}"></span>{html.escape(name)}</li>'
        for name, colour in zip(names[:PLOTTED_GROUPS], _COLOURS, strict=False)
    ]
    if len(names) > PLOTTED_GROUPS:
        items.append(
            f'<li><span class="swatch" style="background:{_OTHER_COLOUR}"></span>other</li>'
        )
    return '<ul class="legend">' + "".join(items) + "</ul>"


_STYLE: Final = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; }
p.period { color: #555; margin: 0 0 16px; }
nav a { margin-right: 12px; }
table { border-collapse: collapse; margin-top: 16px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tfoot td { font-weight: bold; border-top: 2px solid #444; }
.legend { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 14px; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 5px; vertical-align: -1px; }
.total { font-size: 28px; font-weight: 600; }
"""


def render_page(document: Mapping[str, Any]) -> str:
    """The report as an HTML page: the total, the days plotted, a table per group, and
    links to total by the other groupings over the same period."""
    by = document["by"]
    where = document.get("where") or {}
    period = urlencode({"from": document["from"], "to": document["to"], **where})
    chosen = ", ".join(f"{name} {value}" for name, value in where.items())
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(n)}" value="{html.escape(v)}">'
        for n, v in where.items()
    )
    links = " ".join(
        f'<a href="?{html.escape(period)}&amp;by={g}">{"<b>" + g + "</b>" if g == by else g}</a>'
        for g in GROUPINGS
    )
    head = "".join(
        f"<th>{html.escape(title)}</th>" for title in [by, "cost", *(t for _, t in _TABLE_COLUMNS)]
    )

    def row(entry: Mapping[str, Any]) -> str:
        cells = [html.escape(str(entry["name"])), html.escape(format_usd(entry["usd"]))]
        cells += [f"{entry[name]:,}" for name, _ in _TABLE_COLUMNS]
        return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"

    body = "".join(row(e) for e in document["groups"])
    total = document["total"]
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>filterproxy spend</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>Spend</h1>"
        f'<p class="period">{html.escape(str(document["from"]))} to '
        f"{html.escape(str(document['to']))} (UTC days)"
        f"{'; only ' + html.escape(chosen) if chosen else ''}</p>"
        f'<p class="total" id="total">{html.escape(format_usd(total["usd"]))}</p>'
        f"<nav>total by: {links}</nav>"
        f'<form method="get">from <input type="date" name="from" value="{html.escape(str(document["from"]))}"> '
        f'to <input type="date" name="to" value="{html.escape(str(document["to"]))}"> '
        f'<input type="hidden" name="by" value="{html.escape(by)}">{hidden}'
        "<button>show</button></form>"
        f"{_plot(document)}{_legend(document)}"
        f'<table id="groups"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
        f"<tfoot>{row({**total, 'name': 'total'})}</tfoot></table>"
        "</body></html>\n"
    )
