"""Where the Responses API's conversations are kept, for ``previous_response_id``.

A record is one response the gateway answered with everything needed to continue it:
the owner (a digest of the client's credentials or gateway key), the whole input that
led to it and the response object itself (its output included). A record holds its
whole conversation, so continuing it takes one read, on any worker, however old its
first turn.

`MemoryConversations` keeps records in this process, up to a byte cap (the least
recently used go first) and for a time to live. `RedisConversations` keeps them in
Redis (``fp:resp:<id>``, with the time to live as the key's expiry), so that every
worker and replica can continue a conversation. Both answer with Deferreds; the
memory store's have fired already.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Protocol

import orjson
from twisted.internet import defer

from filterproxy.config import RedisConfig, ResponsesConfig
from filterproxy.redis import RedisClient, shared_client

__all__ = [
    "Conversations",
    "MemoryConversations",
    "RedisConversations",
    "conversations_for",
]


class Conversations(Protocol):
    """A store of response records (JSON objects) by response id."""

    def get(self, response_id: str) -> defer.Deferred[dict[str, Any] | None]:
        """The record, or None when there is none (unknown, expired or evicted)."""

    def put(self, response_id: str, record: dict[str, Any]) -> defer.Deferred[None]:
        """Keep *record* for the store's time to live."""

    def delete(self, response_id: str) -> defer.Deferred[bool]:
        """Forget the record; whether there was one."""


class MemoryConversations:
    """Records in this process: at most *max_bytes* of them (as JSON), each for *ttl*
    seconds; reading one makes it the most recently used."""

    def __init__(self, ttl: float, max_bytes: int, clock: Any = time.monotonic) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.clock = clock
        self.records: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.bytes = 0

    def _drop(self, response_id: str) -> bool:
        entry = self.records.pop(response_id, None)
        if entry is None:
            return False
        self.bytes -= len(entry[1])
        return True

    def get(self, response_id: str) -> defer.Deferred[dict[str, Any] | None]:
        entry = self.records.get(response_id)
        if entry is None:
            return defer.succeed(None)
        if entry[0] <= self.clock():
            self._drop(response_id)
            return defer.succeed(None)
        self.records.move_to_end(response_id)
        return defer.succeed(orjson.loads(entry[1]))

    def put(self, response_id: str, record: dict[str, Any]) -> defer.Deferred[None]:
        data = orjson.dumps(record)
        self._drop(response_id)
        if len(data) > self.max_bytes:
            return defer.succeed(None)  # larger than the whole store: not kept
        now = self.clock()
        self.records[response_id] = (now + self.ttl, data)
        self.bytes += len(data)
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self.records)))
        # Expired records at the front (least recently used) go now, not only when read.
        while self.records:
            first = next(iter(self.records))
            if self.records[first][0] > now:
                break
            self._drop(first)
        return defer.succeed(None)

    def delete(self, response_id: str) -> defer.Deferred[bool]:
        return defer.succeed(self._drop(response_id))


class RedisConversations:
    """Records in Redis, each under ``fp:resp:<id>`` with the time to live as expiry."""

    def __init__(self, redis: RedisConfig, ttl: float, client: RedisClient | None = None) -> None:
        self.redis = redis
        self.ttl_ms = max(1, round(ttl * 1000))
        self._client = client

    @property
    def client(self) -> RedisClient:
        if self._client is None:
            self._client = shared_client(self.redis.url, self.redis.timeout)
        return self._client

    def get(self, response_id: str) -> defer.Deferred[dict[str, Any] | None]:
        d = self.client.call("GET", "fp:resp:" + response_id)
        return d.addCallback(lambda data: orjson.loads(data) if data is not None else None)

    def put(self, response_id: str, record: dict[str, Any]) -> defer.Deferred[None]:
        d = self.client.call(
            "SET", "fp:resp:" + response_id, orjson.dumps(record), "PX", self.ttl_ms
        )
        return d.addCallback(lambda _: None)

    def delete(self, response_id: str) -> defer.Deferred[bool]:
        d = self.client.call("DEL", "fp:resp:" + response_id)
        return d.addCallback(lambda n: n == 1)


#: One store per setting for the process: a reload keeps what it holds.
_stores: dict[tuple[Any, ...], Conversations] = {}


def conversations_for(config: ResponsesConfig, redis: RedisConfig | None) -> Conversations:
    """The process's store for *config* (Redis's when it says ``redis``)."""
    if config.store == "redis" and redis is not None:
        ident: tuple[Any, ...] = ("redis", redis.url, redis.timeout, config.ttl)
        if ident not in _stores:
            _stores[ident] = RedisConversations(redis, config.ttl)
    else:
        ident = ("memory", config.ttl, config.max_bytes)
        if ident not in _stores:
            _stores[ident] = MemoryConversations(config.ttl, config.max_bytes)
    return _stores[ident]
