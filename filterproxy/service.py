"""The running gateway: listeners, one connection pool per cluster, and the lifecycle."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.logger import Logger

from filterproxy.config import Config, ConfigError
from filterproxy.downstream.http11 import HTTP11ServerFactory
from filterproxy.filters.manager import ChainShape, FilterManager, chain_shape
from filterproxy.upstream.cluster import Cluster
from filterproxy.upstream.router import Router
from filterproxy.workers import reuse_port_endpoint

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort

    from filterproxy.downstream.stream import IDownstream

__all__ = ["Gateway", "GatewayService"]

log = Logger()


class Gateway:
    """What every request needs: the config's filter chain and the clusters."""

    def __init__(self, config: Config, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.clusters = {
            name: Cluster(cluster, reactor) for name, cluster in config.clusters.items()
        }
        self.shape: ChainShape | None = None

    def new_request(self, downstream: IDownstream) -> FilterManager:
        """A filter manager for one request arriving on *downstream*."""
        filters = [spec.create() for spec in self.config.filters]
        if self.shape is None:
            self.shape = chain_shape(filters)  # the same classes for every request
        return FilterManager(
            downstream,
            filters,
            self._router,
            self.config.buffer_limit_bytes,
            self.shape,
            self.config.access_log,
        )

    def _router(self, manager: FilterManager) -> Router:
        return Router(manager, self)

    def close(self) -> None:
        for cluster in self.clusters.values():
            cluster.close()


class GatewayService(Service):
    """Listens on the config's endpoints (or those given with --listen)."""

    def __init__(
        self,
        config: Config,
        listeners: tuple[str, ...] | None = None,
        reactor: Any = None,
        *,
        reuse_port: bool = False,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.listener_descriptions = listeners or config.listeners
        if not self.listener_descriptions:
            raise ConfigError(
                "listeners",
                "no listeners; add one, e.g. listeners: ['tcp:8080:interface=127.0.0.1'], "
                "or pass --listen",
            )
        self.gateway = Gateway(config, reactor)
        self.factory = HTTP11ServerFactory(self.gateway)
        self.ports: list[IListeningPort] = []
        #: Bind TCP listeners with SO_REUSEPORT (a worker of several).
        self.reuse_port = reuse_port

    def startService(self) -> None:
        super().startService()
        # Everything loaded so far lives as long as the process: keep it out of the
        # garbage collector's passes. And collect less often than CPython's default
        # (every 700 allocations): each request allocates a few hundred objects, and
        # frequent passes over thousands of live streams showed as 30 ms stalls in
        # time-to-first-byte p99 (bench: 36.5 -> 5.9 ms at 200 streams).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        for description in self.listener_descriptions:
            if self.reuse_port:
                endpoint: Any = reuse_port_endpoint(self.reactor, description)
            else:
                endpoint = serverFromString(self.reactor, description)
            endpoint.listen(self.factory).addCallbacks(
                self._listening,
                self._listen_failed,
                errbackArgs=(description,),
                callbackArgs=(description,),
            )

    def _listening(self, port: IListeningPort, description: str) -> None:
        self.ports.append(port)
        log.info(
            "filterproxy listening on {address} ({description})",
            address=port.getHost(),
            description=description,
        )

    def _listen_failed(self, failure: Any, description: str) -> None:
        log.failure("cannot listen on {description}", failure, description=description)
        self.reactor.callLater(0, self.reactor.stop)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Stop accepting, let in-flight requests finish (up to shutdown_grace), close."""
        super().stopService()
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])
        self.factory.drain()
        deadline = self.reactor.seconds() + self.config.shutdown_grace
        if self.factory.active_streams:
            log.info(
                "shutting down: waiting up to {grace:g}s for {n} requests in progress",
                grace=self.config.shutdown_grace,
                n=self.factory.active_streams,
            )
        while self.factory.active_streams and self.reactor.seconds() < deadline:
            yield deferLater(self.reactor, 0.1, lambda: None)
        for connection in list(self.factory.connections):
            connection.abort()
        self.gateway.close()
