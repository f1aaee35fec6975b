"""The spend ledger: what was spent, per UTC day, key, team, model and provider.

Every request that cost something, or reported usage, adds to one row of its day: its
cost in nanodollars, one request, and its tokens by kind. With Redis, a day is one hash
(``fp:spend:YYYY-MM-DD``, kept `RETENTION_DAYS`), written by one script per request
that nobody waits for, so every worker and replica adds to the same rows and the report
reads them all. Without Redis, the rows are this process's since it started.

The report (`filterproxy.extensions.spend.report`) reads rows back with `SpendLedger.read`.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from twisted.internet import defer
from twisted.logger import Logger

from filterproxy.filters.records import Cost, TokenUsage

if TYPE_CHECKING:
    from filterproxy.clients.redis import RedisClient
    from filterproxy.config import RedisConfig
    from filterproxy.filters.resources import Resources

__all__ = [
    "COUNTERS",
    "RETENTION_DAYS",
    "SpendLedger",
    "SpendLedgers",
    "SpendRow",
    "day_of",
    "days_between",
    "ledger_for",
    "rows_from_hash",
]

log = Logger(namespace="filterproxy.spend")

#: How long a day's rows are kept in Redis.
RETENTION_DAYS: Final = 400
#: The most days one read covers.
MAX_READ_DAYS: Final = 400
#: The most rows this process keeps without Redis (then new rows are not kept, and a
#: warning says so once).
MAX_LOCAL_ROWS: Final = 100_000
#: Model and provider names are cut to this many characters in the ledger (a model
#: name comes from the client).
MAX_NAME: Final = 128
#: What a row counts, in this order: one letter each in a Redis field's name.
COUNTERS: Final = (
    ("n", "nano_usd"),
    ("r", "requests"),
    ("i", "input"),
    ("c", "cached_input"),
    ("w", "cache_write"),
    ("o", "output"),
    ("g", "reasoning"),
)
_LETTERS: Final = {letter: name for letter, name in COUNTERS}


@dataclass(frozen=True, slots=True)
class SpendRow:
    """What one key spent on one model of one provider on one UTC day (names are ""
    when the request had none: no key, no team)."""

    day: str
    key: str
    team: str
    model: str
    provider: str
    #: Dollars in nanodollars (10^-9 USD).
    nano_usd: int = 0
    requests: int = 0
    input: int = 0
    cached_input: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0

    @property
    def usd(self) -> float:
        return self.nano_usd / 1_000_000_000

    def add(self, other: SpendRow) -> SpendRow:
        """This row's counts plus *other*'s (its names kept)."""
        return SpendRow(
            self.day,
            self.key,
            self.team,
            self.model,
            self.provider,
            *(getattr(self, name) + getattr(other, name) for _, name in COUNTERS),
        )


def day_of(seconds: float) -> str:
    """The UTC day (``YYYY-MM-DD``) of a POSIX time."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d")


def days_between(first: str, last: str) -> list[str]:
    """The days from *first* to *last* (``YYYY-MM-DD``), both included; ValueError when
    a date is malformed, *last* is before *first*, or the span passes `MAX_READ_DAYS`."""
    start = datetime.date.fromisoformat(first)
    end = datetime.date.fromisoformat(last)
    if end < start:
        raise ValueError(f"the period ends ({last}) before it starts ({first})")
    span = (end - start).days + 1
    if span > MAX_READ_DAYS:
        raise ValueError(f"a period of {span} days; at most {MAX_READ_DAYS}")
    return [(start + datetime.timedelta(days=n)).isoformat() for n in range(span)]


def _counts(cost: Cost, usage: TokenUsage | None) -> tuple[int, ...]:
    if usage is None:
        return (cost.nano_usd, 1, 0, 0, 0, 0, 0)
    return (
        cost.nano_usd,
        1,
        usage.input,
        usage.cached_input,
        usage.cache_write,
        usage.output,
        usage.reasoning,
    )


def _field_prefix(key: str, team: str, model: str, provider: str) -> str:
    """A row's names as the start of its Redis fields: a JSON list, then ``|`` and the
    counter's letter (names may hold any character; the letter is after the last ``|``)."""
    return json.dumps([key, team, model[:MAX_NAME], provider[:MAX_NAME]], separators=(",", ":"))


def rows_from_hash(day: str, fields: Mapping[bytes, bytes] | Iterable[Any]) -> list[SpendRow]:
    """The rows of one day's Redis hash (``HGETALL``'s reply: a flat list, or a mapping);
    fields that are not the ledger's are skipped."""
    if isinstance(fields, Mapping):
        pairs = list(fields.items())
    else:
        flat = list(fields)
        pairs = list(zip(flat[0::2], flat[1::2], strict=True))
    found: dict[str, dict[str, int]] = {}
    for raw_name, raw_value in pairs:
        name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
        prefix, _, letter = name.rpartition("|")
        counter = _LETTERS.get(letter)
        if counter is None or not prefix:
            continue
        try:
            value = int(raw_value)
        except ValueError:
            continue
        found.setdefault(prefix, {})[counter] = value
    rows = []
    for prefix, counts in found.items():
        try:
            key, team, model, provider = json.loads(prefix)
        except (ValueError, TypeError):
            continue
        rows.append(SpendRow(day, str(key), str(team), str(model), str(provider), **counts))
    return rows


