"""Per-key and per-team limits: what a request reserves, what it is charged, when it is
refused and the headers that say so (no I/O).

A request is counted against up to two subjects: its key and, when the key belongs to
one, its team. Each subject has its own `KeyLimits`; a request is admitted only when
both admit it, and when one refuses, neither counts it.

Counting is by fixed windows: requests and tokens per UTC minute, token and dollar
budgets per UTC day and month, and in-progress requests as slots that expire (so a
worker that dies mid-request frees them). A request reserves an estimate of its tokens
and of its cost when it is admitted; when it ends, the estimates are replaced by the
provider's exact usage (or, when the usage never came, by the estimate of its input
alone) and the exact cost. Token budgets are checked at admission against what was
spent; dollar budgets against what was spent plus what requests in progress reserved.
Soft dollar budgets only say when a request's cost crosses them, once per window. Two
stores keep the counts with the same rules: `LocalCounts` (this process) and Redis
(`ADMIT_SCRIPT`, `SETTLE_SCRIPT`: one atomic script per admission and one per
settlement, with Redis's own clock).
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from filterproxy.extensions.keys.config import KeyLimits

__all__ = [
    "ADMIT_SCRIPT",
    "SETTLE_SCRIPT",
    "SPENT_SCRIPT",
    "Admission",
    "Crossing",
    "LocalCounts",
    "Subject",
    "admission_from_reply",
    "crossings_from_reply",
    "dollars",
    "estimate_tokens",
    "month_end_ms",
    "rate_limit_headers",
    "refusal",
    "spent_from_reply",
    "subject_prefix",
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
USD_DAY: Final = "usd_per_day"
USD_MONTH: Final = "usd_per_month"
_DESCRIPTIONS: Final = {
    REQUESTS: "requests per minute",
    TOKENS: "tokens per minute",
    CONCURRENT: "concurrent requests",
    DAY: "tokens per day",
    MONTH: "tokens per month",
    USD_DAY: "per day",
    USD_MONTH: "per month",
}
#: How long a day's and a month's counters live in Redis (past their window's end).
DAY_TTL_MS: Final = 172_800_000
MONTH_TTL_MS: Final = 2_764_800_000

#: The kinds of subject a request is counted against.
KEY: Final = "key"
TEAM: Final = "team"


@dataclass(frozen=True, slots=True)
class Subject:
    """One party a request is counted against: its key, or the key's team."""

    #: `KEY` or `TEAM`.
    kind: str
    name: str
    limits: KeyLimits
    #: Where its counters are (Redis's key prefix, this process's counts' name).
    prefix: str

    @classmethod
    def of(cls, kind: str, name: str, limits: KeyLimits) -> Subject:
        """The subject *name* of *kind* (`KEY`, `TEAM`) with its counters' prefix."""
        return cls(kind, name, limits, subject_prefix(kind, name))


def subject_prefix(kind: str, name: str) -> str:
    """The counters' prefix of a key (``fp:{NAME}``) or a team (``fp:{team:NAME}``):
    one hash tag per subject, so that all of its counters sit in one Cluster slot."""
    return f"fp:{{{name}}}" if kind == KEY else f"fp:{{team:{name}}}"


@dataclass(frozen=True, slots=True)
class Crossing:
    """A request's cost took a subject's spend past one of its soft budgets."""

    kind: str
    name: str
    #: "day" or "month".
    window: str
    #: The soft budget and the spend after this request, in nanodollars.
    threshold_nano: int
    spent_nano: int


def dollars(nano: int) -> str:
    """Nanodollars as a person reads dollars: ``$5.00``, ``$0.01``, ``$0.0025``."""
    amount = Decimal(nano) / 1_000_000_000
    text = format(amount.normalize(), "f")
    whole, _, fraction = text.partition(".")
    return f"${whole}.{fraction.ljust(2, '0')}"


