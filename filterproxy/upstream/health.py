"""Passive health (outlier detection) and endpoint choice, driven by a clock value.

Nothing here does I/O or reads the time: callers pass ``now``, so the rules are tested
with plain numbers.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from filterproxy.config import OutlierDetection

__all__ = ["Balancer", "EndpointHealth"]


class EndpointHealth:
    """One endpoint's record: consecutive failures and ejections.

    After ``consecutive_failures`` failures in a row the endpoint is ejected for
    ``base_ejection_time`` times (the number of times it has been ejected), at most
    ``max_ejection_time``. A success clears both counts.
    """

    def __init__(self, policy: OutlierDetection) -> None:
        self.policy = policy
        self.consecutive_failures = 0
        self.ejections = 0
        self.ejected_until = -math.inf
        self.last_failure = -math.inf

    def available(self, now: float) -> bool:
        return now >= self.ejected_until

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.ejections = 0

    def record_failure(self, now: float) -> bool:
        """Count a failure; True when it ejects the endpoint."""
        self.last_failure = now
        self.consecutive_failures += 1
        if self.consecutive_failures < self.policy.consecutive_failures or not self.available(now):
            return False
        self.ejections += 1
        self.consecutive_failures = 0
        duration = min(
            self.policy.base_ejection_time * self.ejections, self.policy.max_ejection_time
        )
        self.ejected_until = now + duration
        return True


class Balancer:
    """Smooth weighted round-robin over the endpoints that are not ejected.

    With equal weights this is plain round-robin. When no endpoint is available, the one
    that failed least recently is tried anyway: a request is never refused untried.
    """

    def __init__(self, weights: Sequence[int], health: Sequence[EndpointHealth]) -> None:
        self.weights = list(weights)
        self.health = health
        self.current = [0] * len(weights)

    def pick(self, now: float, avoid: Collection[int] = ()) -> int:
        """The index of the endpoint for the next attempt; *avoid* (endpoints that
        already failed this request) are chosen only when nothing else is left."""
        candidates = [
            i for i in range(len(self.weights)) if i not in avoid and self.health[i].available(now)
        ]
        if not candidates:
            pool = [i for i in range(len(self.weights)) if i not in avoid] or list(
                range(len(self.weights))
            )
            return min(pool, key=lambda i: self.health[i].last_failure)
        if len(candidates) == 1:
            return candidates[0]
        total = 0
        best = candidates[0]
        for i in candidates:
            self.current[i] += self.weights[i]
            total += self.weights[i]
            if self.current[i] > self.current[best]:
                best = i
        self.current[best] -= total
        return best
