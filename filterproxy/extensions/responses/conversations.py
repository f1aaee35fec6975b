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

An ``item_reference`` in a request's input names an item by id. The output items of a
translated response carry their response's id (`filterproxy.translate.responses_tools.item_id`),
and the items listed by ``GET /v1/responses/{id}/input_items`` are ``item_<id>_<n>``:
`referenced_responses` finds the records to read, `expand_references` puts the items in
place of the references.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson
from twisted.internet import defer

from filterproxy.clients.redis import RedisClient
from filterproxy.config import RedisConfig
from filterproxy.extensions.responses.config import ResponsesConfig
from filterproxy.translate.responses_tools import response_of_item

if TYPE_CHECKING:
    from filterproxy.filters.resources import Resources

__all__ = [
    "ConversationStores",
    "Conversations",
    "MemoryConversations",
    "RedisConversations",
    "conversations_for",
    "expand_references",
    "referenced_responses",
]

#: Fields of an output item that belong to the response that made it, not to a later
#: request's input (an upstream that keeps items would look the ids up).
OUTPUT_ONLY: Final = ("id", "status")
#: The id ``GET …/input_items`` gives an input item that has none of its own (its index:
#: ASCII digits, few enough to be an index — ``\d`` would take 5,000 of any script's).
_INPUT_ITEM: Final = re.compile(r"^item_([0-9a-f]{24})_([0-9]{1,9})$")


def _target(identifier: Any) -> tuple[str, int] | None:
    """(response id, index in its input, or -1 for its output) an item id points into."""
    if not isinstance(identifier, str):
        return None
    response_id = response_of_item(identifier)
    if response_id is not None:
        return response_id, -1
    match = _INPUT_ITEM.match(identifier)
    return ("resp_" + match.group(1), int(match.group(2))) if match else None


def referenced_responses(items: list[Any]) -> list[str]:
    """The ids of the responses whose records the ``item_reference`` items among *items*
    point into, each once, in order."""
    found: dict[str, None] = {}  # in order, each once, in constant time per item
    for item in items:
        if isinstance(item, dict) and item.get("type") == "item_reference":
            target = _target(item.get("id"))
            if target is not None:
                found[target[0]] = None
    return list(found)


def expand_references(
    items: list[Any], records: Mapping[str, dict[str, Any] | None], owner: str
) -> list[Any]:
    """*items* with each ``item_reference`` to an item of one of *records* (by response
    id) that *owner* owns replaced by the item, as input (an output item without its
    id and status). A reference to anything else stays: the translation answers 400
    naming it, an upstream that keeps items may know it."""
    expanded: list[Any] = []
    for item in items:
        target = (
            _target(item.get("id"))
            if isinstance(item, dict) and item.get("type") == "item_reference"
            else None
        )
        record = records.get(target[0]) if target is not None else None
        found = None
        if target is not None and record is not None and record.get("owner") == owner:
            if target[1] >= 0:
                stored = record.get("input") or []
                found = stored[target[1]] if target[1] < len(stored) else None
            else:
                response = record.get("response") or {}
                found = next(
                    (
                        {k: v for k, v in out.items() if k not in OUTPUT_ONLY}
                        for out in response.get("output") or []
                        if isinstance(out, dict) and out.get("id") == item["id"]
                    ),
                    None,
                )
        expanded.append(found if found is not None else item)
    return expanded


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

    def __init__(
        self,
        redis: RedisConfig,
        ttl: float,
        client: RedisClient | None = None,
        resources: Resources | None = None,
    ) -> None:
        self.redis = redis
        self.ttl_ms = max(1, round(ttl * 1000))
        self._client = client
        #: Where the process's shared Redis client comes from (when none is given).
        self.resources = resources

    @property
    def client(self) -> RedisClient:
        """The Redis client, made at the first request (when the gateway's reactor
        runs)."""
        if self._client is None:
            if self.resources is None:
                raise RuntimeError("RedisConversations needs a client or the resources")
            self._client = self.resources.redis(self.redis.url, self.redis.timeout)
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


class ConversationStores:
    """The process's stores (in its `Resources`), one per setting: a reload keeps
    what they hold."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.stores: dict[tuple[Any, ...], Conversations] = {}


def conversations_for(
    config: ResponsesConfig, redis: RedisConfig | None, resources: Resources
) -> Conversations:
    """The process's store for *config* (Redis's when it says ``redis``)."""
    stores = resources.get(ConversationStores, ConversationStores).stores
    if config.store == "redis" and redis is not None:
        ident: tuple[Any, ...] = ("redis", redis.url, redis.timeout, config.ttl)
        if ident not in stores:
            stores[ident] = RedisConversations(redis, config.ttl, resources=resources)
    else:
        ident = ("memory", config.ttl, config.max_bytes)
        if ident not in stores:
            # Entries expire on the process's clock (read when used: a config is read
            # before the reactor runs).
            stores[ident] = MemoryConversations(
                config.ttl, config.max_bytes, clock=lambda: resources.clock.seconds()
            )
    return stores[ident]