def _day_and_month(now_ms: int) -> tuple[int, int]:
    """The UTC day (days since 1970-01-01) and month (year * 12 + month) of *now_ms*."""
    year, month = time.gmtime(now_ms // 1000)[:2]
    return now_ms // 86_400_000, year * 12 + month


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
    #: The minute window the reservation went into, and the tokens reserved.
    minute: int = 0
    reserved: int = 0
    #: The slot held while the request is in progress, in the key's and the team's
    #: concurrency counts that have one ("" when there is no slot).
    slot: str = ""
    #: What is left after this request, and when the minute windows reset: the key's,
    #: or for a refusal the refusing subject's.
    remaining_requests: int = 0
    remaining_tokens: int = 0
    reset_ms: int = 0
    #: Counted by this process (no Redis, or Redis away under ``on_error: open``):
    #: settled here too.
    local: bool = False
    #: Who refused it: `KEY` or `TEAM`.
    subject: str = KEY
    #: The day and month windows the dollar reservation went into (the settlement
    #: charges the exact cost there), and the nanodollars reserved.
    day: int = 0
    month: int = 0
    reserved_nano: int = 0


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
    """A duration as OpenAI writes it: ``12ms``, ``1.5s``, ``6m0s``, ``5h3m0s``."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m{rest}s"


def refusal(
    name: str, limits: KeyLimits, admission: Admission, kind: str = KEY
) -> tuple[str, str, list[tuple[str, str]]]:
    """(message, code, headers) of a 429 for a refused admission: *name*, *limits* and
    *kind* are the refusing subject's (the key's, or its team's)."""
    limit_name = admission.refused
    limit = getattr(limits, limit_name, 0)
    wait = max(admission.retry_after_ms, 1)
    headers = [
        ("retry-after", str(math.ceil(wait / 1000))),
        ("retry-after-ms", str(wait)),
        *rate_limit_headers(limits, admission),
    ]
    who = f"the {kind} {name!r}"
    if limit_name in (DAY, MONTH, USD_DAY, USD_MONTH):
        budget = (
            f"{dollars(limit)} {_DESCRIPTIONS[limit_name]}"
            if limit_name in (USD_DAY, USD_MONTH)
            else f"{limit} {_DESCRIPTIONS[limit_name]}"
        )
        message = (
            f"{who} has spent its budget of {budget}; it renews in {_duration(wait)}, "
            f"or raise the {kind}'s {limit_name}"
        )
        headers.append(("x-should-retry", "false"))
        return message, "insufficient_quota", headers
    message = (
        f"rate limit reached for {who} on {_DESCRIPTIONS[limit_name]} "
        f"(limit {limit}); try again in {wait / 1000:.2f}s"
    )
    return message, "rate_limit_exceeded", headers


class LocalCounts:
    """The counts of this process, by the same rules as the Redis scripts."""

    def __init__(self) -> None:
        #: (subject prefix, window kind, window number) -> count.
        self.windows: dict[tuple[str, str, int], int] = {}
        #: subject prefix -> {slot: expiry ms}.
        self.slots: dict[str, dict[str, int]] = {}
        self._slot_serial = 0
        self._cleaned_minute = 0

    def _check(
        self,
        prefix: str,
        limits: KeyLimits,
        reserve: int,
        now_ms: int,
        windows: tuple[int, int, int],
    ) -> tuple[str, int]:
        """(the limit of *limits* that refuses the request, when to try again), or
        ("", 0): the script's order — budgets, concurrency, then the minute."""
        minute, day, month = windows
        counts = self.windows
        if (
            limits.tokens_per_month
            and counts.get((prefix, "m", month), 0) >= limits.tokens_per_month
        ):
            return MONTH, month_end_ms(now_ms) - now_ms
        if limits.tokens_per_day and counts.get((prefix, "d", day), 0) >= limits.tokens_per_day:
            return DAY, 86_400_000 - now_ms % 86_400_000
        if limits.usd_per_month and (
            counts.get((prefix, "$m", month), 0) + counts.get((prefix, "$rm", month), 0)
            >= limits.usd_per_month
        ):
            return USD_MONTH, month_end_ms(now_ms) - now_ms
        if limits.usd_per_day and (
            counts.get((prefix, "$d", day), 0) + counts.get((prefix, "$rd", day), 0)
            >= limits.usd_per_day
        ):
            return USD_DAY, 86_400_000 - now_ms % 86_400_000
        if limits.concurrent_requests:
            slots = self.slots.setdefault(prefix, {})
            for slot, expiry in list(slots.items()):
                if expiry <= now_ms:
                    del slots[slot]
            if len(slots) >= limits.concurrent_requests:
                return CONCURRENT, 1000
        requests = counts.get((prefix, "r", minute), 0)
        tokens = counts.get((prefix, "t", minute), 0)
        if limits.requests_per_minute and requests + 1 > limits.requests_per_minute:
            return REQUESTS, 60000 - now_ms % 60000
        if limits.tokens_per_minute and tokens > 0 and tokens + reserve > limits.tokens_per_minute:
            return TOKENS, 60000 - now_ms % 60000
        return "", 0

    def admit(
        self,
        subjects: Sequence[Subject],
        reserve: int,
        reserve_nano: int,
        now_ms: int,
        *,
        local: bool = False,
    ) -> Admission:
        """Admit a request reserving *reserve* tokens and *reserve_nano* nanodollars
        against every one of *subjects* (the key first), or refuse it and count nothing.
        *local*: the admission says it was counted here (a store that has Redis)."""
        minute = now_ms // 60000
        day, month = _day_and_month(now_ms)
        self._clean(minute, day, month)
        counts = self.windows
        reset_ms = 60000 - now_ms % 60000
        for subject in subjects:
            prefix, limits = subject.prefix, subject.limits
            refused, retry_ms = self._check(prefix, limits, reserve, now_ms, (minute, day, month))
            if refused:
                return Admission(
                    False,
                    refused,
                    retry_ms,
                    minute,
                    remaining_requests=limits.requests_per_minute
                    - counts.get((prefix, "r", minute), 0),
                    remaining_tokens=limits.tokens_per_minute
                    - counts.get((prefix, "t", minute), 0),
                    reset_ms=reset_ms,
                    subject=subject.kind,
                    day=day,
                    month=month,
                    local=local,
                )
        slot = ""
        remaining_requests = remaining_tokens = 0
        for index, subject in enumerate(subjects):
            prefix, limits = subject.prefix, subject.limits
            requests = counts.get((prefix, "r", minute), 0) + 1
            tokens = counts.get((prefix, "t", minute), 0) + reserve
            counts[(prefix, "r", minute)] = requests
            counts[(prefix, "t", minute)] = tokens
            if index == 0:
                remaining_requests = limits.requests_per_minute - requests
                remaining_tokens = limits.tokens_per_minute - tokens
            if limits.concurrent_requests:
                if not slot:
                    self._slot_serial += 1
                    slot = str(self._slot_serial)
                self.slots.setdefault(prefix, {})[slot] = now_ms + SLOT_TTL_MS
            if reserve_nano and limits.in_dollars:
                for window in ((prefix, "$rd", day), (prefix, "$rm", month)):
                    counts[window] = counts.get(window, 0) + reserve_nano
        return Admission(
            True,
            minute=minute,
            reserved=reserve,
            slot=slot,
            remaining_requests=remaining_requests,
            remaining_tokens=remaining_tokens,
            reset_ms=reset_ms,
            day=day,
            month=month,
            reserved_nano=reserve_nano,
            local=local,
        )

    def settle(
        self,
        subjects: Sequence[Subject],
        admission: Admission,
        used: int,
        cost_nano: int,
        now_ms: int,
    ) -> list[Crossing]:
        """The request is over: it used *used* tokens (charged to the token budgets of
        today and this month) and cost *cost_nano* (charged to the dollar windows it
        reserved in). The soft budgets this charge crossed."""
        counts = self.windows
        day, month = _day_and_month(now_ms)
        crossings: list[Crossing] = []
        for subject in subjects:
            prefix, limits = subject.prefix, subject.limits
            window = (prefix, "t", admission.minute)
            if window in counts:
                counts[window] = max(counts[window] + used - admission.reserved, 0)
            if admission.slot:
                self.slots.get(prefix, {}).pop(admission.slot, None)
            if used > 0 and limits.tokens_per_day:
                counts[(prefix, "d", day)] = counts.get((prefix, "d", day), 0) + used
            if used > 0 and limits.tokens_per_month:
                counts[(prefix, "m", month)] = counts.get((prefix, "m", month), 0) + used
            if not limits.in_dollars:
                continue
            for name, kind, number, soft in (
                ("day", "d", admission.day, limits.soft_usd_per_day),
                ("month", "m", admission.month, limits.soft_usd_per_month),
            ):
                if admission.reserved_nano:
                    held = (prefix, "$r" + kind, number)
                    counts[held] = max(counts.get(held, 0) - admission.reserved_nano, 0)
                if cost_nano > 0:
                    before = counts.get((prefix, "$" + kind, number), 0)
                    after = counts[(prefix, "$" + kind, number)] = before + cost_nano
                    if soft and before < soft <= after:
                        crossings.append(Crossing(subject.kind, subject.name, name, soft, after))
        return crossings

    def spent(self, kind: str, name: str, now_ms: int) -> dict[str, dict[str, Any]]:
        """What a key or a team has spent in the current UTC day and month (the shape of
        `LimitStore.spent`)."""
        prefix = subject_prefix(kind, name)
        day, month = _day_and_month(now_ms)
        counts = self.windows
        return spent_shape(
            day,
            month,
            (
                counts.get((prefix, "$d", day), 0),
                counts.get((prefix, "$rd", day), 0),
                counts.get((prefix, "d", day), 0),
                counts.get((prefix, "$m", month), 0),
                counts.get((prefix, "$rm", month), 0),
                counts.get((prefix, "m", month), 0),
            ),
        )

    def _clean(self, minute: int, day: int, month: int) -> None:
        """Drop the windows that are over (once a minute)."""
        if minute == self._cleaned_minute:
            return
        self._cleaned_minute = minute
        for window in [
            w
            for w in self.windows
            if (w[1] in ("r", "t") and w[2] < minute)
            or (w[1] in ("d", "$d", "$rd") and w[2] < day)
            or (w[1] in ("m", "$m", "$rm") and w[2] < month)
        ]:
            del self.windows[window]


def spent_shape(day: int, month: int, values: Sequence[int]) -> dict[str, dict[str, Any]]:
    """`LimitStore.spent`'s answer from the day and month numbers and the six counters
    (day: spent, reserved, tokens; month: the same)."""
    year, month_of_year = divmod(month - 1, 12)
    return {
        "day": {
            "window": time.strftime("%Y-%m-%d", time.gmtime(day * 86400)),
            "spent_nano": values[0],
            "reserved_nano": values[1],
            "tokens": values[2],
        },
        "month": {
            "window": f"{year:04d}-{month_of_year + 1:02d}",
            "spent_nano": values[3],
            "reserved_nano": values[4],
            "tokens": values[5],
        },
    }


def admission_from_reply(
    reply: Any, reserve: int, reserve_nano: int, subjects: Sequence[Subject]
) -> Admission:
    """The `Admission` of `ADMIT_SCRIPT`'s reply."""
    (
        allowed,
        refused,
        retry_ms,
        minute,
        remaining_requests,
        remaining_tokens,
        reset_ms,
        slot,
        refusing,
        day,
        month,
    ) = reply
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
        subject=subjects[int(refusing) - 1].kind if refusing else KEY,
        day=int(day),
        month=int(month),
        reserved_nano=reserve_nano if allowed else 0,
    )


