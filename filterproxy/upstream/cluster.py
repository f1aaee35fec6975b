"""A cluster at run time: its endpoints, each with a connection pool and a health record."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from filterproxy.config import ClusterConfig, EndpointConfig
from filterproxy.upstream.health import Balancer, EndpointHealth
from filterproxy.upstream.pool import ConnectionPool

__all__ = ["Cluster", "Endpoint"]


@dataclass(eq=False)
class Endpoint:
    index: int
    config: EndpointConfig
    pool: ConnectionPool
    health: EndpointHealth


class Cluster:
    """Endpoints of one cluster and the choice between them."""

    def __init__(self, config: ClusterConfig, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.endpoints = [
            Endpoint(
                i,
                endpoint,
                ConnectionPool(reactor, config, endpoint),
                EndpointHealth(config.outlier_detection),
            )
            for i, endpoint in enumerate(config.endpoints)
        ]
        self.balancer = Balancer(
            [e.weight for e in config.endpoints], [e.health for e in self.endpoints]
        )

    def pick(self, avoid: Collection[int] = ()) -> Endpoint:
        """The endpoint for the next attempt (see `Balancer.pick`)."""
        if len(self.endpoints) == 1:
            return self.endpoints[0]
        return self.endpoints[self.balancer.pick(self.reactor.seconds(), avoid)]

    def available(self) -> bool:
        """Whether at least one endpoint is not ejected."""
        now = self.reactor.seconds()
        return any(e.health.available(now) for e in self.endpoints)

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.pool.close()
