"""The running gateway: listeners, one connection pool per cluster, and the lifecycle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from filterproxy.config import Config, ConfigError
from filterproxy.downstream.http11 import HTTP11ServerFactory
from filterproxy.filters.manager import ChainShape, FilterManager, chain_shape
from filterproxy.upstream.cluster import Cluster
from filterproxy.upstream.router import Router

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
            downstream, filters, self._router, self.config.buffer_limit_bytes, self.shape
        )

    def _router(self, manager: FilterManager) -> Router:
        return Router(manager, self)

    def close(self) -> None:
        for cluster in self.clusters.values():
            cluster.close()


class GatewayService(Service):
    """Listens on the config's endpoints (or those given with --listen)."""

    def __init__(
        self, config: Config, listeners: tuple[str, ...] | None = None, reactor: Any = None
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
        self.ports: list[IListeningPort] = []
        self.mock: Any = None

    def startService(self) -> None:
        super().startService()
        if self.config.mock_upstream:
            from filterproxy.mock_upstream import MockUpstream

            def keep(mock: MockUpstream) -> None:
                self.mock = mock

            MockUpstream.listen(self.reactor, self.config.mock_upstream).addCallbacks(
                keep, self._listen_failed, errbackArgs=(self.config.mock_upstream,)
            )
        factory = HTTP11ServerFactory(self.gateway)
        for description in self.listener_descriptions:
            endpoint = serverFromString(self.reactor, description)
            endpoint.listen(factory).addCallbacks(
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
        super().stopService()
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])
        if self.mock is not None:
            yield self.mock.stop()
        self.gateway.close()