def crossings_from_reply(reply: Any, subjects: Sequence[Subject]) -> list[Crossing]:
    """The soft budgets `SETTLE_SCRIPT`'s reply says were crossed: per subject, the
    day's and the month's spend after the charge when it crossed, else 0."""
    crossings = []
    for index, subject in enumerate(subjects):
        for offset, (window, soft) in enumerate(
            (("day", subject.limits.soft_usd_per_day), ("month", subject.limits.soft_usd_per_month))
        ):
            after = int(reply[index * 2 + offset])
            if after:
                crossings.append(Crossing(subject.kind, subject.name, window, soft, after))
    return crossings


def spent_from_reply(reply: Any) -> dict[str, dict[str, Any]]:
    """`LimitStore.spent`'s answer from `SPENT_SCRIPT`'s reply."""
    day, month, *values = [int(v) for v in reply]
    return spent_shape(day, month, values)


# The Redis side. KEYS are the subjects' prefixes (`subject_prefix`: one hash tag per
# subject, so all of a subject's counters sit in one Cluster slot; a key's and its
# team's are two slots: with Redis Cluster, give the team's keys a hash tag of its own).
# Every counter gets a TTL. Dollar windows are hashes: ``s`` spent (settled), ``r``
# reserved by requests in progress. Amounts go to Redis as the strings they came as
# (a Lua number would be written in exponent form past 10^14).
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

