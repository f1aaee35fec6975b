"""Per-key limits: what a request reserves, what it is charged, when it is refused and
the headers that say so (no I/O).

Counting is by fixed windows: requests and tokens per UTC minute, token budgets per UTC
day and month, and in-progress requests as slots that expire (so a worker that dies
mid-request frees them). A request reserves an estimate of its tokens when it is
admitted; when it ends, the estimate is replaced by the provider's exact usage (or, when
the usage never came, by the estimate of its input alone). Budgets are checked at
admission and charged at the end. Two stores keep the counts with the same rules:
`LocalCounts` (this process) and Redis (`ADMIT_SCRIPT`, `SETTLE_SCRIPT`: one atomic
script per admission, with Redis's own clock).
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from filterproxy.extensions.keys.config import KeyLimits

__all__ = [
    "ADMIT_SCRIPT",
    "SETTLE_SCRIPT",
    "Admission",
    "LocalCounts",
    "admission_from_reply",
    "estimate_tokens",
    "month_end_ms",
    "rate_limit_headers",
    "refusal",
]

#: How long an in-progress request holds its slot at most (a dead worker's slots free
#: themselves after this).
SLOT_TTL_MS: Final = 600_000
#: Output tokens reserved for a request that sets no max_tokens, and the most reserved
#: for one that does (the reservation is replaced by the real usage at the end).
DEFAULT_OUTPUT_RESERVE: Final = 1024
MAX_OUTPUT_RESERVE: Final = 4096

#: The limits, as refusals and headers name them.
REQUESTS: Final = "requests_per_minute"
TOKENS: Final = "tokens_per_minute"
CONCURRENT: Final = "concurrent_requests"
DAY: Final = "tokens_per_day"
MONTH: Final = "tokens_per_month"
_DESCRIPTIONS: Final = {
    REQUESTS: "requests per minute",
    TOKENS: "tokens per minute",
    CONCURRENT: "concurrent requests",
    DAY: "tokens per day",
    MONTH: "tokens per month",
}


def estimate_tokens(body_bytes: int, document: Mapping[str, Any] | None) -> tuple[int, int]:
    """(input, output) tokens a request is expected to use: a quarter of its body's
    bytes, and its ``max_tokens`` (or ``max_completion_tokens``, ``max_output_tokens``)
    up to `MAX_OUTPUT_RESERVE`, else `DEFAULT_OUTPUT_RESERVE`."""
    output = DEFAULT_OUTPUT_RESERVE
    if document is not None:
        for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
            value = document.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                output = min(value, MAX_OUTPUT_RESERVE)
                break
    return max(1, math.ceil(body_bytes / 4)), output


def month_end_ms(now_ms: int) -> int:
    """The first millisecond of the UTC month after *now_ms*."""
    year, month = time.gmtime(now_ms // 1000)[:2]
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0)) * 1000


@dataclass(frozen=True)
class Admission:
    """The answer to one request's admission."""

    allowed: bool
    #: The limit that refused it (one of the names above), or "".
    refused: str = ""
    #: When to try again, for a refusal.
    retry_after_ms: int = 0
    #: The minute window the reservation went into, and what was reserved.
    minute: int = 0
    reserved: int = 0
    #: The slot held while the request is in progress ("" when there is no slot).
    slot: str = ""
    #: What is left after this request, and when the minute windows reset.
    remaining_requests: int = 0
    remaining_tokens: int = 0
    reset_ms: int = 0
    #: Counted by this process (no Redis, or Redis away under ``on_error: open``):
    #: settled here too.
    local: bool = False


def rate_limit_headers(limits: KeyLimits, admission: Admission) -> list[tuple[str, str]]:
    """OpenAI's ``x-ratelimit-*`` headers for an admitted (or refused) request."""
    headers: list[tuple[str, str]] = []
    reset = _duration(admission.reset_ms)
    if limits.requests_per_minute:
        headers += [
            ("x-ratelimit-limit-requests", str(limits.requests_per_minute)),
            ("x-ratelimit-remaining-requests", str(max(admission.remaining_requests, 0))),
            ("x-ratelimit-reset-requests", reset),
        ]
    if limits.tokens_per_minute:
        headers += [
            ("x-ratelimit-limit-tokens", str(limits.tokens_per_minute)),
            ("x-ratelimit-remaining-tokens", str(max(admission.remaining_tokens, 0))),
            ("x-ratelimit-reset-tokens", reset),
        ]
    return headers


