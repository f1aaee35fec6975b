"""Where cached answers are kept: `Entry` (one answer, and its bytes as stored), the
process's `MemoryStore` (least recently used out past ``cache_memory``) and `RedisStore`
(shared by every replica, expiring by Redis's own clock).

An entry's stored form is a JSON line of its facts, then the answer's bytes as the
upstream sent them (an event stream or a JSON body), so that a replica reads it back
with one ``GET`` and one JSON parse.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson
from twisted.internet import defer
from twisted.logger import Logger

if TYPE_CHECKING:
    from filterproxy.clients.redis import RedisClient
    from filterproxy.config import RedisConfig
    from filterproxy.filters.resources import Resources

__all__ = ["Entry", "MemoryStore", "RedisStore", "redis_key"]

log = Logger(namespace="filterproxy.cache")

#: What one entry costs besides its bytes (its object, its key, its marks).
_OVERHEAD: Final = 400
#: The most pacing marks an entry keeps (a long stream's are merged past it).
MAX_MARKS: Final = 4096
_HEX: Final = re.compile(r"[0-9a-f]{1,64}")

#: Removes the keys matching ARGV[1], a SCAN at a time; returns how many.
_INVALIDATE: Final = """
local cursor = "0"
local removed = 0
repeat
  local reply = redis.call("SCAN", cursor, "MATCH", ARGV[1], "COUNT", 1000)
  cursor = reply[1]
  for _, key in ipairs(reply[2]) do
    redis.call("UNLINK", key)
    removed = removed + 1
  end
