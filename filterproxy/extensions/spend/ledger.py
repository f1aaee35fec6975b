"""The spend ledger: what was spent, per UTC day, key, team, model and provider.

Every request that cost something, or reported usage, adds to one row of its day: its
cost in nanodollars, one request, and its tokens by kind. With Redis, a day is one hash
(``fp:spend:YYYY-MM-DD``, kept `RETENTION_DAYS`) that every worker and replica adds to,
so the report reads them all: each process sums its requests' rows for up to
`FLUSH_SECONDS` and adds them with one script (nobody waits for it; a process that
stops adds what it holds first). Without Redis, the rows are this process's since it
started.

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
from twisted.python.failure import Failure

from filterproxy.filters.records import Cost, TokenUsage

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

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
#: How long a process sums its requests before it adds them to Redis: one write a
#: second, whatever the request rate.
FLUSH_SECONDS: Final = 1.0
#: The most rows a process holds between two writes (more: written at once).
MAX_PENDING_ROWS: Final = 10_000
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


# KEYS[1]: the day's hash. ARGV: the hash's TTL in seconds, then per counter to add its
# field and the amount.
RECORD_SCRIPT: Final = """
local h = KEYS[1]
for i = 2, #ARGV, 2 do
  redis.call('HINCRBY', h, ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', h, tonumber(ARGV[1]))
return 1
"""


def _increments(rows: Iterable[SpendRow]) -> list[str | int]:
    """The fields and amounts that add *rows* to their day's hash (counts of 0 left out)."""
    args: list[str | int] = []
    for row in rows:
        prefix = _field_prefix(row.key, row.team, row.model, row.provider)
        for letter, name in COUNTERS:
            value = getattr(row, name)
            if value:
                args += [f"{prefix}|{letter}", value]
    return args


def _lost(failure: Failure, rows: int) -> None:
    log.warn(
        "could not add {rows} rows to the spend ledger: {error}",
        rows=rows,
        error=failure.getErrorMessage(),
    )


class SpendLedger:
    """Where this process adds its requests' spend: Redis when configured, else its own
    rows. `record` never waits; `read` answers with the rows of a period."""

    def __init__(self, redis: RedisConfig | None, resources: Resources) -> None:
        self.redis = redis
        self.resources = resources
        self._client: RedisClient | None = None
        #: (day, key, team, model, provider) -> its counts (in the order of `COUNTERS`):
        #: without Redis.
        self.local: dict[tuple[str, str, str, str, str], list[int]] = {}
        #: The same, with Redis: what is held until the next write.
        self.pending: dict[tuple[str, str, str, str, str], list[int]] = {}
        #: The UTC day requests are counted in, and when it started.
        self._day = ""
        self._day_start = 0.0
        self._flush_call: IDelayedCall | None = None
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
        """Add one request to today's row for its names (counted in place: this runs
        at the end of every request)."""
        seconds = self.resources.clock.seconds()
        if not self._day_start <= seconds < self._day_start + 86400:
            self._day_start = seconds - seconds % 86400
            self._day = day_of(seconds)
        names = (self._day, key, team, model[:MAX_NAME], provider[:MAX_NAME])
        local = self.client is None
        rows = self.local if local else self.pending
        counts = rows.get(names)
        if counts is None:
            if local and not self._room():
                return
            counts = rows[names] = [0] * len(COUNTERS)
        counts[0] += cost.nano_usd
        counts[1] += 1
        if usage is not None:
            counts[2] += usage.input
            counts[3] += usage.cached_input
            counts[4] += usage.cache_write
            counts[5] += usage.output
            counts[6] += usage.reasoning
        if local:
            return
        if len(rows) >= MAX_PENDING_ROWS:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self.resources.clock.callLater(FLUSH_SECONDS, self.flush)

    def flush(self) -> defer.Deferred[None]:
        """Add the rows held to Redis now (one script per day); fires when Redis has
        them. Rows Redis did not take are lost with a warning (the budgets are counted
        apart, exactly: only the report misses them)."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        pending, self.pending = self.pending, {}
        client = self.client
        if not pending or client is None:
            return defer.succeed(None)
        days: dict[str, list[SpendRow]] = {}
        for names, counts in pending.items():
            days.setdefault(names[0], []).append(SpendRow(*names, *counts))
        writes = []
        for day, rows in days.items():
            d = client.run_script(
                RECORD_SCRIPT, (f"fp:spend:{day}",), (RETENTION_DAYS * 86400, *_increments(rows))
            )
            writes.append(d.addErrback(_lost, len(rows)))
        return defer.gatherResults(writes).addCallback(lambda _: None)

    def close(self) -> defer.Deferred[None]:
        """Add what is held before the process stops."""
        return self.flush()

    def _room(self) -> bool:
        """Whether this process may keep one more row (old days go first)."""
        if len(self.local) < MAX_LOCAL_ROWS:
            return True
        self._drop_old(self._day)
        if len(self.local) < MAX_LOCAL_ROWS:
            return True
        if not self._full_warned:
            self._full_warned = True
            log.warn(
                "the spend ledger holds {rows} rows in this process; new ones are "
                "not kept (configure redis for a shared, longer ledger)",
                rows=len(self.local),
            )
        return False

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
            return defer.succeed(
                [SpendRow(*n, *counts) for n, counts in self.local.items() if n[0] in wanted]
            )
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

    def close(self) -> defer.Deferred[None]:
        """Add what each ledger holds (the process stops)."""
        flushing = [ledger.close() for ledger in self.ledgers.values()]
        return defer.gatherResults(flushing, consumeErrors=True).addCallback(lambda _: None)

    def ledger_for(self, redis: RedisConfig | None) -> SpendLedger:
        ident = (redis.url, redis.timeout) if redis is not None else None
        ledger = self.ledgers.get(ident)
        if ledger is None:
            ledger = self.ledgers[ident] = SpendLedger(redis, self.resources)
        return ledger


def ledger_for(redis: RedisConfig | None, resources: Resources) -> SpendLedger:
    """The process's ledger for *redis* (None: this process's rows)."""
    return resources.get(SpendLedgers, SpendLedgers).ledger_for(redis)
