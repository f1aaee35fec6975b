"""The spend report on the admin listener: ``GET /spend`` (JSON) and
``GET /spend/report`` (the page), for a period (``from``, ``to``: UTC days, the last 30
days by default) totalled ``by`` key, team, model or provider, of every request or of
one ``key``'s or one ``team``'s.

Both are management routes (`filterproxy.filters.admin`): they need the admin token.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Final

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from filterproxy.extensions.spend.ledger import SpendLedger, SpendRow, day_of, days_between
from filterproxy.extensions.spend.report import GROUPINGS, render_page, report_document
from filterproxy.filters.admin import AdminError, AdminReply, AdminRequest, AdminRoutes

__all__ = ["DEFAULT_DAYS", "period", "register"]

#: The days a report covers when the request names no period (today included).
DEFAULT_DAYS: Final = 30
_OWNER: Final = "spend"


def period(query: Mapping[str, tuple[str, ...]], today: str) -> tuple[list[str], str]:
    """The days and the grouping a report request asks for (`AdminError` 400 naming
    the parameter when one is wrong)."""

    def one(name: str) -> str | None:
        values = query.get(name)
        return values[-1] if values else None

    last = one("to") or today
    try:
        default_first = datetime.date.fromisoformat(last) - datetime.timedelta(
            days=DEFAULT_DAYS - 1
        )
    except ValueError:
        raise AdminError(400, f"'to': expected a day as YYYY-MM-DD, got {last!r}") from None
    first = one("from") or default_first.isoformat()
    try:
        datetime.date.fromisoformat(first)
    except ValueError:
        raise AdminError(400, f"'from': expected a day as YYYY-MM-DD, got {first!r}") from None
    try:
        days = days_between(first, last)
    except ValueError as e:
        raise AdminError(400, f"'from', 'to': {e}") from None
    by = one("by") or "key"
    if by not in GROUPINGS:
        raise AdminError(400, f"'by': one of {', '.join(GROUPINGS)}, got {by!r}")
    return days, by


def register(routes: AdminRoutes, ledger: SpendLedger, clock: IReactorTime) -> None:
    """Serve the report of *ledger* on *routes*."""

    def rows(
        request: AdminRequest,
    ) -> tuple[defer.Deferred[list[SpendRow]], list[str], str, dict[str, str]]:
        days, by = period(request.query, day_of(clock.seconds()))
        wanted = {
            name: values[-1]
            for name in ("key", "team", "model", "provider")
            if (values := request.query.get(name))
        }
        found = ledger.read(days)
        if wanted:
            found.addCallback(
                lambda found: [
                    r for r in found if all(getattr(r, n) == v for n, v in wanted.items())
                ]
            )
        return found, days, by, wanted

    def unavailable(failure: object) -> AdminReply:
        message = getattr(failure, "getErrorMessage", lambda: str(failure))()
        return AdminReply.error(503, f"cannot read the spend ledger: {message}")

    def as_json(request: AdminRequest) -> defer.Deferred[AdminReply]:
        d, days, by, wanted = rows(request)
        reply = d.addCallback(
            lambda found: AdminReply.json(report_document(found, days, by, wanted))
        )
        return reply.addErrback(unavailable)

    def as_page(request: AdminRequest) -> defer.Deferred[AdminReply]:
        d, days, by, wanted = rows(request)
        page = d.addCallback(
            lambda found: AdminReply.html(render_page(report_document(found, days, by, wanted)))
        )
        return page.addErrback(unavailable)

    routes.add("GET", "/spend", as_json, owner=_OWNER)
    routes.add("GET", "/spend/report", as_page, owner=_OWNER)