#: ARGV: reserve (tokens), reserve (nanodollars), slot, slot TTL, next month's start
#: (ms; a fallback for the header), then per subject (8 each): requests_per_minute,
#: tokens_per_minute, concurrent_requests, tokens_per_day, tokens_per_month,
#: usd_per_day, usd_per_month, whether it counts dollars (1/0). Reply: allowed,
#: refused limit, retry ms, minute, remaining requests and tokens (the first subject's,
#: or the refusing one's), reset ms, slot, the refusing subject (1-based; 0), day, month.
ADMIT_SCRIPT: Final = (
    _TIME_AND_MONTH
    + """
local reserve, reserve_nano = tonumber(ARGV[1]), ARGV[2]
local slot, slot_ttl, next_month_ms = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local minute = math.floor(now / 60000)
local month = month_of(day)
local reset = 60000 - now % 60000
local req, tok = {}, {}
local function spent(k)
  local v = redis.call('HMGET', k, 's', 'r')
  return (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
end
local function month_left()
  local left = next_month_ms - now
  if left <= 0 then left = 86400000 end
  return left
end
for i = 1, #KEYS do
  local p, o = KEYS[i], 5 + (i - 1) * 8
  local rpm, tpm, conc = tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3])
  local dayb, monthb = tonumber(ARGV[o + 4]), tonumber(ARGV[o + 5])
  local usdd, usdm = tonumber(ARGV[o + 6]), tonumber(ARGV[o + 7])
  local requests = tonumber(redis.call('GET', p .. ':r:' .. minute) or '0')
  local tokens = tonumber(redis.call('GET', p .. ':t:' .. minute) or '0')
  req[i], tok[i] = requests, tokens
  local name, retry = nil, 0
  if monthb > 0 and tonumber(redis.call('GET', p .. ':m:' .. month) or '0') >= monthb then
    name, retry = 'tokens_per_month', month_left()
  elseif dayb > 0 and tonumber(redis.call('GET', p .. ':d:' .. day) or '0') >= dayb then
    name, retry = 'tokens_per_day', 86400000 - now % 86400000
  elseif usdm > 0 and spent(p .. ':$m:' .. month) >= usdm then
    name, retry = 'usd_per_month', month_left()
  elseif usdd > 0 and spent(p .. ':$d:' .. day) >= usdd then
    name, retry = 'usd_per_day', 86400000 - now % 86400000
  elseif conc > 0 then
    local ck = p .. ':c'
    redis.call('ZREMRANGEBYSCORE', ck, '-inf', now)
    if redis.call('ZCARD', ck) >= conc then name, retry = 'concurrent_requests', 1000 end
  end
  if not name then
    if rpm > 0 and requests + 1 > rpm then
      name, retry = 'requests_per_minute', reset
    elseif tpm > 0 and tokens > 0 and tokens + reserve > tpm then
      name, retry = 'tokens_per_minute', reset
    end
  end
  if name then
    return {0, name, retry, minute, rpm - requests, tpm - tokens, reset, '', i, day, month}
  end
end
local held = ''
for i = 1, #KEYS do
  local p, o = KEYS[i], 5 + (i - 1) * 8
  local rk, tk = p .. ':r:' .. minute, p .. ':t:' .. minute
  redis.call('INCR', rk)
  redis.call('PEXPIRE', rk, 120000)
  redis.call('INCRBY', tk, reserve)
  redis.call('PEXPIRE', tk, 120000)
  if tonumber(ARGV[o + 3]) > 0 then
    local ck = p .. ':c'
    redis.call('ZADD', ck, now + slot_ttl, slot)
    redis.call('PEXPIRE', ck, slot_ttl)
    held = slot
  end
  if ARGV[o + 8] == '1' and reserve_nano ~= '0' then
    local dk, mk = p .. ':$d:' .. day, p .. ':$m:' .. month
    redis.call('HINCRBY', dk, 'r', reserve_nano)
    redis.call('PEXPIRE', dk, 172800000)
    redis.call('HINCRBY', mk, 'r', reserve_nano)
    redis.call('PEXPIRE', mk, 2764800000)
  end
end
return {1, '', 0, minute, tonumber(ARGV[6]) - req[1] - 1, tonumber(ARGV[7]) - tok[1] - reserve,
        reset, held, 0, day, month}
"""
)

