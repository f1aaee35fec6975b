"""What one gateway process holds for all its configs: the reactor and a clock, the
shared Redis clients, the extensions' metric families, and each extension's own
process-wide objects (a stream registry, a store cache).

The service makes one `Resources` when it is made and keeps it across reloads: a
filter's ``configure`` may look things up in it (and so share them with the config
it replaces) but must not change them — what a config changes process-wide is
applied by the filter class's ``activate`` when the chain goes in force, so that a
reload rejected after the chain was built changes nothing. At stop, `Resources.close`
closes everything it holds. Each worker (``--workers``) is a process with its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from filterproxy.clients.redis import RedisClient
from filterproxy.filters.metrics import MetricFamilies

__all__ = ["Resources"]

T = TypeVar("T")


class Resources:
    """The process-wide things the filters share, owned by the gateway service.

    Args:
        reactor: The gateway's reactor; when not given, the global one, looked up at
            its first use (a config check, or the chain that ``twistd`` builds while
            it reads its options, before it installs the reactor, never uses it).
        clock: Where timers come from (the reactor, unless a test passes a
            ``twisted.internet.task.Clock``).
    """

    def __init__(self, reactor: Any = None, clock: IReactorTime | None = None) -> None:
        self._reactor: Any = reactor
        self._clock = clock
        #: One client per Redis URL and timeout: every user of one Redis shares its
        #: connection, and a reload keeps it.
        self._redis: dict[tuple[str, float], RedisClient] = {}
        #: The extensions' objects, by their class (`get`).
        self._objects: dict[type, Any] = {}
        #: The metric families the extensions declare (`MetricFamilies`): the
        #: service's ``/metrics`` includes them; without a service they are kept
        #: and never scraped.
        self.metrics = MetricFamilies()
        #: With ``--workers``, the secret this process's supervisor gave its workers
        #: (they sign what they tell each other with it); None for a single process.
        self.worker_secret: str | None = None
        self.closed = False

    @property
    def reactor(self) -> Any:
        """The reactor that runs the gateway (connections, listeners)."""
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    @property
    def clock(self) -> IReactorTime:
        """The reactor's time, or a test's clock: every timer a filter sets."""
        clock: IReactorTime = self._clock if self._clock is not None else self.reactor
        return clock

    def redis(self, url: str, timeout: float) -> RedisClient:
        """The process's client for the Redis at *url*, made and started at the first
        call (call it when the reactor runs — at a request, not while a config is
        read) and stopped by `close`."""
        client = self._redis.get((url, timeout))
        if client is None:
            client = self._redis[url, timeout] = RedisClient(self.reactor, url, timeout)
            client.start()
        return client

    def get(self, kind: type[T], factory: Callable[[Resources], T]) -> T:
        """The process's one *kind* object, made with *factory* at the first call.

        An object with a ``close()`` method (returning None or a Deferred) is closed
        by `close`.
        """
        found = self._objects.get(kind)
        if found is None:
            found = self._objects[kind] = factory(self)
        made: T = found
        return made

    def close(self) -> defer.Deferred[None]:
        """Close what is held: the extensions' objects (in the reverse order of their
        making), then the Redis connections. Fires when all have closed."""
        self.closed = True
        closing: list[defer.Deferred[Any]] = []
        objects, self._objects = list(self._objects.values()), {}
        for thing in reversed(objects):
            close = getattr(thing, "close", None)
            if close is not None:
                closing.append(defer.maybeDeferred(close))
        clients, self._redis = list(self._redis.values()), {}
        for client in clients:
            client.stop()
        d = defer.gatherResults(closing, consumeErrors=True)
        return d.addCallback(lambda _: None)
