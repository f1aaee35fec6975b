"""A filter that waits for a remote answer: a budget service says whether a team may
spend. Its hook returns the Deferred of that answer; the chain holds the request until
it fires."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from filterproxy.filters.api import FilterStatus, HeadersResult, RequestHead, StreamFilter


class BudgetService(Protocol):
    """Your client of the budget service (treq, a Redis client, ...)."""

    def allows(self, team: str) -> Deferred[bool]: ...


@dataclass(frozen=True)
class TeamBudgetConfig:
    service: BudgetService
    #: Seconds to wait for the service before answering 503.
    timeout: float = 2.0


class TeamBudget(StreamFilter):
    """Answers 429 when the team's budget is spent, 503 when the service is silent."""

    config: TeamBudgetConfig

    def decode_headers(self, head: RequestHead, end_stream: bool) -> HeadersResult:
        team = head.headers.get("x-team") or ""
        answer = self.config.service.allows(team)
        # The gateway's clock (a test's Clock in FilterHarness), never the global reactor.
        answer.addTimeout(self.config.timeout, self.callbacks.clock)
        return answer.addCallbacks(self._answered, self._unavailable)

    def _answered(self, allowed: bool) -> FilterStatus:
        if allowed:
            return FilterStatus.CONTINUE
        self.callbacks.send_local_reply(429, "the team's budget is spent", code="budget_exhausted")
        return FilterStatus.STOP_ITERATION

    def _unavailable(self, failure: Failure) -> FilterStatus:
        self.callbacks.send_local_reply(
            503, "the budget service did not answer; try again", code="budget_unavailable"
        )
        return FilterStatus.STOP_ITERATION