def _duration(ms: int) -> str:
    """A duration as OpenAI writes it: ``12ms``, ``1.5s``, ``6m0s``."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest}s"


def refusal(
    key_name: str, limits: KeyLimits, admission: Admission
) -> tuple[str, str, list[tuple[str, str]]]:
    """(message, code, headers) of a 429 for a refused admission."""
    name = admission.refused
    limit = getattr(limits, name, 0)
    wait = max(admission.retry_after_ms, 1)
    headers = [
        ("retry-after", str(math.ceil(wait / 1000))),
        ("retry-after-ms", str(wait)),
        *rate_limit_headers(limits, admission),
    ]
    if name in (DAY, MONTH):
        message = (
            f"the key {key_name!r} has spent its budget of {limit} {_DESCRIPTIONS[name]}; "
            f"it renews in {_duration(wait)}, or raise the key's {name}"
        )
        headers.append(("x-should-retry", "false"))
        return message, "insufficient_quota", headers
    message = (
        f"rate limit reached for the key {key_name!r} on {_DESCRIPTIONS[name]} "
        f"(limit {limit}); try again in {wait / 1000:.2f}s"
    )
    return message, "rate_limit_exceeded", headers


class LocalCounts:
    """The counts of this process, by the same rules as the Redis scripts."""

    def __init__(self) -> None:
        #: (key, window name, window number) -> count.
        self.windows: dict[tuple[str, str, int], int] = {}
        #: key -> {slot: expiry ms}.
        self.slots: dict[str, dict[str, int]] = {}
        self._slot_serial = 0
        self._cleaned_minute = 0

    def admit(self, key: str, limits: KeyLimits, reserve: int, now_ms: int) -> Admission:
        minute = now_ms // 60000
        day = now_ms // 86_400_000
        month = time.gmtime(now_ms // 1000)[:2]
        month_id = month[0] * 12 + month[1]
        self._clean(minute, day)
        windows = self.windows
        reset_ms = 60000 - now_ms % 60000
        requests = windows.get((key, "r", minute), 0)
        tokens = windows.get((key, "t", minute), 0)

        def refused(name: str, retry_ms: int) -> Admission:
            return Admission(
                False,
                name,
                retry_ms,
                minute,
                remaining_requests=limits.requests_per_minute - requests,
                remaining_tokens=limits.tokens_per_minute - tokens,
                reset_ms=reset_ms,
            )

        if (
            limits.tokens_per_month
            and windows.get((key, "m", month_id), 0) >= limits.tokens_per_month
        ):
            return refused(MONTH, month_end_ms(now_ms) - now_ms)
        if limits.tokens_per_day and windows.get((key, "d", day), 0) >= limits.tokens_per_day:
            return refused(DAY, 86_400_000 - now_ms % 86_400_000)
        slots = self.slots.setdefault(key, {})
        if limits.concurrent_requests:
            for slot, expiry in list(slots.items()):
                if expiry <= now_ms:
                    del slots[slot]
            if len(slots) >= limits.concurrent_requests:
                return refused(CONCURRENT, 1000)
        if limits.requests_per_minute and requests + 1 > limits.requests_per_minute:
            return refused(REQUESTS, reset_ms)
        if limits.tokens_per_minute and tokens > 0 and tokens + reserve > limits.tokens_per_minute:
            return refused(TOKENS, reset_ms)
        windows[(key, "r", minute)] = requests + 1
        windows[(key, "t", minute)] = tokens + reserve
        slot = ""
        if limits.concurrent_requests:
            self._slot_serial += 1
            slot = str(self._slot_serial)
            slots[slot] = now_ms + SLOT_TTL_MS
        return Admission(
            True,
            minute=minute,
            reserved=reserve,
            slot=slot,
            remaining_requests=limits.requests_per_minute - requests - 1,
            remaining_tokens=limits.tokens_per_minute - tokens - reserve,
            reset_ms=reset_ms,
        )

    def settle(
        self, key: str, limits: KeyLimits, admission: Admission, used: int, now_ms: int
    ) -> None:
        """The request is over and used *used* tokens (charged to the budgets *limits*
        has)."""
        window = (key, "t", admission.minute)
        if window in self.windows:
            self.windows[window] = max(self.windows[window] + used - admission.reserved, 0)
        if admission.slot:
            self.slots.get(key, {}).pop(admission.slot, None)
        if used > 0 and limits.tokens_per_day:
            window = (key, "d", now_ms // 86_400_000)
            self.windows[window] = self.windows.get(window, 0) + used
        if used > 0 and limits.tokens_per_month:
            year, month = time.gmtime(now_ms // 1000)[:2]
            window = (key, "m", year * 12 + month)
            self.windows[window] = self.windows.get(window, 0) + used

    def _clean(self, minute: int, day: int) -> None:
        """Drop the windows that are over (once a minute)."""
        if minute == self._cleaned_minute:
            return
        self._cleaned_minute = minute
        for window in [
            w
            for w in self.windows
            if (w[1] in "rt" and w[2] < minute) or (w[1] == "d" and w[2] < day)
        ]:
            del self.windows[window]


def admission_from_reply(reply: Any, reserve: int) -> Admission:
    """The `Admission` of `ADMIT_SCRIPT`'s reply."""
    allowed, refused, retry_ms, minute, remaining_requests, remaining_tokens, reset_ms, slot = reply
    return Admission(
        bool(allowed),
        refused.decode() if isinstance(refused, bytes) else str(refused),
        int(retry_ms),
        int(minute),
        reserve if allowed else 0,
        slot.decode() if isinstance(slot, bytes) else str(slot),
        int(remaining_requests),
        int(remaining_tokens),
        int(reset_ms),
    )