#: ARGV: the minute, tokens reserved, tokens used, slot, the day and month the dollars
#: were reserved in, nanodollars reserved, the cost (nanodollars), then per subject (6
#: each): charges tokens per day (1/0), per month (1/0), holds a slot (1/0), counts
#: dollars (1/0), soft_usd_per_day, soft_usd_per_month. Reply: per subject, the day's
#: and the month's spend after this charge when it crossed the soft budget, else 0.
SETTLE_SCRIPT: Final = (
    _TIME_AND_MONTH
    + """
local minute, reserved, used, slot = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local rday, rmonth, reserved_nano, cost = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local costn = tonumber(cost)
local crossed = {}
local function charge(k, ttl, soft)
  if reserved_nano ~= '0' and redis.call('HINCRBY', k, 'r', '-' .. reserved_nano) < 0 then
    redis.call('HSET', k, 'r', 0)
  end
  if costn > 0 then
    local after = redis.call('HINCRBY', k, 's', cost)
    -- the reservation set the window's expiry; without one, set it here
    if reserved_nano == '0' then redis.call('PEXPIRE', k, ttl) end
    if soft > 0 and after - costn < soft and soft <= after then return after end
  end
  return 0
end
for i = 1, #KEYS do
  local p, o = KEYS[i], 8 + (i - 1) * 6
  local tk = p .. ':t:' .. minute
  if used ~= reserved and redis.call('EXISTS', tk) == 1 then
    if redis.call('INCRBY', tk, used - reserved) < 0 then redis.call('SET', tk, 0, 'KEEPTTL') end
  end
  if slot ~= '' and ARGV[o + 3] == '1' then redis.call('ZREM', p .. ':c', slot) end
  if used > 0 and ARGV[o + 1] == '1' then
    local dk = p .. ':d:' .. day
    redis.call('INCRBY', dk, used)
    redis.call('PEXPIRE', dk, 172800000)
  end
  if used > 0 and ARGV[o + 2] == '1' then
    local mk = p .. ':m:' .. month_of(day)
    redis.call('INCRBY', mk, used)
    redis.call('PEXPIRE', mk, 2764800000)
  end
  if ARGV[o + 4] == '1' then
    crossed[#crossed + 1] = charge(p .. ':$d:' .. rday, 172800000, tonumber(ARGV[o + 5]))
    crossed[#crossed + 1] = charge(p .. ':$m:' .. rmonth, 2764800000, tonumber(ARGV[o + 6]))
  else
    crossed[#crossed + 1] = 0
    crossed[#crossed + 1] = 0
  end
end
return crossed
"""
)

#: Read only: the current day's and month's counters of KEYS[1] (a subject's prefix).
#: Reply: day, month, then the day's spent, reserved, tokens and the month's.
SPENT_SCRIPT: Final = (
    _TIME_AND_MONTH
    + """
local p = KEYS[1]
local month = month_of(day)
local d = redis.call('HMGET', p .. ':$d:' .. day, 's', 'r')
local m = redis.call('HMGET', p .. ':$m:' .. month, 's', 'r')
return {day, month, d[1] or '0', d[2] or '0', redis.call('GET', p .. ':d:' .. day) or '0',
        m[1] or '0', m[2] or '0', redis.call('GET', p .. ':m:' .. month) or '0'}
"""
)