until cursor == "0"
return removed
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One cached answer."""

    key: str
    #: The upstream's API (chat, messages, responses), or None for another endpoint.
    api: str | None
    #: Stored from an event stream (else a JSON body).
    streamed: bool
    #: The answer reports usage (a chat stream: it has the usage chunk).
    usage: bool
    content_type: str
    body: bytes
    model: str
    route: str
    #: Wall-clock seconds when it was stored, and when it stops being served.
    stored_at: float
    expires_at: float
    #: Where the stream's pieces ended (byte offset) and when they came (milliseconds
    #: after the head): a paced hit is sent at that pace.
    marks: tuple[tuple[int, int], ...] = ()

    @property
    def size(self) -> int:
        """What it holds in memory, roughly."""
        return len(self.body) + len(self.key) + _OVERHEAD + 16 * len(self.marks)

    def encode(self) -> bytes:
        """Its stored form (see the module's description)."""
        facts = {
            "key": self.key,
            "api": self.api,
            "streamed": self.streamed,
            "usage": self.usage,
            "content_type": self.content_type,
            "model": self.model,
            "route": self.route,
            "stored_at": self.stored_at,
            "expires_at": self.expires_at,
            "marks": self.marks,
        }
        return orjson.dumps(facts) + b"\n" + self.body

    @classmethod
    def decode(cls, data: bytes, max_bytes: int) -> Entry | None:
        """The entry stored as *data*, or None when it is not one (or is larger than
        *max_bytes*: it is not read)."""
        if len(data) > max_bytes + 64 * 1024:
            return None
        line, newline, body = data.partition(b"\n")
        if not newline:
            return None
        try:
            facts = orjson.loads(line)
            marks = tuple((int(a), int(b)) for a, b in facts["marks"][:MAX_MARKS])
            return cls(
                key=str(facts["key"]),
                api=facts["api"] if isinstance(facts["api"], str) else None,
                streamed=bool(facts["streamed"]),
                usage=bool(facts["usage"]),
                content_type=str(facts["content_type"]),
                body=body,
                model=str(facts["model"]),
                route=str(facts["route"]),
                stored_at=float(facts["stored_at"]),
                expires_at=float(facts["expires_at"]),
                marks=marks,
            )
        except (ValueError, KeyError, TypeError, IndexError):
            return None


def marks_of(pieces: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """At most `MAX_MARKS` of a stream's (end offset, ms) marks: past it, every other
    one is dropped until they fit (a paced hit then sends pieces twice as large); the
    last one always stays, so the stream still ends when it ended."""
    while len(pieces) > MAX_MARKS:
        pieces = pieces[::-2][::-1]  # every other one, counted from the last (kept)
    return tuple(pieces)


class MemoryStore:
    """The process's entries, least recently used out past the cap (``cache_memory``)."""

    def __init__(self, cap: int = 256 * 1024 * 1024) -> None:
        self.cap = cap
        self.held = 0
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        #: Entries put out to make room, since the process started.
        self.evicted = 0

    @staticmethod
    def from_resources(resources: Resources) -> MemoryStore:
        return MemoryStore()

    def get(self, key: str, now: float) -> Entry | None:
        """The live entry at *key* (now the most recently used), or None."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            self._remove(key)
            return None
        self.entries.move_to_end(key)
        return entry

    def put(self, entry: Entry) -> bool:
        """Keep *entry* (in place of the one at its key); False when it cannot fit."""
        size = entry.size
        if size > self.cap:
            return False
        self._remove(entry.key)
        self.entries[entry.key] = entry
        self.held += size
        self.shrink()
        return True

    def shrink(self) -> None:
        """Put out the least recently used entries until the rest fit the cap."""
        while self.held > self.cap and self.entries:
            _, entry = self.entries.popitem(last=False)
            self.held -= entry.size
            self.evicted += 1

    def _remove(self, key: str) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.held -= entry.size

    def invalidate(self, prefix: str | None = None, model: str | None = None) -> int:
        """Remove the entries whose key starts with *prefix* and whose model is
        *model* (either may be None: any); returns how many."""
        doomed = [
            key
            for key, entry in self.entries.items()
            if (prefix is None or key.startswith(prefix))
            and (model is None or entry.model == model)
        ]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    def stats(self) -> dict[str, Any]:
        return {
            "entries": len(self.entries),
            "bytes": self.held,
            "cap": self.cap,
            "evicted": self.evicted,
        }


def _model_part(model: str) -> str:
    return hashlib.sha256(model.encode()).hexdigest()[:12]


def redis_key(key: str, model: str) -> str:
    """Where *key*'s entry is kept in Redis: under its model's part, so that the
    entries of a model can be found without reading them."""
    return f"fp:cache:{_model_part(model)}:{key}"


def valid_prefix(prefix: str) -> bool:
    """Whether *prefix* can start an entry's key (hex digits)."""
    return _HEX.fullmatch(prefix) is not None


class RedisStore:
    """Entries in Redis (the config's ``redis``), shared by every replica that uses
    it; each expires by itself (``PX``)."""

    def __init__(self, resources: Resources, redis: RedisConfig) -> None:
        self.resources = resources
        self.redis = redis
        self._client: RedisClient | None = None

    @property
    def client(self) -> RedisClient:
        """The process's client for this Redis (made at the first request)."""
        if self._client is None:
            self._client = self.resources.redis(self.redis.url, self.redis.timeout)
        return self._client

    def get(self, key: str, model: str, max_bytes: int) -> defer.Deferred[Entry | None]:
        """The entry at *key*, or None (none, or Redis could not answer: a miss)."""
        d = self.client.call("GET", redis_key(key, model))

        def read(reply: Any) -> Entry | None:
            if not isinstance(reply, bytes):
                return None
            return Entry.decode(reply, max_bytes)

        def unavailable(failure: Any) -> None:
            log.warn("cache lookup in Redis failed: {error}", error=failure.getErrorMessage())
            return None

        return d.addCallbacks(read, unavailable)

    def put(self, entry: Entry, ttl: float) -> None:
        """Store *entry* for *ttl* seconds (nobody waits for it)."""
        d = self.client.call(
            "SET",
            redis_key(entry.key, entry.model),
            entry.encode(),
            "PX",
            max(1, int(ttl * 1000)),
            soon=True,
        )
        d.addErrback(
            lambda f: log.warn("cache store in Redis failed: {error}", error=f.getErrorMessage())
        )

    def invalidate(self, prefix: str | None, model: str | None) -> defer.Deferred[int]:
        """Remove the entries whose key starts with *prefix* and whose model is *model*
        (either None: any); fires with how many."""
        part = _model_part(model) if model is not None else "*"
        pattern = f"fp:cache:{part}:{prefix or ''}*"
        d = self.client.run_script(_INVALIDATE, (), (pattern,))
        return d.addCallback(int)