# KEYS[1]: the day's hash. ARGV: the row's field prefix, the hash's TTL in seconds, then
# the counts in the order of COUNTERS. Counts of 0 are not written.
RECORD_SCRIPT: Final = """
local h, prefix = KEYS[1], ARGV[1]
local letters = {'n', 'r', 'i', 'c', 'w', 'o', 'g'}
for i = 1, 7 do
  local v = tonumber(ARGV[i + 2])
  if v ~= 0 then redis.call('HINCRBY', h, prefix .. '|' .. letters[i], v) end
end
redis.call('EXPIRE', h, tonumber(ARGV[2]))
return 1
"""


class SpendLedger:
    """Where this process adds its requests' spend: Redis when configured, else its own
    rows. `record` never waits; `read` answers with the rows of a period."""

    def __init__(self, redis: RedisConfig | None, resources: Resources) -> None:
        self.redis = redis
        self.resources = resources
        self._client: RedisClient | None = None
        #: (day, key, team, model, provider) -> row: without Redis.
        self.local: dict[tuple[str, str, str, str, str], SpendRow] = {}
        self._full_warned = False

    @property
    def client(self) -> RedisClient | None:
        """The Redis client (made at the first use, when the reactor runs)."""
        if self._client is None and self.redis is not None:
            self._client = self.resources.redis(self.redis.url, self.redis.timeout)
        return self._client

    def record(
        self,
        key: str,
        team: str,
        model: str,
        provider: str,
        cost: Cost,
        usage: TokenUsage | None,
    ) -> None:
        """Add one request to today's row for its names."""
        day = day_of(self.resources.clock.seconds())
        counts = _counts(cost, usage)
        client = self.client
        if client is None:
            self._add_local(
                SpendRow(day, key, team, model[:MAX_NAME], provider[:MAX_NAME], *counts)
            )
            return
        d = client.run_script(
            RECORD_SCRIPT,
            (f"fp:spend:{day}",),
            (_field_prefix(key, team, model, provider), RETENTION_DAYS * 86400, *counts),
            soon=True,  # nobody waits: shares a write with the next command
        )
        d.addErrback(
            lambda f: log.warn(
                "could not add a request of key {key} to the spend ledger: {error}",
                key=key or "(none)",
                error=f.getErrorMessage(),
            )
        )

    def _add_local(self, row: SpendRow) -> None:
        names = (row.day, row.key, row.team, row.model, row.provider)
        found = self.local.get(names)
        if found is not None:
            self.local[names] = found.add(row)
            return
        if len(self.local) >= MAX_LOCAL_ROWS:
            self._drop_old(row.day)
            if len(self.local) >= MAX_LOCAL_ROWS:
                if not self._full_warned:
                    self._full_warned = True
                    log.warn(
                        "the spend ledger holds {rows} rows in this process; new ones are "
                        "not kept (configure redis for a shared, longer ledger)",
                        rows=len(self.local),
                    )
                return
        self.local[names] = row

    def _drop_old(self, today: str) -> None:
        oldest = (
            datetime.date.fromisoformat(today) - datetime.timedelta(days=RETENTION_DAYS)
        ).isoformat()
        for names in [n for n in self.local if n[0] < oldest]:
            del self.local[names]

    def read(self, days: list[str]) -> defer.Deferred[list[SpendRow]]:
        """The rows of *days* (`days_between`): from Redis (one ``HGETALL`` per day, sent
        together), or this process's."""
        client = self.client
        if client is None:
            wanted = set(days)
            return defer.succeed([r for n, r in self.local.items() if n[0] in wanted])
        calls = [client.call("HGETALL", f"fp:spend:{day}") for day in days]

        def rows(replies: list[Any]) -> list[SpendRow]:
            found: list[SpendRow] = []
            for day, reply in zip(days, replies, strict=True):
                found.extend(rows_from_hash(day, reply or ()))
            return found

        d: defer.Deferred[list[Any]] = defer.gatherResults(calls, consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f)
        return d.addCallback(rows)


class SpendLedgers:
    """The process's ledgers (in its `Resources`), one per Redis setting: a reload keeps
    its rows."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.ledgers: dict[tuple[str, float] | None, SpendLedger] = {}

    def ledger_for(self, redis: RedisConfig | None) -> SpendLedger:
        ident = (redis.url, redis.timeout) if redis is not None else None
        ledger = self.ledgers.get(ident)
        if ledger is None:
            ledger = self.ledgers[ident] = SpendLedger(redis, self.resources)
        return ledger


def ledger_for(redis: RedisConfig | None, resources: Resources) -> SpendLedger:
    """The process's ledger for *redis* (None: this process's rows)."""
    return resources.get(SpendLedgers, SpendLedgers).ledger_for(redis)