# The Redis side. KEYS[1] is the key's prefix, ``fp:{NAME}`` (one hash tag per key, so
# all of a key's counters sit in one Cluster slot). Every counter gets a TTL.
_TIME_AND_MONTH: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = math.floor(now / 86400000)
-- the UTC month (year * 12 + month) of a day number (days since 1970-01-01)
local function month_of(d)
  local z = d + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  return (yoe + era * 400 + (m <= 2 and 1 or 0)) * 12 + m
end
"""

ADMIT_SCRIPT: Final = (
    _TIME_AND_MONTH
    + """
local p = KEYS[1]
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local dayb, monthb, reserve = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local slot, slot_ttl, next_month_ms = ARGV[7], tonumber(ARGV[8]), ARGV[9]
local minute = math.floor(now / 60000)
local rk, tk, ck = p .. ':r:' .. minute, p .. ':t:' .. minute, p .. ':c'
local requests = tonumber(redis.call('GET', rk) or '0')
local tokens = tonumber(redis.call('GET', tk) or '0')
local reset = 60000 - now % 60000
local function refuse(name, retry)
  return {0, name, retry, minute, rpm - requests, tpm - tokens, reset, ''}
end
if monthb > 0 and tonumber(redis.call('GET', p .. ':m:' .. month_of(day)) or '0') >= monthb then
  -- the client's idea of next month's start is only a fallback for the header
  local left = tonumber(next_month_ms) - now
  if left <= 0 then left = 86400000 end
  return refuse('tokens_per_month', left)
end
if dayb > 0 and tonumber(redis.call('GET', p .. ':d:' .. day) or '0') >= dayb then
  return refuse('tokens_per_day', 86400000 - now % 86400000)
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', ck, '-inf', now)
  if redis.call('ZCARD', ck) >= conc then return refuse('concurrent_requests', 1000) end
end
if rpm > 0 and requests + 1 > rpm then return refuse('requests_per_minute', reset) end
if tpm > 0 and tokens > 0 and tokens + reserve > tpm then return refuse('tokens_per_minute', reset) end
redis.call('INCR', rk)
redis.call('PEXPIRE', rk, 120000)
redis.call('INCRBY', tk, reserve)
redis.call('PEXPIRE', tk, 120000)
if conc > 0 then
  redis.call('ZADD', ck, now + slot_ttl, slot)
  redis.call('PEXPIRE', ck, slot_ttl)
else
  slot = ''
end
return {1, '', 0, minute, rpm - requests - 1, tpm - tokens - reserve, reset, slot}
"""
)

SETTLE_SCRIPT: Final = (
    _TIME_AND_MONTH
    + """
local p = KEYS[1]
local minute, reserved, used, slot = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local per_day, per_month = ARGV[5] == '1', ARGV[6] == '1'
local tk = p .. ':t:' .. minute
if used ~= reserved and redis.call('EXISTS', tk) == 1 then
  if redis.call('INCRBY', tk, used - reserved) < 0 then redis.call('SET', tk, 0, 'KEEPTTL') end
end
if slot ~= '' then redis.call('ZREM', p .. ':c', slot) end
if used > 0 and per_day then
  local dk = p .. ':d:' .. day
  redis.call('INCRBY', dk, used)
  redis.call('PEXPIRE', dk, 172800000)
end
if used > 0 and per_month then
  local mk = p .. ':m:' .. month_of(day)
  redis.call('INCRBY', mk, used)
  redis.call('PEXPIRE', mk, 2764800000)
end
return 1
"""
)
