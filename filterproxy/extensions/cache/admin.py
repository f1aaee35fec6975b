"""The cache extension's management API on the admin listener: ``/cache``.

- ``GET /cache``: what the memory store holds, and the answers in flight.
- ``DELETE /cache``: remove entries — ``?key=<hex prefix>`` (the key the access log and
  the ``x-filterproxy-cache`` header's request show), ``?model=<name>``, both, or
  neither (all) — from the memory store and, when a route keeps entries there, Redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from filterproxy.extensions.cache.store import valid_prefix
from filterproxy.filters.admin import AdminError, AdminReply, AdminRequest, AdminRoutes, first

if TYPE_CHECKING:
    from filterproxy.extensions.cache.flight import Flights
    from filterproxy.extensions.cache.store import MemoryStore, RedisStore

__all__ = ["register_routes"]


class CacheAdmin:
    def __init__(self, memory: MemoryStore, flights: Flights, redis: RedisStore | None) -> None:
        self.memory = memory
        self.flights = flights
        self.redis = redis

    def show(self, request: AdminRequest) -> AdminReply:
        return AdminReply.json(
            {
                "memory": self.memory.stats(),
                "in_flight": len(self.flights.flights),
                "redis": self.redis is not None,
            }
        )

    def invalidate(self, request: AdminRequest) -> AdminReply | defer.Deferred[AdminReply]:
        prefix = first(request.query, "key")
        model = first(request.query, "model")
        unknown = set(request.query) - {"key", "model"}
        if unknown:
            raise AdminError(
                400, f"unknown parameter {sorted(unknown)[0]!r}: DELETE /cache takes key, model"
            )
        if prefix is not None:
            prefix = prefix.lower()
            if not valid_prefix(prefix):
                raise AdminError(
                    400, f"key={prefix!r}: a key is hex digits (the start of one is enough)"
                )
        if model is not None and not model:
            raise AdminError(400, "model= needs a model name")
        removed = self.memory.invalidate(prefix, model)
        document: dict[str, Any] = {"removed": {"memory": removed}}
        if self.redis is None:
            return AdminReply.json(document)
        d = self.redis.invalidate(prefix, model)

        def done(count: int) -> AdminReply:
            document["removed"]["redis"] = count
            return AdminReply.json(document)

        def failed(failure: Any) -> AdminReply:
            document["error"] = f"Redis: {failure.getErrorMessage()}"
            return AdminReply.json(document, status=503)

        return d.addCallbacks(done, failed)


def register_routes(
    routes: AdminRoutes, memory: MemoryStore, flights: Flights, redis: RedisStore | None
) -> None:
    """Serve ``/cache`` on the admin listener."""
    api = CacheAdmin(memory, flights, redis)
    routes.add("GET", "/cache", api.show, owner="cache")
    routes.add("DELETE", "/cache", api.invalidate, owner="cache")
