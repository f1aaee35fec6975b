"""Retry decisions as plain functions: what failed, may it be tried again, where, when.

Only failures before the first byte reached the client ever get here: once a response
has started, the router reports failures to the client instead.
"""

from __future__ import annotations

import email.utils
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from filterproxy.config import RetryPolicy, UpstreamPlan

__all__ = [
    "Decision",
    "FailureKind",
    "backoff_delay",
    "counts_against_health",
    "decide",
    "is_retriable",
    "parse_retry_after",
]


class FailureKind(enum.Enum):
    """How an attempt failed."""

    #: No connection: refused, unreachable, name lookup or TLS handshake failed, or the
    #: connect timeout passed. The request never reached the upstream.
    CONNECT_FAILURE = "connect-failure"
    #: The connection closed before any byte of a response.
    RESET = "reset"
    #: A complete response head with an error status.
    STATUS = "status"
    #: No response head within timeouts.first_byte.
    TIMEOUT = "timeout"
    #: The upstream sent something that is not HTTP.
    PROTOCOL_ERROR = "protocol-error"


def is_retriable(policy: RetryPolicy, kind: FailureKind, status: int | None = None) -> bool:
    """Whether *policy* allows another attempt after a failure of *kind*."""
    conditions = policy.retry_on
    if kind is FailureKind.CONNECT_FAILURE:
        return "connect-failure" in conditions
    if kind is FailureKind.RESET:
        return "reset" in conditions
    if kind is FailureKind.STATUS and status is not None:
        return ("5xx" in conditions and 500 <= status <= 599) or (
            "retriable-status-codes" in conditions and status in policy.retriable_status_codes
        )
    return False


def counts_against_health(kind: FailureKind, status: int | None = None) -> bool:
    """Whether the failure says something about the endpoint's health (a 429 says the
    caller is over a quota, a 4xx that the request was wrong: neither ejects)."""
    if kind is FailureKind.STATUS:
        return status is not None and status >= 500
    return True


@dataclass(frozen=True)
class Decision:
    """What to do after a failed attempt."""

    #: Try again (on `plan_index`, which may be a fallback cluster), or give up.
    retry: bool
    plan_index: int = 0
    #: The next attempt is the first on a fallback cluster (no backoff wait).
    fallback: bool = False


def decide(
    plan: Sequence[UpstreamPlan],
    plan_index: int,
    attempts_on_cluster: int,
    kind: FailureKind,
    status: int | None = None,
) -> Decision:
    """The next step after attempt number *attempts_on_cluster* on ``plan[plan_index]``
    failed: the same cluster while its policy allows, then the route's next fallback."""
    policy = plan[plan_index].retry
    if not is_retriable(policy, kind, status):
        return Decision(retry=False)
    if attempts_on_cluster < policy.max_attempts:
        return Decision(retry=True, plan_index=plan_index)
    if plan_index + 1 < len(plan):
        return Decision(retry=True, plan_index=plan_index + 1, fallback=True)
    return Decision(retry=False)


def backoff_delay(
    policy: RetryPolicy, retry_number: int, fraction: float, retry_after: float | None = None
) -> float:
    """Seconds to wait before retry number *retry_number* (1 for the first retry).

    Exponential backoff with full jitter: *fraction* (uniform in [0, 1)) of
    ``min(max_interval, base_interval · 2^(retry_number-1))``. A Retry-After from the
    upstream raises the wait to what it asked, up to ``retry_after_max``.
    """
    ceiling = min(policy.max_interval, policy.base_interval * 2.0 ** (retry_number - 1))
    delay = fraction * ceiling
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.retry_after_max))
    return delay


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After value (delay-seconds or an HTTP-date), given the Unix
    time *now*; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)
